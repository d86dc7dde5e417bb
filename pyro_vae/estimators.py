"""How an evaluation estimates log p(x): the method, its settings, and one call that runs it.

The methods (``iwae``, ``refined``, ``ais``, ``auto``) are the estimators of
:mod:`pyro_vae.infer`; :class:`EstimatorSpec` holds the settings a user chooses, and
:func:`estimate` runs the chosen one on a model/guide pair and returns the per-datapoint numbers
an evaluation keeps (:class:`Estimate`), whatever the method.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae import arviz_compat
from pyro_vae.distributed import SINGLE, World, sharded
from pyro_vae.errors import ConfigError
from pyro_vae.infer import ais_log_likelihood, importance_log_likelihood
from pyro_vae.infer.blocks import (
    ais_estimator,
    auto_estimator,
    importance_estimator,
    refined_estimator,
)
from pyro_vae.infer.escalate import METHODS as AUTO_STAGES
from pyro_vae.infer.escalate import PSIS_MIN_SAMPLES as AUTO_MIN_SAMPLES
from pyro_vae.infer.escalate import auto_log_likelihood
from pyro_vae.infer.refine import refined_log_likelihood
from pyro_vae.options import check_options, option

METHODS = ("iwae", "refined", "ais", "auto")
# Draws of the guide per datapoint for the ELBO reported beside methods that do not draw from
# the guide themselves (refined, ais).
ELBO_SAMPLES = 100


@dataclass(frozen=True)
class EstimatorSpec:
    """The estimator of an evaluation and its settings, each declared with its meaning and
    range (:func:`~pyro_vae.options.option`; ``pyro-vae evaluate`` makes its flags from them).

    ``method`` is IWAE from the guide; importance sampling from a proposal refined per datapoint
    (:func:`~pyro_vae.infer.refine.refined_log_likelihood`); annealed importance sampling
    (:func:`~pyro_vae.infer.ais.ais_log_likelihood`); or IWAE escalated to refinement and AIS
    where k-hat or the error bar flags a datapoint
    (:func:`~pyro_vae.infer.escalate.auto_log_likelihood`). Errors name the fields as
    ``estimator.NAME``.
    """

    method: str = option(
        "iwae",
        "iwae (importance sampling from the guide), refined (from a proposal refined per "
        "datapoint), ais (annealed importance sampling) or auto (iwae, then refined, then ais "
        "for the datapoints k-hat or the error bar flags)",
    )
    num_samples: int = option(
        1000,
        "K, importance samples per datapoint",
        low=1,
        high=100_000_000,
        metavar="K",
        why="the K log weights of each datapoint are kept in memory, 8 bytes each",
    )
    chunk_size: int | None = option(
        None,
        "iwae: particles per vectorised pass, at most K (default: automatic, sized from free "
        "device memory; the other methods size their own passes and ignore it; refused with "
        "several "
        "processes, whose passes are sized by the blocks)",
        low=1,
        high=100_000_000,
        metavar="C",
        why="a pass never holds more than K particles, and K is at most that",
    )
    ais_steps: int = option(
        500,
        "AIS: intermediate distributions",
        low=1,
        high=1_000_000,
        metavar="T",
        why="each is an HMC transition of every chain: a million already take hours",
    )
    ais_chains: int = option(
        16,
        "AIS: chains per datapoint",
        low=1,
        high=100_000,
        metavar="C",
        why="every chain holds its own latent state, activations and gradients in memory",
    )
    ais_leapfrog: int = option(
        5,
        "AIS: leapfrog steps per HMC transition",
        low=1,
        high=1000,
        metavar="L",
        why="each is a gradient of every chain at every one of the T distributions",
    )
    refine_steps: int = option(
        1000,
        "most optimisation steps per datapoint of refined and auto",
        low=1,
        high=1_000_000,
        why="the refinement stops earlier once converged; more steps than this only cost time",
    )
    widen: float = option(1.1, "factor on the refined proposal's scale", positive=True)
    max_seconds: float | None = option(
        None,
        "soft time budget of auto: no new block of its AIS stage starts once it is spent "
        "(default none)",
    )
    stderr_tolerance: float = option(
        0.05, "error bar in nats above which auto escalates a datapoint", positive=True
    )
    max_samples: int | None = option(
        None,
        "auto: the most fresh draws from a refined proposal whose k-hat is fine but whose "
        "error bar is above the tolerance, before AIS (default 16 times {estimator.num_samples})",
        low=1,
        high=100_000_000,
        why="the log weights of each datapoint's draws are kept in memory, 8 bytes each",
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown estimation method {self.method!r}; choose one of {METHODS}")
        check_options("estimator", self)
        if self.method == "auto" and self.num_samples < AUTO_MIN_SAMPLES:
            raise ConfigError(
                f"must be at least {AUTO_MIN_SAMPLES} for {{estimator.method}} auto, whose "
                f"k-hat needs that many importance samples, got {self.num_samples}",
                option="estimator.num_samples",
            )
        if self.max_samples is not None and self.max_samples < self.num_samples:
            raise ConfigError(
                f"must be at least {{estimator.num_samples}} ({self.num_samples}), "
                f"got {self.max_samples}",
                option="estimator.max_samples",
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(
                f"must be positive, got {self.max_seconds}", option="estimator.max_seconds"
            )

    @property
    def weights_per_datapoint(self) -> int:
        """K: importance samples per datapoint, or AIS chains per datapoint."""
        return self.ais_chains if self.method == "ais" else self.num_samples

    def settings(self) -> dict[str, Any]:
        """The settings this method uses (recorded with the evaluation)."""
        keys = {
            "iwae": ("num_samples",),
            "refined": ("num_samples", "refine_steps", "widen"),
            "ais": ("ais_steps", "ais_chains", "ais_leapfrog"),
            "auto": (
                "num_samples",
                "refine_steps",
                "widen",
                "ais_steps",
                "ais_chains",
                "ais_leapfrog",
                "max_seconds",
                "stderr_tolerance",
                "max_samples",
            ),
        }[self.method]
        return {k: getattr(self, k) for k in keys}

    def replace(self, **changes) -> EstimatorSpec:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Estimate:
    """Per-datapoint numbers of an evaluation, each ``(N,)`` on the host, float64.

    ``khat`` is NaN where it is undefined (AIS, or too few weights); ``method`` indexes
    :data:`~pyro_vae.infer.escalate.METHODS` (the stage behind each number) and ``draws`` the
    importance draws (or AIS chains) behind it, for ``auto`` only;
    ``log_weights`` ``(K, N)`` are the importance weights when the method has them (iwae,
    refined); ``summary`` holds the method's own summary fields.
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    stderr: torch.Tensor
    khat: torch.Tensor
    seconds: float
    log_weights: torch.Tensor | None = None
    method: torch.Tensor | None = None
    draws: torch.Tensor | None = None
    acceptance: torch.Tensor | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def khat_of(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat per datapoint of log weights ``(K, N)`` (via ArviZ), ``(N,)`` float64."""
    values = arviz_compat.psis_khat(log_weights.detach().cpu().double().T.numpy())
    return torch.from_numpy(values)


def estimate(
    spec: EstimatorSpec,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    progress: bool | str | None = False,
    world: World = SINGLE,
    seed: int = 0,
) -> Estimate | None:
    """Run ``spec``'s estimator of log p(x) on every row of ``x``.

    With ``world`` holding several ranks (:mod:`pyro_vae.distributed`), the ranks share the
    rows in blocks seeded by ``seed`` and block (:func:`~pyro_vae.distributed.sharded`), every
    method; rank 0 returns the whole estimate, the others None.
    """
    start = time.perf_counter()
    if world.is_distributed:
        return _sharded_estimate(spec, model, guide, x, seed, world, start)
    common = {"max_plate_nesting": 1, "progress": progress}
    if spec.method == "iwae":
        r = importance_log_likelihood(
            model,
            guide,
            x,
            num_samples=spec.num_samples,
            chunk_size=spec.chunk_size,
            keep_log_weights=True,
            **common,
        )
        seconds = time.perf_counter() - start
        return _from_importance(r, seconds, elbo=r.elbo)
    if spec.method == "refined":
        r = refined_log_likelihood(
            model,
            guide,
            x,
            num_samples=spec.num_samples,
            max_steps=spec.refine_steps,
            widen=spec.widen,
            keep_log_weights=True,
            **common,
        )
        seconds = time.perf_counter() - start
        return _from_importance(r, seconds, elbo=_guide_elbo(model, guide, x))
    if spec.method == "ais":
        r = ais_log_likelihood(model, guide, x, **_ais_settings(spec), **common)
        return _from_ais(r, time.perf_counter() - start, elbo=_guide_elbo(model, guide, x))
    r = auto_log_likelihood(
        model, guide, x, num_samples=spec.num_samples, **_auto_settings(spec), **common
    )
    return _from_auto(r, time.perf_counter() - start, spec)


def _sharded_estimate(spec, model, guide, x, seed, world, start) -> Estimate | None:
    """:func:`estimate` on several ranks: the method in seeded blocks shared among them."""
    if spec.chunk_size is not None:
        raise ConfigError(
            "with several processes the passes are sized by the blocks, not by "
            "{estimator.chunk_size}: leave it out"
        )
    common = {"num_samples": spec.num_samples, "max_plate_nesting": 1}
    if spec.method == "iwae":
        estimator = importance_estimator(model, guide, **common)
    elif spec.method == "refined":
        estimator = refined_estimator(
            model, guide, max_steps=spec.refine_steps, widen=spec.widen, **common
        )
    elif spec.method == "ais":
        estimator = ais_estimator(model, guide, **_ais_settings(spec), max_plate_nesting=1)
    else:
        estimator = auto_estimator(model, guide, **_auto_settings(spec), **common)
    r = sharded(estimator, x, seed=seed, world=world)
    if r is None:
        return None
    seconds = time.perf_counter() - start
    if spec.method == "iwae":
        return _from_importance(r, seconds, elbo=r.elbo)
    if spec.method == "refined":
        return _from_importance(r, seconds, elbo=_guide_elbo(model, guide, x))
    if spec.method == "ais":
        return _from_ais(r, seconds, elbo=_guide_elbo(model, guide, x))
    return _from_auto(r, seconds, spec)


def _auto_settings(spec: EstimatorSpec) -> dict[str, Any]:
    """:func:`~pyro_vae.infer.escalate.auto_log_likelihood`'s settings but K and the plates."""
    return {
        "khat": khat_of,
        "max_samples": spec.max_samples,
        "stderr_tolerance": spec.stderr_tolerance,
        "refine": {"max_steps": spec.refine_steps, "widen": spec.widen},
        "ais": _ais_settings(spec),
        "max_seconds": spec.max_seconds,
    }


def _from_auto(r, seconds: float, spec: EstimatorSpec) -> Estimate:
    counts = r.counts()
    return Estimate(
        log_px=r.log_px.cpu().double(),
        elbo=r.elbo.cpu().double(),
        ess=r.ess.cpu().double(),
        stderr=r.stderr.cpu().double(),
        khat=r.khat.cpu().double(),
        seconds=seconds,
        method=r.method.cpu(),
        draws=r.draws.cpu(),
        summary={
            "num_per_method": counts,
            "frac_unreliable": r.frac_unreliable,
            "num_unreliable": int((~r.reliable).sum()),
            "num_more_draws": int(((r.method == 1) & (r.draws > spec.num_samples)).sum()),
            "seconds_per_method": {k: round(v, 3) for k, v in r.seconds.items()},
            "stages": list(AUTO_STAGES),
        },
    )


def _from_ais(r, seconds: float, *, elbo: torch.Tensor) -> Estimate:
    log_px = r.log_px.cpu().double()
    return Estimate(
        log_px=log_px,
        elbo=elbo,
        ess=r.ess.cpu().double(),
        stderr=r.stderr.cpu().double(),
        khat=torch.full_like(log_px, math.nan),
        seconds=seconds,
        acceptance=r.acceptance.cpu().double(),
        summary={"acceptance_mean": float(r.acceptance.mean())},
    )


def _ais_settings(spec: EstimatorSpec) -> dict[str, Any]:
    return {
        "num_steps": spec.ais_steps,
        "num_chains": spec.ais_chains,
        "num_leapfrog": spec.ais_leapfrog,
    }


def _from_importance(r, seconds: float, *, elbo: torch.Tensor) -> Estimate:
    log_weights = r.log_weights.cpu()  # (K, N): copied to the host once
    return Estimate(
        log_px=r.log_px.cpu().double(),
        elbo=elbo.cpu().double(),
        ess=r.ess.cpu().double(),
        stderr=r.stderr.cpu().double(),
        khat=khat_of(log_weights),
        seconds=seconds,
        log_weights=log_weights,
    )


def _guide_elbo(model, guide, x) -> torch.Tensor:
    """The guide's ELBO per datapoint from :data:`ELBO_SAMPLES` draws, for the methods that do
    not draw from the guide: the number reported beside log p(x)."""
    r = importance_log_likelihood(model, guide, x, num_samples=ELBO_SAMPLES, max_plate_nesting=1)
    return r.elbo.cpu().double()
