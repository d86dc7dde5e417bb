"""Per-datapoint importance-sampled estimates of log p(x) (the IWAE bound) for Pyro programs.

For a model p(x, z) and a guide q(z|x) whose datapoints live in one plate (found by structure,
:func:`data_plate`: the plate every sample site shares, ``pyro.plate("data")`` in the VAE), draws
z_1..z_K ~ q(z|x) for every datapoint at once and forms the log importance weights
``log w_k = log p(x, z_k) - log q(z_k|x)`` per datapoint. Unlike Pyro's
``vectorized_importance_weights`` and ``psis_diagnostic``, log-probabilities are NOT summed over the
data plate: each datapoint keeps its own K weights, so its estimate, effective sample size and
error bar are its own.

The estimator refuses what it cannot score and never returns NaN silently: data outside the support
of an observed site raise :class:`~pyro_vae.errors.UnsupportedDataError` (checked on each block's
first pass, whether or not Pyro's validation is enabled), and a NaN or +inf estimate raises
:class:`~pyro_vae.errors.NonFiniteEstimate` (checked once, at the end). A log p(x) of -inf, when
every weight of a datapoint is zero, is a legitimate answer (see :class:`ImportanceResult`).

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Kong (1992) for the effective sample size 1 / sum(w_norm^2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch

from pyro_vae.errors import PyroVAEError
from pyro_vae.infer.estimator import (
    Estimator,
    ImportanceSettings,
    LogZBlock,
    from_weights,
    importance_samples,
)
from pyro_vae.infer.nonfinite import not_finite, raise_if_not_finite
from pyro_vae.infer.passes import plan_passes
from pyro_vae.infer.rng import rng_state, set_rng_state
from pyro_vae.infer.traces import guess_max_plate_nesting, log_weights
from pyro_vae.options import option
from pyro_vae.progress import progress_bar


@dataclass(frozen=True)
class ImportanceResult:
    """Per-datapoint results of :func:`importance_log_likelihood`, each of shape ``(N,)``.

    Attributes
    ----------
    log_px : Tensor
        ``log (1/K) sum_k w_k``: the IWAE estimate L_K of log p(x) (a lower bound in expectation).
        It is -inf when every weight of a datapoint is zero, i.e. p(x, z_k) = 0 for all K draws
        (e.g. a guide that draws outside a bounded prior's support, or a likelihood that gives the
        datapoint zero density): a legitimate value of the bound, which says that the guide's
        draws found none of the posterior's mass, not that p(x) = 0.
    elbo : Tensor
        ``(1/K) sum_k log w_k``: the mean single-sample ELBO over the same K draws (-inf when any
        weight is zero).
    ess : Tensor
        Effective sample size of the normalised weights, ``(sum w)^2 / sum w^2``, in [1, K]; 0 when
        every weight is zero (no draw carries any weight).
    stderr : Tensor
        Delta-method Monte Carlo standard error of ``log_px``: ``sqrt((K/ess - 1) / (K - 1))``;
        NaN when K = 1 (one draw has no spread), +inf when every weight is zero (whatever K). It is
        only as trustworthy as the weights: heavy-tailed weights (low ESS) make it optimistic.
    num_samples : int
        K.
    log_weights : Tensor or None
        All log weights, shape ``(K, N)``, when requested with ``keep_log_weights=True``.
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    stderr: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None

    @staticmethod
    def concat(parts: list[ImportanceResult]) -> ImportanceResult:
        """Join results on consecutive blocks of datapoints."""
        if len(parts) == 1:
            return parts[0]
        weights = [p.log_weights for p in parts]
        return ImportanceResult(
            log_px=torch.cat([p.log_px for p in parts]),
            elbo=torch.cat([p.elbo for p in parts]),
            ess=torch.cat([p.ess for p in parts]),
            stderr=torch.cat([p.stderr for p in parts]),
            num_samples=parts[0].num_samples,
            log_weights=None if weights[0] is None else torch.cat(weights, dim=1),
        )

    @property
    def gap(self) -> torch.Tensor:
        """``log_px - elbo``, an estimate of KL(q(z|x) || p(z|x)) that shrinks as K grows."""
        return self.log_px - self.elbo


class LogWeightAccumulator:
    """Streams chunks of log weights, shape ``(k, N)``, into running per-datapoint sums.

    Keeps a running maximum ``m`` and the rescaled sums ``sum exp(lw - m)`` and
    ``sum exp(2 (lw - m))`` (a streaming log-sum-exp), so memory is O(N) whatever K is.
    Sums are kept in float64.

    The result does not depend on how the weights are split into chunks, for any weights: a
    datapoint whose weights so far are all zero (log weight -inf) keeps ``m = -inf`` and empty sums
    until a finite weight arrives, so later weights far below exp's range (say -2e4) are not lost.
    +inf and NaN log weights give a +inf or NaN ``log_px`` for their datapoint only; the
    accumulator reports them as they are (:func:`importance_log_likelihood` raises on them).
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._s1: torch.Tensor | None = None
        self._s2: torch.Tensor | None = None
        self._sum_lw: torch.Tensor | None = None

    def update(self, log_weights: torch.Tensor) -> None:
        """Add a chunk of log weights of shape ``(k, N)``."""
        lw = log_weights.double()
        if lw.dim() != 2:
            raise ValueError(f"expected log weights of shape (k, N), got {tuple(lw.shape)}")
        chunk_max = lw.max(dim=0).values  # NaN where the chunk holds a NaN
        if self._shift is None:
            shift = chunk_max
            self._s1 = torch.zeros_like(shift)
            self._s2 = torch.zeros_like(shift)
            self._sum_lw = torch.zeros_like(shift)
        else:
            shift = torch.maximum(self._shift, chunk_max)
            # Where the maximum is unchanged (-inf to -inf included) the sums stay as they are;
            # from -inf to a finite maximum, exp(-inf) = 0 rescales the empty sums to 0.
            rescale = torch.where(shift == self._shift, 1.0, torch.exp(self._shift - shift))
            self._s1 = self._s1 * rescale
            self._s2 = self._s2 * rescale * rescale
        self._shift = shift
        scaled = torch.exp(lw - _finite_or_zero(shift))
        self._s1 = self._s1 + scaled.sum(0)
        self._s2 = self._s2 + (scaled * scaled).sum(0)
        self._sum_lw = self._sum_lw + lw.sum(0)
        self.count += lw.shape[0]

    def result(self, log_weights: torch.Tensor | None = None) -> ImportanceResult:
        """The per-datapoint estimates from the weights so far (see :class:`ImportanceResult`)."""
        if self.count == 0:
            raise ValueError("no log weights were accumulated")
        k = self.count
        # s1 >= 1 wherever the maximum is finite (the largest weight adds exp(0) = 1), so s1 = 0
        # exactly when every weight is zero.
        empty = self._s1 == 0
        log_px = _finite_or_zero(self._shift) + torch.log(self._s1) - math.log(k)
        ess = torch.where(empty, 0.0, self._s1 * self._s1 / self._s2)
        if k > 1:
            stderr = torch.sqrt(torch.clamp(k / ess - 1.0, min=0.0) / (k - 1))
        else:
            stderr = torch.full_like(log_px, math.nan)
        stderr = torch.where(empty, math.inf, stderr)
        return ImportanceResult(
            log_px=log_px,
            elbo=self._sum_lw / k,
            ess=ess,
            stderr=stderr,
            num_samples=k,
            log_weights=log_weights,
        )


def _finite_or_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, 0.0)


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    max_plate_nesting: int | None = None,
    keep_log_weights: bool = False,
    progress: bool | str | None = False,
) -> ImportanceResult:
    """Importance-sampled log p(x) for every datapoint of ``x``, with ELBO, ESS and error bar.

    ``model(x)`` and ``guide(x)`` must be Pyro programs whose every sample site lies inside one
    plate over the rows of ``x`` (latent variables are local to a datapoint), found by structure
    (:func:`data_plate`; ``pyro.plate("data")`` in the VAE). With
    z_k ~ q(z|x), k = 1..K,

    .. math:: L_K(x) = \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k | x)},

    and ``E[L_1] = ELBO <= E[L_K] <= E[L_{K+1}] <= log p(x)`` (Burda et al. 2016).

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(x)`` and ``guide(x)``.
    x : Tensor
        The data, first dimension indexing datapoints (N of them).
    num_samples : int
        K, the number of importance samples per datapoint.
    chunk_size : int, optional
        Particles drawn per vectorised pass; memory grows with ``chunk_size``, not with K.
    batch_size : int, optional
        Datapoints per pass. Both default to the sizes :func:`plan_passes` chooses; with
        ``chunk_size`` alone, every datapoint is in each pass.
    max_plate_nesting : int, optional
        Number of plate dimensions in the programs; found from one trace when not given.
    keep_log_weights : bool
        Also return all log weights, shape ``(K, N)`` (memory grows with K).
    progress : bool, str or None
        Progress over passes (see :mod:`pyro_vae.progress`): ``True`` or ``"bar"`` for a bar,
        ``"lines"`` for a plain line every few seconds (for logs), ``False``, ``None`` or
        ``"off"`` for nothing.

    Returns
    -------
    ImportanceResult
        ``log_px``, ``elbo``, ``ess``, ``stderr``, each of shape ``(N,)``, in float64. A
        ``log_px`` of -inf (every weight zero) is a legitimate answer, with ESS 0 and an infinite
        error bar; NaN and +inf never are.

    Raises
    ------
    UnsupportedDataError
        When a value of an observed site of the model lies outside the support of its
        distribution (``site["fn"].support``, e.g. grey pixels under a Bernoulli). Every block of
        datapoints is checked, on its first pass, whether or not Pyro's validation is enabled.
    NonFiniteEstimate
        When ``log_px`` or ``elbo`` is NaN or +inf for some datapoints (checked once, after the
        last pass). Its ``datapoints`` are their rows of ``x``; ``site`` names the first guide or
        model site whose log-density is not finite when the first of them is traced again (None
        when none is); ``cause`` is ``"data"`` when ``x`` holds NaN or infinite values or values
        larger in magnitude than ``UNSCALED_DATA_ABS_MAX`` (1e3: unscaled data, to standardise),
        ``"model"`` otherwise. Where Pyro's validation (on each block's first pass) refuses a
        non-finite value, the same error is raised, chained to Pyro's.
    ValueError
        For sites outside the data plate, log weights of the wrong shape, or other errors of Pyro's
        validation.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if x.shape[0] < 1:
        raise ValueError("x holds no datapoints")
    chunk_size, batch_size = plan_passes(x, num_samples, chunk_size, batch_size)
    n = x.shape[0]
    passes = math.ceil(n / batch_size) * math.ceil(num_samples / chunk_size)
    bar = progress_bar(total=passes, desc="log p(x)", unit="pass", progress=progress)
    validation_error = None
    with torch.no_grad(), bar:
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, guide, x[:batch_size])
        parts = []
        validate = poutine.util.is_validation_enabled()
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            passes = _passes(model, guide, xb, num_samples, chunk_size, max_plate_nesting)
            accumulator = LogWeightAccumulator()
            kept = []
            for _, lw, error in passes(validate, (start, n)):
                validation_error = validation_error or error
                accumulator.update(lw)
                if keep_log_weights:
                    kept.append(lw.double())
                bar.update()
            parts.append(accumulator.result(torch.cat(kept) if keep_log_weights else None))
    result = ImportanceResult.concat(parts)
    retrace = min(num_samples, chunk_size * batch_size)  # particles of one pass, on one point
    raise_if_not_finite(
        result.log_px,
        x,
        elbo=result.elbo,
        model=model,
        guide=guide,
        particles=retrace,
        max_plate_nesting=max_plate_nesting,
        chained=validation_error,
    )
    return result


def _passes(model, guide, x, num_samples: int, chunk_size: int, max_plate_nesting: int):
    """The passes over the rows ``x``: a generator of ``(k, log weights (k, N), error)``."""

    def passes(validate: bool, rows: tuple[int, int]):
        for first in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - first)
            error = None
            if first == 0:
                # The data's support is checked on each block's first pass, and Pyro's checks
                # (supports, shapes) run there too: the other passes repeat the same programs
                # on the same data with new draws.
                lw, error = _first_pass(model, guide, x, k, max_plate_nesting, validate, rows)
            else:
                with pyro.validation_enabled(False):
                    lw = log_weights(model, guide, x, k, max_plate_nesting)
            if lw.shape[0] in (1, k) and lw.shape[1] in (1, x.shape[0]):
                lw = lw.expand(k, x.shape[0])
            if lw.shape != (k, x.shape[0]):
                raise ValueError(
                    f"log weights of shape {tuple(lw.shape)}, expected {(k, x.shape[0])}"
                )
            yield k, lw, error

    return passes


def _first_pass(model, guide, x, k, max_plate_nesting, validate, rows):
    """A block's first pass: its data checked against the supports, validated by Pyro if
    ``validate``. Returns the log weights and the error of Pyro's validation, if it raised one
    that was caused by NaN or +inf weights (else None).

    When Pyro's validation refuses a value (e.g. a NaN parameter), the pass is run again, on the
    same draws, without it: if its weights then hold NaN or +inf values, they were the cause, and
    the estimate goes on so that :class:`NonFiniteEstimate` names every datapoint affected, as
    without validation. Any other validation error is raised as it is.
    """
    if not validate:
        with pyro.validation_enabled(False):
            return log_weights(model, guide, x, k, max_plate_nesting, check_data=rows), None
    rng = rng_state(x.device)
    try:
        with pyro.validation_enabled(True):
            return log_weights(model, guide, x, k, max_plate_nesting, check_data=rows), None
    except PyroVAEError:
        raise
    except ValueError as error:
        set_rng_state(rng, x.device)
        try:
            with pyro.validation_enabled(False):
                lw = log_weights(model, guide, x, k, max_plate_nesting, check_data=rows)
        except PyroVAEError:
            raise
        except Exception:
            raise error from None
        if not bool(not_finite(lw).any()):
            raise
        return lw, error


class IWAE(Estimator):
    """Importance sampling from the guide: K draws of q(z|x) per datapoint (Burda et al. 2016),
    in passes of the block planned from its shape (:mod:`pyro_vae.infer.passes`)."""

    name = "iwae"
    label = "importance sampling from the guide"

    @dataclass(frozen=True)
    class Settings(ImportanceSettings):
        chunk_size: int | None = option(
            None,
            "iwae only: particles per vectorised pass, at most K (default: planned from the "
            "block's shape)",
            low=1,
            high=100_000_000,
            metavar="C",
            why="a pass never holds more than K particles, and K is at most that",
            recorded=False,
        )

    def run_block(self, model, guide, x, settings, context) -> LogZBlock:
        start = time.perf_counter()
        r = importance_log_likelihood(
            model,
            guide,
            x,
            num_samples=settings.num_samples,
            chunk_size=settings.chunk_size,
            batch_size=x.shape[0],
            max_plate_nesting=context.max_plate_nesting,
            keep_log_weights=True,
        )
        return from_weights(r, self.name, seconds=time.perf_counter() - start)

    def setting_name(self, draws, recorded) -> str:
        return f"K{draws}"  # the names of earlier versions, which had only this method

    def describe(self, draws, recorded) -> str:
        return importance_samples(draws)


def guide_elbo(model, guide, x, max_plate_nesting: int) -> torch.Tensor:
    """The guide's ELBO per datapoint from :data:`ELBO_SAMPLES` draws: the number reported
    beside the estimators that do not draw from the guide."""
    r = importance_log_likelihood(
        model,
        guide,
        x,
        num_samples=ELBO_SAMPLES,
        batch_size=x.shape[0],
        max_plate_nesting=max_plate_nesting,
    )
    return r.elbo


# Draws of the guide per datapoint for the ELBO reported beside estimators that do not draw from
# the guide themselves (refined, ais, prior).
ELBO_SAMPLES = 100
