"""Exceptions that carry a message meant for the user (file, line or field, and what to do)."""


class DiehardError(Exception):
    """A failure the user can act on. The dispatcher prints ``str(exc)`` without a traceback."""


class ConfigError(DiehardError):
    """A configuration file or option is invalid. The message names the file and the field."""


class DataError(DiehardError):
    """An input file or dataset is missing or unreadable. The message says how to get it."""
