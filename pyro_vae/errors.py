"""Exceptions that carry a message meant for a person, and the facts behind it.

The library's messages state what is wrong and the fix in words; they never name a command-line
flag. The command line prints these as one line (adding its own flag hints from the fields) and
exits non-zero; anything else is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class PyroVAEError(Exception):
    """Base class for errors caused by input, data or files rather than by a bug.

    A message may name options as ``{section.name}`` (``{data.binarize}``) and a job's
    arguments as ``{args.name}`` (``{args.out}``): ``str()`` writes config paths and keywords
    (:func:`library_name`), :meth:`render` whatever names the caller gives them (the command
    line gives flags).
    """

    option: str | None = None

    def __init__(self, message: str = "", *args):
        self.template = message
        super().__init__(self.render(library_name), *args)

    def render(self, name: Callable[[str], str]) -> str:
        """The message with every option path replaced by ``name(path)`` (and, when the error
        is about one option, that option's name in front)."""
        reason = name_options(self.template, name)
        return f"{name(self.option)} {reason}" if self.option else reason


class DataError(PyroVAEError, ValueError):
    """Data that cannot be used: missing files, wrong shapes, NaNs, a support mismatch."""


class UnsupportedDataError(DataError):
    """Data outside the support of the distribution that scores them (e.g. grey pixels under a
    Bernoulli likelihood).

    Attributes
    ----------
    what : str
        Which data, e.g. "the train split of digits".
    distribution : str
        The likelihood or distribution, e.g. "Bernoulli".
    support : str
        One of ``"binary"``, ``"unit_interval"``, ``"open_unit_interval"``, ``"levels"``,
        ``"positive"``, ``"real"``, or the constraint's own name for others.
    low, high : float
        The data's range.
    num_invalid : int
        Values outside the support.
    """

    def __init__(
        self,
        message: str,
        *,
        what: str,
        distribution: str,
        support: str,
        low: float,
        high: float,
        num_invalid: int,
    ):
        super().__init__(message)
        self.what = what
        self.distribution = distribution
        self.support = support
        self.low = low
        self.high = high
        self.num_invalid = num_invalid


# Each support name of UnsupportedDataError: what it accepts and the fix for data outside it, in
# words (the command line adds flags).
SUPPORT_ADVICE = {
    "binary": (
        "binary data (0/1)",
        "binarise the data (draw each value as the probability of a 1) or choose a likelihood "
        "for values in [0, 1] such as the continuous Bernoulli",
    ),
    "unit_interval": (
        "values in [0, 1]",
        "rescale the data to [0, 1] or choose a likelihood for real values such as a Gaussian",
    ),
    "open_unit_interval": (
        "values strictly inside (0, 1)",
        "for pixel data dequantise them uniformly, which maps level k of L to (k + u) / L with "
        "u ~ U(0, 1), strictly inside (0, 1)",
    ),
    "levels": (
        "quantised values",
        "score the stored levels themselves, neither binarised nor dequantised",
    ),
    "positive": (
        "positive values",
        "transform the data to positive values or choose a likelihood whose support covers them",
    ),
    "real": ("real values (not NaN)", "remove or impute the NaN values"),
}


class ConfigError(PyroVAEError, ValueError):
    """An option or configuration value that is not valid.

    Options are named by their config path (``model.latent_dim``), never by a command-line flag:
    :attr:`option` is the option at fault (then the message says what is wrong with it,
    ``"must be ..."``), and the message may name other options as ``{section.name}``.
    """

    def __init__(self, message: str, *, option: str | None = None):
        self.option = option
        super().__init__(message)


_OPTION_PATH = re.compile(r"\{([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)\}")


def library_name(path: str) -> str:
    """How the library names an option: a config field by its path (``model.prior``), a job's
    argument, written ``{args.NAME}``, by its keyword (``the out argument``)."""
    if path.startswith("args."):
        return f"the {path.removeprefix('args.')} argument"
    return path


def name_options(text: str, name: Callable[[str], str]) -> str:
    """``text`` with each ``{section.option}`` replaced by ``name("section.option")``."""
    return _OPTION_PATH.sub(lambda m: name(m.group(1)), text)


class CheckpointError(PyroVAEError):
    """A run directory or checkpoint that is missing, corrupt or does not match its config."""


class RunInUseError(CheckpointError):
    """A run directory another process holds (a ``train`` running in it).

    Attributes
    ----------
    path : str
        The run directory.
    """

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


class NonFiniteError(PyroVAEError, FloatingPointError):
    """A computed quantity became NaN or infinite.

    Attributes
    ----------
    cause : str
        ``"data"`` when the inputs are to blame (non-finite values, or values so large that the
        networks overflow), ``"model"`` otherwise (the parameters or the optimisation).
    data_abs_max : float or None
        The largest absolute value of the data involved, where known.
    """

    def __init__(self, message: str, *, cause: str = "model", data_abs_max: float | None = None):
        super().__init__(message)
        self.cause = cause
        self.data_abs_max = data_abs_max


class TrainingDiverged(NonFiniteError):
    """The loss became NaN or infinite during training."""


class NonFiniteEstimate(NonFiniteError):
    """An estimate of log p(x) (or its ELBO or ESS) is NaN for some datapoints.

    Attributes
    ----------
    datapoints : list of int
        Indices (rows of x) of the datapoints whose estimate is not finite.
    site : str or None
        The first sample site found whose log-density is not finite, with its program
        (``"guide site 'z'"``), where one was found.
    """

    def __init__(
        self,
        message: str,
        *,
        datapoints: list[int],
        site: str | None = None,
        cause: str = "model",
        data_abs_max: float | None = None,
    ):
        super().__init__(message, cause=cause, data_abs_max=data_abs_max)
        self.datapoints = datapoints
        self.site = site
