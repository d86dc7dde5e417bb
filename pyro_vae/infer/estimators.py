"""The table of estimators of log p(x), and the one call that runs any of them.

:data:`ESTIMATORS` maps a method's name to its :class:`~pyro_vae.infer.estimator.Estimator`;
the command line's ``--method`` and its flags, the evaluation records, ``compare`` and the
experiments read it, so that adding an estimator is one module and one line here
(docs/adding-a-piece.md). :func:`estimate` runs one on any Pyro model/guide pair with a data
plate, in seeded blocks (:mod:`pyro_vae.infer.driver`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.ais import AIS
from pyro_vae.infer.driver import joined, run_blocks
from pyro_vae.infer.escalate import Auto
from pyro_vae.infer.estimator import Estimator, LogZBlock, Settings
from pyro_vae.infer.importance import IWAE
from pyro_vae.infer.prior import Prior
from pyro_vae.infer.refine import Refined
from pyro_vae.infer.smc import SMC
from pyro_vae.options import declared

ESTIMATORS: dict[str, Estimator] = {
    e.name: e for e in (IWAE(), Refined(), AIS(), SMC(), Auto(), Prior())
}


def get(method: str) -> Estimator:
    """The estimator named ``method``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return ESTIMATORS[method]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown estimation method {method!r}; choose one of {', '.join(ESTIMATORS)}"
        ) from None


def settings_for(method: str, **given) -> Settings:
    """``method``'s settings from ``given`` (None: its default). A setting the method does not
    take is refused when given (not None), naming the methods that take it."""
    estimator = get(method)
    names = _ordered(estimator.Settings)
    ignored = [k for k, v in given.items() if v is not None and k not in names]
    if ignored:
        takes = ", ".join(f"{{estimator.{n}}}" for n in names)
        raise ConfigError(
            "; ".join(_not_taken(name, method) for name in ignored) + f"; {method} takes {takes}"
        )
    return estimator.Settings(**{k: v for k, v in given.items() if k in names and v is not None})


def _ordered(kind) -> list[str]:
    return [f.name for f, _ in declared(kind)]


def _not_taken(name: str, method: str) -> str:
    takers = [m for m, e in ESTIMATORS.items() if name in _ordered(e.Settings)]
    whose = f"the methods taking it: {', '.join(takers)}" if takers else "no method takes it"
    return f"{{estimator.{name}}} is not a setting of {{estimator.method}} {method} ({whose})"


def setting_fields() -> list[dataclasses.Field]:
    """Every setting of every estimator, once each (the first declaration of a name), in table
    order: the flags of ``pyro-vae evaluate``."""
    seen: dict[str, dataclasses.Field] = {}
    for estimator in ESTIMATORS.values():
        for f, _ in declared(estimator.Settings):
            seen.setdefault(f.name, f)
    return list(seen.values())


def estimate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    method: str = "auto",
    *,
    seed: int | None = None,
    max_plate_nesting: int | None = None,
    progress: bool | str | None = False,
    **settings,
) -> LogZBlock:
    """Per-datapoint log p(x) of every row of ``x`` by ``method`` (a name in
    :data:`ESTIMATORS`) with its ``settings`` (the fields of its ``Settings``).

    ``model(x)`` and ``guide(x)`` are Pyro programs whose every sample site lies in one plate
    over the rows of ``x``. The rows are estimated in blocks of the estimator's fixed
    ``block_rows``, block b drawing from a stream seeded by ``(seed, b)``: the same seed gives
    the same numbers, however the work is split. ``seed`` None draws one from torch's stream
    (so ``pyro.set_rng_seed`` makes the call repeatable). Returns a
    :class:`~pyro_vae.infer.estimator.LogZBlock` on the host.
    """
    estimator = get(method)
    chosen = settings_for(method, **settings)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError("x holds no datapoints")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    elif not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer below 2**63, got {seed}")
    blocks = run_blocks(
        estimator,
        chosen,
        model,
        guide,
        x,
        seed=seed,
        max_plate_nesting=max_plate_nesting,
        progress=progress,
    )
    return joined(blocks)
