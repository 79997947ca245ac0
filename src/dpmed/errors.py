"""The errors dpmed raises on bad input; the CLI prints them as one line and exits 2."""


class DpmedError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(DpmedError, ValueError):
    """A setting is missing, of the wrong type or out of range."""


class DataError(DpmedError):
    """The data is missing, laid out wrongly or unreadable."""
