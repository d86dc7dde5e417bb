"""Options declared once: a config field carries its help, its range and its command-line form.

A field declared with :func:`option` holds everything about it in one place::

    @dataclass(frozen=True)
    class ModelConfig:
        latent_dim: int = option(16, "dimension of z", low=1, high=4096)

:func:`check_options` checks every declared field of a config section (types of numbers, ranges,
choices), and the command line builds its flags, their help and defaults from the same
declarations (:func:`flag_of`, :func:`declared`), so adding an option is one field. Errors name
the option by its config path (``model.latent_dim``) in :attr:`ConfigError.option`; the command
line turns that into the flag.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro_vae.errors import ConfigError

FLOAT32_MAX = 3.4028234663852886e38  # parameters and the optimiser are float32


@dataclass(frozen=True)
class Option:
    """What is declared about one config field besides its name, type and default.

    Attributes
    ----------
    help : str
        One line for ``--help`` and the docs (the default is appended by the command line). It
        may name other options as ``{section.name}``, as :class:`ConfigError` messages do.
    low, high : number, optional
        The closed range of an integer, or a float's bounds.
    positive : bool
        A float that must be > 0 (and finite, within float32's range).
    choices : tuple of str, optional
        The values a string may take.
    names : str, optional
        The registry table (``"PRIORS"``, ...) whose names a string may take: checked by the
        registry, listed in ``--help`` by the command line.
    negate : str, optional
        For a bool that is on by default: the flag that turns it off (``--no-download``).
    metavar : str, optional
        The placeholder in ``--help`` (``D`` in ``--latent-dim D``).
    parse : callable, optional
        Text -> value for the command line, when the field's type cannot parse it.
    cli : bool
        False for fields the command line does not set.
    why : str, optional
        Why the range is what it is (e.g. the memory a larger value needs), added to the error
        for a value outside it.
    recorded : bool
        False for a setting that only splits the work (e.g. particles per pass), left out of
        what an evaluation records as its method's settings.
    """

    help: str
    low: float | None = None
    high: float | None = None
    positive: bool = False
    choices: tuple[str, ...] | None = None
    names: str | None = None
    negate: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    cli: bool = True
    why: str | None = None
    recorded: bool = True


def option(default, help: str, **declared) -> Any:
    """A dataclass field with ``default`` and its :class:`Option` (``help`` and ``declared``)."""
    if isinstance(default, bool) and not (default and declared.get("negate")):
        raise TypeError("a bool option is on by default and declares its negate flag")
    return dataclasses.field(default=default, metadata={"option": Option(help, **declared)})


def declared(section) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of a config section (class or instance) with their declarations, in order."""
    return [
        (f, f.metadata["option"]) for f in dataclasses.fields(section) if "option" in f.metadata
    ]


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``latent_dim`` -> ``--latent-dim``."""
    return "--" + name.replace("_", "-")


def check_options(section_name: str, section) -> None:
    """Raise :class:`ConfigError` (its ``option`` the field's config path) for the first declared
    field of ``section`` whose value is outside its declaration."""
    for f, opt in declared(section):
        value = getattr(section, f.name)
        problem = _problem(f.type, value, opt)
        if problem:
            why = f" ({opt.why})" if opt.why and _out_of_range(f.type, value, opt) else ""
            raise ConfigError(problem + why, option=f"{section_name}.{f.name}")


def _out_of_range(kind: str, value, opt: Option) -> bool:
    """Whether a number (of the right type) lies above its declared ``high``."""
    return (
        kind.removesuffix(" | None") in ("int", "float")
        and isinstance(value, numbers.Real)
        and opt.high is not None
        and value > opt.high
    )


def _problem(kind: str, value, opt: Option) -> str | None:
    if value is None and kind.endswith("| None"):
        return None
    kind = kind.removesuffix(" | None")
    if kind == "int":
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            return f"must be an integer, got {value!r}"
        low = -math.inf if opt.low is None else opt.low
        high = math.inf if opt.high is None else opt.high
        if not (low <= value <= high):
            if opt.high is None:
                return f"must be at least {opt.low}, got {value}"
            if opt.low is None:
                return f"must be an integer of at most {opt.high}, got {value}"
            return f"must be an integer from {opt.low} to {opt.high}, got {value}"
    elif kind == "float":
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return f"must be a number, got {value!r}"
        if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            return f"must be a finite number within float32's range, got {value}"
        if opt.positive and not value > 0:
            return f"must be a positive number, got {value}"
    elif opt.choices is not None and value not in opt.choices:
        return f"must be one of {opt.choices}"
    return None


def parse_widths(text: str) -> tuple[int, ...]:
    """``"512,512"`` -> ``(512, 512)``."""
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(f"expected widths like 512,512, got '{text}'") from None
