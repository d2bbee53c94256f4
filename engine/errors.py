"""Errors caused by user input. The CLI prints these as one line instead of a traceback."""


class VmfcoopError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(VmfcoopError, ValueError):
    """A config file, option or combination of options is invalid."""


class LossDivergedError(VmfcoopError, FloatingPointError):
    """Training produced a NaN or infinite loss."""
