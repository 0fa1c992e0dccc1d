"""The exception types for what a user can act on, so the CLI can print them without a traceback."""


class ConfigError(ValueError):
    """A bad configuration value, path or file: the message names it and what would be valid."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term, step and likely causes."""


class OutputError(RuntimeError):
    """A file could not be written (disk full, read-only folder, no permission): the message
    names the file, the cause and what was kept."""
