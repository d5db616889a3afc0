"""demo: ``diehard demo``, a complete simulated beam campaign that composes every part.

It sits above the parts (hardening, harness, watchdog, analysis) and drives each through its real command;
no part and nothing in the shared core imports it.
"""
