"""diehardlab: the shared core of the four components.

Holds what every machine role needs and nothing heavier than the standard library and pydantic:
the ``diehard`` command dispatcher and the pure formats (libLogHelper log grammar, datagram codec).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diehardlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
