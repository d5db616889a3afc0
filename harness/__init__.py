"""harness: what runs on the device under test.

Golden outputs, the inference loop that compares against them, the libLogHelper-compatible log and its
UDP stream, and the beam simulator. Importing this package imports nothing heavy.
"""
