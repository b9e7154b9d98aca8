"""Errors that the CLI turns into one-line messages instead of tracebacks."""


class MimError(Exception):
    """A user-facing problem: a missing path, a bad param, a corrupt file."""


class DataError(MimError):
    """A dataset path is missing, has the wrong layout, or holds an unreadable file."""


class ConfigError(MimError, ValueError):
    """A params file is missing, unreadable, or does not match its dataclass."""
