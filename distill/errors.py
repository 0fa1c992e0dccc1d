"""The one exception type for user mistakes, so the CLI can print it without a traceback."""


class ConfigError(ValueError):
    """A bad configuration value, path or file: the message names it and what would be valid."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term, step and likely causes."""
