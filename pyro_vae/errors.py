"""Exceptions that carry a message meant for a person.

The command line prints these as one line and exits non-zero; anything else is a bug.
"""


class PyroVAEError(Exception):
    """Base class for errors caused by input, data or files rather than by a bug."""


class DataError(PyroVAEError, ValueError):
    """Data that cannot be used: missing files, wrong shapes, NaNs, a support mismatch."""


class ConfigError(PyroVAEError, ValueError):
    """An option or configuration value that is not valid."""


class CheckpointError(PyroVAEError):
    """A run directory or checkpoint that is missing, corrupt or does not match its config."""


class TrainingDiverged(PyroVAEError, FloatingPointError):
    """The loss became NaN or infinite during training."""
