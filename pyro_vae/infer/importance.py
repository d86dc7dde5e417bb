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
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import ExpandedDistribution, MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Independent, constraints

from pyro_vae.errors import (
    SUPPORT_ADVICE,
    NonFiniteEstimate,
    PyroVAEError,
    UnsupportedDataError,
)
from pyro_vae.infer.rng import rng_state, set_rng_state
from pyro_vae.progress import progress_bar
from pyro_vae.text import plural

DATA_PLATE = "data"  # the plate over datapoints when several plates hold every site
_PARTICLE_PLATE = "_importance_particles"
LATENT_DRAWS_PLATE = "_latent_draws"  # infer.latent's
# Plates of draws, not of data, left of all others: never the plate over datapoints.
DRAW_PLATES = frozenset({_PARTICLE_PLATE, LATENT_DRAWS_PLATE, "num_particles_vectorized"})
# automatic pass size: at most this many x-sized elements per pass. On a CPU, 2**22 float32 values
# (16 MB tiles) stay near the cache; larger tiles made the estimator 1.6x slower (benchmarks/).
_AUTO_CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**28}
_MIN_AUTO_CHUNK = 64
# ... and no more than this share of the device's free memory, at this many bytes of peak memory
# per x-sized element of a pass. Measured for the benchmark's 784-512-512-50 VAE on CPU: 12 to 14
# bytes (peak growth 14, 51, 198 MB for passes of 2**20, 2**22, 2**24 elements); 32 leaves room
# for networks wider than the data.
_FREE_MEMORY_SHARE = 0.5
_BYTES_PER_ELEMENT = 32
# A non-finite estimate is blamed on the data (cause="data") when they hold NaN or infinite
# values, or values larger in magnitude than this: unscaled data (e.g. raw measurements near 1e4)
# that networks built for standardised inputs (values near 1) overflow on. Pixels in [0, 255]
# stay below it.
UNSCALED_DATA_ABS_MAX = 1e3
_ROWS_SHOWN = 5  # datapoint indices listed in an error message


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
            accumulator = LogWeightAccumulator()
            kept = []
            for first in range(0, num_samples, chunk_size):
                k = min(chunk_size, num_samples - first)
                if first == 0:
                    # The data's support is checked on each block's first pass, and Pyro's checks
                    # (supports, shapes) run there too: the other passes repeat the same programs
                    # on the same data with new draws.
                    lw, error = _first_pass(
                        model, guide, xb, k, max_plate_nesting, validate, (start, n)
                    )
                    validation_error = validation_error or error
                else:
                    with pyro.validation_enabled(False):
                        lw = _log_weights(model, guide, xb, k, max_plate_nesting)
                if lw.shape[0] in (1, k) and lw.shape[1] in (1, xb.shape[0]):
                    lw = lw.expand(k, xb.shape[0])
                if lw.shape != (k, xb.shape[0]):
                    raise ValueError(
                        f"log weights of shape {tuple(lw.shape)}, expected {(k, xb.shape[0])}"
                    )
                accumulator.update(lw)
                if keep_log_weights:
                    kept.append(lw.double())
                bar.update()
            parts.append(accumulator.result(torch.cat(kept) if keep_log_weights else None))
    result = ImportanceResult.concat(parts)
    retrace = min(num_samples, chunk_size * batch_size)  # particles of one pass, on one point
    _check_finite(result, model, guide, x, retrace, max_plate_nesting, validation_error)
    return result


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
            return _log_weights(model, guide, x, k, max_plate_nesting, check_data=rows), None
    rng = rng_state(x.device)
    try:
        with pyro.validation_enabled(True):
            return _log_weights(model, guide, x, k, max_plate_nesting, check_data=rows), None
    except PyroVAEError:
        raise
    except ValueError as error:
        set_rng_state(rng, x.device)
        try:
            with pyro.validation_enabled(False):
                lw = _log_weights(model, guide, x, k, max_plate_nesting, check_data=rows)
        except PyroVAEError:
            raise
        except Exception:
            raise error from None
        if not bool(_not_finite(lw).any()):
            raise
        return lw, error


def _not_finite(t: torch.Tensor) -> torch.Tensor:
    """NaN or +inf: values no estimate may take (-inf is a zero weight)."""
    return torch.isnan(t) | (t == math.inf)


def _check_finite(result, model, guide, x, k, max_plate_nesting, validation_error) -> None:
    """Raise :class:`NonFiniteEstimate` if some ``log_px`` or ``elbo`` is NaN or +inf."""
    bad = _not_finite(result.log_px) | _not_finite(result.elbo)
    if not bool(bad.any()):  # the one host sync of the check
        if validation_error is not None:  # not expected: NaN or +inf weights give such estimates
            raise validation_error
        return
    rows = bad.nonzero().flatten().tolist()
    n = x.shape[0]
    values = x.detach() if x.is_floating_point() else x.detach().double()
    data_abs_max = float(values.abs().max()) if x.numel() else 0.0  # NaN when x holds a NaN
    if not math.isfinite(data_abs_max):
        cause = "data"
        why = (
            "the data hold NaN or infinite values: remove or impute them before evaluating the "
            "model"
        )
    elif data_abs_max > UNSCALED_DATA_ABS_MAX:
        cause = "data"
        why = (
            f"the data look unscaled (max |x| = {data_abs_max:.3g}, above "
            f"{UNSCALED_DATA_ABS_MAX:g}), which overflows networks built for values near 1: "
            "standardise or rescale them (e.g. to zero mean and unit variance) and fit the model "
            "on the rescaled data"
        )
    else:
        cause = "model"
        why = (
            "the model's parameters or networks produce non-finite values for them (e.g. after "
            "a diverged fit): check or retrain the model"
        )
    first = rows[0]
    with torch.no_grad():
        site = _non_finite_site(model, guide, x[first : first + 1], k, max_plate_nesting)
    where = (
        f"; the first non-finite log-density, tracing row {first} again, is at {site}"
        if site is not None
        else ""
    )
    message = (
        f"the estimate of log p(x) is NaN or +inf for {len(rows)} of {n} datapoints "
        f"({_rows_text(rows)}){where}; {why}"
    )
    error = NonFiniteEstimate(
        message, datapoints=rows, site=site, cause=cause, data_abs_max=data_abs_max
    )
    raise error from validation_error


def _non_finite_site(model, guide, x, k, max_plate_nesting) -> str | None:
    """The first guide, then model, sample site whose log-density is NaN or +inf (for the guide,
    also -inf) when ``x`` is traced with ``k`` particles; None when none is. The caller's random
    number streams are left as they were."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        try:
            model_trace, guide_trace = vectorized_traces(model, guide, k, max_plate_nesting, x)
            plate = data_plate(model_trace, guide_trace)
            for program, trace in (("guide", guide_trace), ("model", model_trace)):
                compute_log_prob(trace)
                for name, site in trace.nodes.items():
                    if site["type"] != "sample":
                        continue
                    lp = per_datapoint_log_prob(name, site, max_plate_nesting, plate)
                    bad = ~torch.isfinite(lp) if program == "guide" else _not_finite(lp)
                    if bool(bad.any()):
                        return f"{program} site '{name}'"
        except (ValueError, RuntimeError):  # a diagnosis only: it must not hide the estimate's
            return None
    return None


def _rows_text(rows: list[int]) -> str:
    """``"row 3"``, ``"rows 3, 7"``, or ``"rows 3, 7, 9, 12, 15 and 40 more"``."""
    shown = ", ".join(str(r) for r in rows[:_ROWS_SHOWN])
    more = f" and {len(rows) - _ROWS_SHOWN} more" if len(rows) > _ROWS_SHOWN else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}"


def support_name(constraint: constraints.Constraint) -> str:
    """The name of a torch constraint in :class:`~pyro_vae.errors.UnsupportedDataError`:
    ``"binary"`` (boolean), ``"unit_interval"`` (interval(0, 1)), ``"open_unit_interval"`` (an
    open interval (0, 1)), ``"positive"`` (greater than 0), ``"real"``, or ``str(constraint)``
    for others. Independent constraints (from ``.to_event()``) are named by their base."""
    c = _base_constraint(constraint)
    if type(c) is type(constraints.boolean):
        return "binary"
    if type(c) is type(constraints.real):
        return "real"
    low, high = getattr(c, "lower_bound", None), getattr(c, "upper_bound", None)
    if type(c) is constraints.interval and _equals(low, 0) and _equals(high, 1):
        return "unit_interval"
    if type(c).__name__ == "_OpenInterval" and _equals(low, 0) and _equals(high, 1):
        return "open_unit_interval"
    if type(c) is constraints.greater_than and _equals(low, 0):
        return "positive"
    return str(c)


def _base_constraint(c: constraints.Constraint) -> constraints.Constraint:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def _equals(bound, number: float) -> bool:
    try:
        return float(bound) == number
    except (TypeError, ValueError, RuntimeError):  # None, or a tensor of many bounds
        return False


def _distribution_name(fn) -> str:
    """``"Bernoulli"`` for ``Bernoulli(...).to_event(1)``, expanded or masked."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return type(fn).__name__


def check_observed_support(model_trace, rows: tuple[int, int] = (0, 0)) -> None:
    """Raise :class:`~pyro_vae.errors.UnsupportedDataError` if the value of an observed sample
    site of ``model_trace`` lies outside the support of its distribution.

    Each value is checked against the support's base constraint (elementwise for the usual
    ``.to_event()`` likelihoods), masked values included, with one host sync per observed site.
    Nothing is drawn and Pyro's validation is not involved. ``rows`` is ``(start, num_data)``:
    the row of the full data at which the traced block starts, and the number of rows in all,
    for the message.
    """
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        fn = site["fn"]
        try:
            support = fn.support
        except NotImplementedError:
            continue
        base = _base_constraint(support)
        if constraints.is_dependent(base):
            continue
        value = site["value"]
        ok = base.check(value)
        if bool(ok.all()):
            continue
        try:
            plate = data_plate(model_trace)
        except ValueError:  # the message then names no rows
            plate = None
        _raise_unsupported(name, site, base, ok, rows, plate)


def _raise_unsupported(
    name: str, site: dict, base, ok: torch.Tensor, rows: tuple[int, int], plate: str | None
):
    fn, value = site["fn"], site["value"]
    invalid = ~ok
    while invalid.dim() > value.dim() - base.event_dim:  # bounds with more batch dims than value
        invalid = invalid.any(0)
    count = int(invalid.sum())
    start, num_data = rows
    block = None
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is not None:
        axis = value.dim() - fn.event_dim + frame.dim
        if 0 <= axis < invalid.dim():
            per_row = invalid.movedim(axis, 0).reshape(invalid.shape[axis], -1).any(1)
            block = (start, start + per_row.shape[0], (per_row.nonzero().flatten() + start))
    numbers = value.detach().double()
    nan = int(torch.isnan(numbers).sum())
    numbers = numbers[~torch.isnan(numbers)]
    low = float(numbers.min()) if numbers.numel() else math.nan
    high = float(numbers.max()) if numbers.numel() else math.nan
    key = support_name(base)
    words, fix = SUPPORT_ADVICE.get(
        key,
        (str(base), "transform the data into it or choose a likelihood whose support covers them"),
    )
    distribution = _distribution_name(fn)
    data, where, later = "the data", "", ""
    if block is not None:
        first, stop, bad_rows = block
        where = f" in {plural(len(bad_rows), 'datapoint')} ({_rows_text(bad_rows.tolist())})"
        if first > 0 or stop < num_data:
            data = f"rows {first}-{stop - 1} of the data"
            later = " (later rows are not checked yet)" if stop < num_data else ""
    nans = ""
    if nan:
        data += " other than NaN"
        if key != "real":
            nans = f" ({nan} of them NaN)"
            fix = "remove or impute the NaN values" + (f"; {fix}" if count > nan else "")
    message = (
        f"the observed site '{name}' has a {distribution} distribution, whose support is {words}, "
        f"but {data} lie in [{low:.4g}, {high:.4g}], with {plural(count, 'value')}{nans}{where} "
        f"outside it{later}; {fix}"
    )
    raise UnsupportedDataError(
        message,
        what=f"the data observed at site '{name}'",
        distribution=distribution,
        support=key,
        low=low,
        high=high,
        num_invalid=count,
    )


def plan_passes(
    x: torch.Tensor, num_samples: int, chunk_size: int | None, batch_size: int | None
) -> tuple[int, int]:
    """Particles per pass and datapoints per pass.

    Automatic sizes keep a pass near a budget of x-sized values (:func:`pass_budget`: at most
    2**22 on a CPU, about 16 MB of float32, which stays near the cache, and 2**28 on CUDA, both
    lowered to fit half the device's free memory) while drawing at least 64 particles per pass
    where K allows: the guide's encoder runs once per pass, so tiny particle chunks over many
    datapoints would repeat it needlessly. With only ``chunk_size`` given, all datapoints go in
    one pass.
    """
    n = x.shape[0]
    per_point = max(1, x[0].numel())
    budget = pass_budget(x.device)
    if batch_size is None and chunk_size is None:
        floor = max(1, min(_MIN_AUTO_CHUNK, budget // per_point))  # within budget for 1 point
        k = min(num_samples, max(floor, budget // (n * per_point)))
        batch_size = max(1, min(n, budget // (k * per_point)))
    elif batch_size is None:
        batch_size = n
    if chunk_size is None:
        chunk_size = max(1, min(num_samples, budget // (min(batch_size, n) * per_point)))
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(
            f"chunk_size and batch_size must be at least 1, got {chunk_size}, {batch_size}"
        )
    return chunk_size, min(batch_size, n)


def pass_budget(device: torch.device) -> int:
    """x-sized elements per automatic pass on ``device``: the device's cap, lowered to fit
    ``_FREE_MEMORY_SHARE`` of its free memory at ``_BYTES_PER_ELEMENT`` bytes each."""
    cap = _AUTO_CHUNK_ELEMENTS.get(device.type, _AUTO_CHUNK_ELEMENTS["cpu"])
    free = free_memory_bytes(device)
    if free is None:
        return cap
    return max(1, min(cap, int(free * _FREE_MEMORY_SHARE) // _BYTES_PER_ELEMENT))


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` in bytes, or None when it cannot be read.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``); memory cached by PyTorch's
    allocator is reusable, so it counts as free. CPU: ``MemAvailable`` from ``/proc/meminfo``.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + reserved
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def vectorized_traces(model, guide, num_particles: int, max_plate_nesting: int, *args, **kwargs):
    """Guide and replayed model traces with ``num_particles`` draws in a plate left of all others.

    Subsample sites are pruned; gradients flow if enabled.
    """
    with pyro.plate(_PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
        return _traces(model, guide, *args, **kwargs)


def _traces(model, guide, *args, **kwargs):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def guess_max_plate_nesting(model, guide, x) -> int:
    """Plate depth from one trace, drawn without moving the caller's random number streams."""
    devices = [x.device] if x.device.type == "cuda" else []
    # Unvalidated: it needs only the plates; the first pass of each block is validated.
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        traces = _traces(model, guide, x)
    return plate_nesting(*traces)


def plate_nesting(*traces) -> int:
    """The depth of the vectorised plates that the sample sites of ``traces`` sit in."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                nesting = max([nesting, *dims])
    return nesting


def plan_blocks(
    x: torch.Tensor, draws_per_point: int, batch_size: int | None
) -> list[tuple[int, int]]:
    """``(first, stop)`` row ranges of ``x`` for estimators that hold ``draws_per_point`` draws
    (chains, particles) of every datapoint of a block at once: ``batch_size`` rows each, by
    default as many as keep a block within :func:`pass_budget`."""
    n = x.shape[0]
    if batch_size is None:
        per_point = max(1, x[0].numel())
        batch_size = max(1, min(n, pass_budget(x.device) // (draws_per_point * per_point)))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def _log_weights(
    model, guide, x, k: int, max_plate_nesting: int, *, check_data: tuple[int, int] | None = None
) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for k particles drawn at once: shape ``(k, N)``.

    With ``check_data`` (``rows`` of :func:`check_observed_support`), the observed values are
    checked against their supports before any log-density is computed.
    """
    model_trace, guide_trace = vectorized_traces(model, guide, k, max_plate_nesting, x)
    if check_data is not None:
        check_observed_support(model_trace, check_data)
    return log_weights_from_traces(model_trace, guide_trace, max_plate_nesting)


def log_weights_from_traces(
    model_trace, guide_trace, max_plate_nesting: int, *, keep_scale: bool = False
) -> torch.Tensor:
    """Per-particle, per-datapoint log weights ``(k, N)`` from vectorised traces.

    Each site's log-probability is summed over every dimension but the particle and data-plate
    dimensions. With ``keep_scale``, site scales (e.g. a KL weight from ``poutine.scale``) are
    applied, except the data plate's subsampling factor ``full_size / size``.
    """
    plate = data_plate(model_trace, guide_trace)
    terms = []
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        compute_log_prob(trace)
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                lp = per_datapoint_log_prob(name, site, max_plate_nesting, plate)
                if keep_scale:
                    lp = lp * _scale_without_subsampling(site, plate)
                terms.append(sign * lp)
    lw = terms[0]
    for term in terms[1:]:
        lw = lw + term
    return lw


def data_plate(*traces) -> str:
    """The name of the plate over datapoints in ``traces``, found by structure: the vectorised
    plate that every sample site sits in (the estimators' own particle plate aside), as NumPyro's
    RenyiELBO finds the plates common to all sites. Where several plates hold every site (a
    pixel plate inside the data plate of a model with one site), the one named
    :data:`DATA_PLATE`.

    Auxiliary sites (named ``_...`` or marked ``infer={"is_auxiliary": True}``, which the
    estimators that draw their own latents ignore) do not decide the plate; an estimator that
    scores one outside it refuses it when it does (:func:`per_datapoint_log_prob`).

    Raises ValueError, naming a site, when no plate holds every site (a latent shared by all
    datapoints has no per-datapoint density), and when several do and none is named "data".
    """
    plates: dict[str, set[str]] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            auxiliary = name.startswith("_") or site.get("infer", {}).get("is_auxiliary", False)
            if site["type"] == "sample" and not auxiliary:
                frames = {
                    f.name
                    for f in site["cond_indep_stack"]
                    if f.vectorized and f.name not in DRAW_PLATES
                }
                plates[name] = plates.get(name, frames) & frames
    if not plates:
        raise ValueError("the model and guide have no sample sites")
    common = set.intersection(*plates.values())
    if len(common) == 1:
        return common.pop()
    if DATA_PLATE in common:
        return DATA_PLATE
    if common:
        raise ValueError(
            f"every sample site lies in each of the plates {sorted(common)}: name the plate over "
            f"datapoints '{DATA_PLATE}' (pyro.plate('{DATA_PLATE}', N))"
        )
    counts: dict[str, int] = {}
    for frames in plates.values():
        for f in frames:
            counts[f] = counts.get(f, 0) + 1
    shared = max(counts, key=lambda f: (counts[f], f == DATA_PLATE)) if counts else DATA_PLATE
    outside = next(name for name, frames in plates.items() if shared not in frames)
    raise ValueError(
        f"sample site '{outside}' is outside pyro.plate('{shared}'), the plate over datapoints "
        "of the other sites: a per-datapoint log p(x) needs every latent and observed site to "
        "belong to one datapoint"
    )


def _data_frame(name: str, site: dict, plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    raise ValueError(
        f"sample site '{name}' is outside pyro.plate('{plate}'): a per-datapoint "
        "log p(x) needs every latent and observed site to belong to one datapoint"
    )


def _scale_without_subsampling(site: dict, plate: str):
    frame = _data_frame("", site, plate)
    full = frame.full_size if frame.full_size is not None else frame.size
    return site["scale"] * frame.size / full


def compute_log_prob(trace) -> None:
    """Pyro's :meth:`~pyro.poutine.Trace.compute_log_prob` of ``trace`` (memoised): each sample
    site's own log-density, before its scale, in ``site["unscaled_log_prob"]``, which is what a
    log importance weight needs (a KL weight or a subsampling factor is not part of log p(x)).
    Pyro's NaN and infinity warnings are off: the estimators report non-finite values with the
    datapoints and the site (:class:`~pyro_vae.errors.NonFiniteEstimate`), and -inf is a
    legitimate log-density."""
    with pyro.validation_enabled(False):
        trace.compute_log_prob()


def per_datapoint_log_prob(
    name: str, site: dict, max_plate_nesting: int, plate: str = DATA_PLATE
) -> torch.Tensor:
    """A site's log-probability (its masked ``unscaled_log_prob``, :func:`compute_log_prob`)
    summed over every dimension but particles and datapoints (the dimension of ``plate``,
    :func:`data_plate`)."""
    frame = _data_frame(name, site, plate)
    if "unscaled_log_prob" not in site:
        raise KeyError(f"site '{name}' has no unscaled_log_prob: call compute_log_prob(trace)")
    log_prob = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
    ndim = max_plate_nesting + 1
    if log_prob.dim() > ndim:
        raise ValueError(
            f"site '{name}' has log_prob of shape {tuple(log_prob.shape)}, more batch dimensions "
            f"than the {max_plate_nesting} plate(s) declared; use .to_event() for dependent dims"
        )
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + tuple(log_prob.shape))
    data_axis = ndim + frame.dim
    other_axes = [a for a in range(1, ndim) if a != data_axis]
    if other_axes:
        log_prob = log_prob.sum(other_axes, keepdim=True)
    log_prob = log_prob.reshape(log_prob.shape[0], log_prob.shape[data_axis])
    if log_prob.shape[1] not in (1, frame.size):
        raise ValueError(
            f"site '{name}' spans {log_prob.shape[1]} datapoints, but its '{plate}' plate has "
            f"{frame.size}: the plate must run over the rows of x"
        )
    return log_prob
