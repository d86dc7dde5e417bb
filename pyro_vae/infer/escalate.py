"""An estimate of log p(x) that spends compute only where the diagnostics say it must.

Importance sampling from the amortised guide is cheap and, for most datapoints of a simple model,
good enough; where it is not, its own diagnostics say so: a Pareto k-hat above 0.7 (Vehtari et
al. 2024: the weights' tail is too heavy for the estimate to converge at a usable rate) or a Monte
Carlo error bar above a tolerance. :func:`auto_log_likelihood` escalates datapoint by datapoint:

1. IWAE from the guide, K draws, for every datapoint;
2. for the datapoints it flags, importance sampling from a proposal refined for each of them
   (:func:`~pyro_vae.infer.refine.refine_proposals`), K fresh draws; where the refined
   proposal's k-hat is fine but its error bar is above the tolerance, up to two more rounds of
   fresh draws from the same proposal, each as many as the error bar says it takes (it shrinks
   as 1/sqrt(K); times 1.2, rounded up to K times a power of two), at most ``max_samples``:
   far cheaper than AIS for the same error bar;
3. for those still flagged, AIS (:func:`~pyro_vae.infer.ais.ais_log_likelihood`), until every
   datapoint is done or the time budget is spent.

Each datapoint reports the estimate of the last stage it reached, with that stage's error bar,
and which stage it was. Every stage's estimate is a stochastic lower bound of log p(x), and a
later stage draws afresh, independently of the draws that flagged the datapoint, so an escalated
datapoint's estimate is a lower bound in expectation given that it was flagged. A datapoint
that a check does NOT flag keeps the estimate from the draws that cleared it (stage 1's, or a
refined round's: the Fashion-MNIST runs in the docs measured this effect at 0.005-0.020 nats
below fresh refined draws on those datapoints). Passing the checks
selects draws without a dominant weight, which tends to mean a lower L_K, so the selection
effect should lean conservative; that is a heuristic, not a proven bound (re-estimating those
datapoints with fresh draws would make it exact, at twice the cost).
AIS has too few chains for k-hat; an AIS datapoint counts as reliable when its error bar over
its chains is within the tolerance, a rough check with 16 chains (chains that all miss the same
mode agree with each other).

References
----------
Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance sampling", JMLR.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pyro_vae.infer.ais import ais_log_likelihood
from pyro_vae.infer.importance import importance_log_likelihood
from pyro_vae.infer.refine import RefineSettings, refine_proposals

METHODS = ("iwae", "refined", "ais")
KHAT_THRESHOLD = 0.7
PSIS_MIN_SAMPLES = 21  # the fewest importance weights whose Pareto tail can be fitted
MAX_SAMPLES_FACTOR = 16  # auto_log_likelihood(max_samples=None): at most 16 K draws per datapoint
MORE_DRAWS_ROUNDS = 2  # rounds of more draws for refined datapoints whose error bar is too wide
MORE_DRAWS_MARGIN = 1.2  # draws asked for: this times what the error bar says it takes
MORE_DRAWS_WEIGHTS = 2**24  # log weights kept at once in those rounds (128 MB of float64)


@dataclass(frozen=True)
class AutoResult:
    """Per-datapoint results of :func:`auto_log_likelihood`, each of shape ``(N,)``.

    Attributes
    ----------
    log_px, stderr : Tensor
        The estimate of the last stage each datapoint reached, and its Monte Carlo error bar.
    elbo : Tensor
        The guide's ELBO (mean log weight of stage 1's draws), for every datapoint.
    ess : Tensor
        Effective sample size of the final stage's weights (of its ``draws``: K or more
        importance draws, or the AIS chains).
    khat : Tensor
        Pareto k-hat of the final stage's importance weights; NaN for AIS datapoints.
    method : LongTensor
        Index into :data:`METHODS` of the stage that produced each estimate.
    draws : LongTensor
        Importance draws behind each estimate (K, or more for a refined datapoint whose error
        bar needed them), or AIS chains.
    reliable : BoolTensor
        Whether the final estimate passed its diagnostic (k-hat and error bar, or the error bar
        for AIS).
    seconds : dict of str to float
        Wall time spent in each stage.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    method: torch.Tensor
    draws: torch.Tensor
    reliable: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def concat(parts: list[AutoResult]) -> AutoResult:
        """Join results on consecutive blocks of datapoints (their stage times added up)."""
        if len(parts) == 1:
            return parts[0]
        joined = {
            name: torch.cat([getattr(p, name) for p in parts])
            for name in ("log_px", "stderr", "elbo", "ess", "khat", "method", "draws", "reliable")
        }
        seconds: dict[str, float] = {}
        for p in parts:
            for stage, t in p.seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + t
        return AutoResult(**joined, seconds=seconds)

    def counts(self) -> dict[str, int]:
        """Datapoints whose estimate each stage produced."""
        return {m: int((self.method == i).sum()) for i, m in enumerate(METHODS)}

    @property
    def frac_unreliable(self) -> float:
        """The share of datapoints whose final estimate failed its diagnostic."""
        return float((~self.reliable).double().mean())


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat per datapoint of log weights ``(K, N)``: ``(N,)`` float64, on the device of
    ``log_weights``; NaN for fewer than :data:`PSIS_MIN_SAMPLES` weights
    (:func:`pyro_vae.arviz_compat.psis_khat`, which takes the transpose, through ArviZ)."""
    from pyro_vae import arviz_compat  # ArviZ only for the callers who ask for k-hat

    values = arviz_compat.psis_khat(log_weights.detach().cpu().double().T.numpy())
    return torch.from_numpy(values).to(log_weights.device)


def _flagged(khat, stderr, threshold, tolerance):
    bad = ~torch.isfinite(stderr) | (stderr > tolerance)
    if khat is not None:
        bad |= ~(khat <= threshold)  # NaN k-hat (too few finite weights) counts as flagged
    return bad


def auto_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    khat: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_samples: int = 1000,
    max_samples: int | None = None,
    khat_threshold: float = KHAT_THRESHOLD,
    stderr_tolerance: float = 0.05,
    refine: dict | None = None,
    ais: dict | None = None,
    max_seconds: float | None = None,
    max_plate_nesting: int | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    progress: bool | str | None = False,
) -> AutoResult:
    """log p(x) per datapoint, escalating from IWAE to refined IWAE to AIS where diagnostics ask.

    Parameters
    ----------
    model, guide : callable
        Pyro programs as for :func:`~pyro_vae.infer.importance_log_likelihood`.
    x : Tensor
        The data.
    khat : callable, optional
        Pareto k-hat per datapoint from log weights ``(K, N)``, returning ``(N,)``. By default
        the library's PSIS k-hat (:func:`psis_khat`, through ArviZ, imported only then: the
        rest of ``infer/`` does not depend on ArviZ).
    num_samples : int
        K, importance samples per datapoint of stage 1 and of stage 2's first round.
    max_samples : int, optional
        The most fresh draws from a refined proposal for a datapoint whose k-hat is fine but
        whose error bar is above ``stderr_tolerance`` (default ``16 * num_samples``; set it to
        ``num_samples`` to send such datapoints straight to AIS).
    khat_threshold : float
        k-hat above this flags a datapoint (0.7, Vehtari et al. 2024).
    stderr_tolerance : float
        An error bar above this (in nats) flags a datapoint.
    refine, ais : dict, optional
        Settings passed to :func:`~pyro_vae.infer.refine.refine_proposals` and
        :func:`~pyro_vae.infer.ais.ais_log_likelihood`.
    max_seconds : float, optional
        A soft wall-time budget: checked before each block of (at most 64) datapoints of the AIS
        stage, so a block begun in time runs to its end, and stages 1 and 2 always run. The
        datapoints AIS does not reach keep their stage-2 estimate, flagged unreliable.
    max_plate_nesting : int, optional
        Found from one trace when not given.
    chunk_size, batch_size : int, optional
        Particles and datapoints per vectorised pass of stage 1
        (:func:`~pyro_vae.infer.importance_log_likelihood`'s; sized from free memory when
        not given).
    progress : bool, str or None
        Progress of each stage (see :mod:`pyro_vae.progress`).
    """
    if not 0.0 < khat_threshold:
        raise ValueError(f"khat_threshold must be positive, got {khat_threshold}")
    if not stderr_tolerance > 0.0:
        raise ValueError(f"stderr_tolerance must be positive, got {stderr_tolerance}")
    if num_samples < PSIS_MIN_SAMPLES:
        raise ValueError(
            f"num_samples must be at least {PSIS_MIN_SAMPLES} for k-hat to tell which datapoints "
            f"to escalate, got {num_samples}"
        )
    max_samples = MAX_SAMPLES_FACTOR * num_samples if max_samples is None else max_samples
    if max_samples < num_samples:
        raise ValueError(
            f"max_samples must be at least num_samples ({num_samples}), got {max_samples}"
        )
    khat = psis_khat if khat is None else khat
    refine, ais = dict(refine or {}), dict(ais or {})
    RefineSettings(**refine)  # checked before stage 1, not after it
    start = time.perf_counter()
    seconds = {}
    common = {"max_plate_nesting": max_plate_nesting, "progress": progress}

    first = importance_log_likelihood(
        model,
        guide,
        x,
        num_samples=num_samples,
        keep_log_weights=True,
        chunk_size=chunk_size,
        batch_size=batch_size,
        **common,
    )
    k1 = khat(first.log_weights).to(first.log_px)
    log_px, stderr, ess = first.log_px.clone(), first.stderr.clone(), first.ess.clone()
    khats = k1.clone()
    method = torch.zeros(x.shape[0], dtype=torch.long, device=log_px.device)
    flagged = _flagged(k1, first.stderr, khat_threshold, stderr_tolerance)
    seconds["iwae"] = time.perf_counter() - start

    draws = torch.full_like(method, num_samples)
    rows = flagged.nonzero().flatten()
    if rows.numel():
        t = time.perf_counter()
        refined = refine_proposals(model, guide, x[rows.to(x.device)], **common, **refine)
        local = torch.arange(rows.numel())
        pending = local
        k_now = torch.full((rows.numel(),), num_samples, dtype=torch.long)
        method[rows] = 1
        for _ in range(1 + MORE_DRAWS_ROUNDS):
            for k, sel in _by_draws(k_now, pending):
                r = refined.log_likelihood(k, rows=sel, keep_log_weights=True)
                at = rows[sel.to(rows.device)]
                log_px[at], stderr[at], ess[at] = (
                    r.log_px.to(log_px),
                    r.stderr.to(log_px),
                    r.ess.to(log_px),
                )
                khats[at] = khat(r.log_weights).to(log_px)
                draws[at] = k
            flagged[rows] = _flagged(khats[rows], stderr[rows], khat_threshold, stderr_tolerance)
            # more draws only where k-hat is fine and the error bar alone is too wide
            wide = (
                (khats[rows] <= khat_threshold) & torch.isfinite(stderr[rows]) & flagged[rows]
            ).cpu() & (k_now < max_samples)
            if not bool(wide.any()):
                break
            ratio = (stderr[rows].cpu() / stderr_tolerance) ** 2 * MORE_DRAWS_MARGIN
            k_now = torch.where(wide, _more_draws(k_now, ratio, num_samples, max_samples), k_now)
            pending = local[wide]
        rows = rows[flagged[rows]]
        seconds["refined"] = time.perf_counter() - t

    if rows.numel():
        t = time.perf_counter()
        block = ais.pop("batch_size", None) or max(1, min(rows.numel(), 64))
        for first_row in range(0, rows.numel(), block):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
            part = rows[first_row : first_row + block]
            third = ais_log_likelihood(model, guide, x[part.to(x.device)], **common, **ais)
            log_px[part] = third.log_px.to(log_px)
            stderr[part] = third.stderr.to(log_px)
            ess[part] = third.ess.to(log_px)
            khats[part] = math.nan
            method[part] = 2
            draws[part] = third.num_chains
            flagged[part] = _flagged(
                None, third.stderr.to(log_px), khat_threshold, stderr_tolerance
            )
        seconds["ais"] = time.perf_counter() - t

    return AutoResult(
        log_px=log_px,
        stderr=stderr,
        elbo=first.elbo,
        ess=ess,
        khat=khats,
        method=method,
        draws=draws,
        reliable=~flagged,
        seconds=seconds,
    )


def _more_draws(k_now, ratio, num_samples: int, max_samples: int) -> torch.Tensor:
    """Draws for the next round: ``k_now * ratio`` rounded up to ``num_samples`` times a power
    of two (few distinct sizes, each one vectorised call), at most ``max_samples``."""
    wanted = k_now.double() * ratio.clamp(min=1.0)
    doublings = torch.log2(wanted / num_samples).clamp(min=0).ceil()
    k = (num_samples * torch.pow(2.0, doublings)).clamp(max=max_samples).long()
    return torch.maximum(k_now, k)


def _by_draws(k_now: torch.Tensor, pending: torch.Tensor):
    """``(k, rows)`` for each distinct number of draws among the ``pending`` rows, in parts of
    at most :data:`MORE_DRAWS_WEIGHTS` log weights (``k * len(rows)``, kept for k-hat)."""
    for k in torch.unique(k_now[pending]).tolist():
        rows = pending[k_now[pending] == k]
        step = max(1, MORE_DRAWS_WEIGHTS // int(k))
        for first in range(0, rows.numel(), step):
            yield int(k), rows[first : first + step]
