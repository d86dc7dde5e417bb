"""Per-datapoint importance-sampled estimates of log p(x) (the IWAE bound) for Pyro programs.

For a model p(x, z) and a guide q(z|x) whose datapoints live in ``pyro.plate("data")``, draws
z_1..z_K ~ q(z|x) for every datapoint at once and forms the log importance weights
``log w_k = log p(x, z_k) - log q(z_k|x)`` per datapoint. Unlike Pyro's
``vectorized_importance_weights`` and ``psis_diagnostic``, log-probabilities are NOT summed over the
data plate: each datapoint keeps its own K weights, so its estimate, effective sample size and
error bar are its own.

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
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

DATA_PLATE = "data"
_PARTICLE_PLATE = "_importance_particles"
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


@dataclass(frozen=True)
class ImportanceResult:
    """Per-datapoint results of :func:`importance_log_likelihood`, each of shape ``(N,)``.

    Attributes
    ----------
    log_px : Tensor
        ``log (1/K) sum_k w_k``: the IWAE estimate L_K of log p(x) (a lower bound in expectation).
    elbo : Tensor
        ``(1/K) sum_k log w_k``: the mean single-sample ELBO over the same K draws.
    ess : Tensor
        Effective sample size of the normalised weights, ``(sum w)^2 / sum w^2``, in [1, K].
    stderr : Tensor
        Delta-method Monte Carlo standard error of ``log_px``: ``sqrt((K/ess - 1) / (K - 1))``
        (NaN when K = 1). It is only as trustworthy as the weights: heavy-tailed weights (low ESS)
        make it optimistic.
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
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._s1: torch.Tensor | None = None
        self._s2: torch.Tensor | None = None
        self._sum_lw: torch.Tensor | None = None

    def update(self, log_weights: torch.Tensor) -> None:
        lw = log_weights.double()
        if lw.dim() != 2:
            raise ValueError(f"expected log weights of shape (k, N), got {tuple(lw.shape)}")
        chunk_max = lw.max(dim=0).values
        if self._shift is None:
            shift = torch.where(torch.isfinite(chunk_max), chunk_max, torch.zeros_like(chunk_max))
            self._s1 = torch.zeros_like(shift)
            self._s2 = torch.zeros_like(shift)
            self._sum_lw = torch.zeros_like(shift)
        else:
            shift = torch.maximum(self._shift, chunk_max)
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            rescale = torch.exp(self._shift - shift)
            self._s1 = self._s1 * rescale
            self._s2 = self._s2 * rescale * rescale
        self._shift = shift
        scaled = torch.exp(lw - shift)
        self._s1 = self._s1 + scaled.sum(0)
        self._s2 = self._s2 + (scaled * scaled).sum(0)
        self._sum_lw = self._sum_lw + lw.sum(0)
        self.count += lw.shape[0]

    def result(self, log_weights: torch.Tensor | None = None) -> ImportanceResult:
        if self.count == 0:
            raise ValueError("no log weights were accumulated")
        k = self.count
        log_px = self._shift + torch.log(self._s1) - math.log(k)
        ess = self._s1 * self._s1 / self._s2
        if k > 1:
            stderr = torch.sqrt(torch.clamp(k / ess - 1.0, min=0.0) / (k - 1))
        else:
            stderr = torch.full_like(log_px, math.nan)
        return ImportanceResult(
            log_px=log_px,
            elbo=self._sum_lw / k,
            ess=ess,
            stderr=stderr,
            num_samples=k,
            log_weights=log_weights,
        )


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
    progress: bool = False,
) -> ImportanceResult:
    """Importance-sampled log p(x) for every datapoint of ``x``, with ELBO, ESS and error bar.

    ``model(x)`` and ``guide(x)`` must be Pyro programs whose every sample site lies inside a plate
    named ``"data"`` over the rows of ``x`` (latent variables are local to a datapoint). With
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
    progress : bool
        Show a progress bar over passes.

    Returns
    -------
    ImportanceResult
        ``log_px``, ``elbo``, ``ess``, ``stderr``, each of shape ``(N,)``, in float64.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if x.shape[0] < 1:
        raise ValueError("x holds no datapoints")
    chunk_size, batch_size = plan_passes(x, num_samples, chunk_size, batch_size)
    n = x.shape[0]
    passes = math.ceil(n / batch_size) * math.ceil(num_samples / chunk_size)
    bar = tqdm(total=passes, desc="log p(x)", unit="pass", disable=not progress, leave=False)
    with torch.no_grad(), bar:
        if max_plate_nesting is None:
            max_plate_nesting = _guess_max_plate_nesting(model, guide, x[:batch_size])
        parts = []
        validate = poutine.util.is_validation_enabled()
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            accumulator = LogWeightAccumulator()
            kept = []
            for first in range(0, num_samples, chunk_size):
                k = min(chunk_size, num_samples - first)
                # Pyro's checks (supports, shapes) run on each block's first pass: the other
                # passes repeat the same programs on the same data with new draws.
                with pyro.validation_enabled(validate and first == 0):
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
    return ImportanceResult.concat(parts)


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


def _guess_max_plate_nesting(model, guide, x) -> int:
    """Plate depth from one trace, drawn without moving the caller's random number streams."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        traces = _traces(model, guide, x)
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                nesting = max([nesting, *dims])
    return nesting


def _log_weights(model, guide, x, k: int, max_plate_nesting: int) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for k particles drawn at once: shape ``(k, N)``."""
    model_trace, guide_trace = vectorized_traces(model, guide, k, max_plate_nesting, x)
    return log_weights_from_traces(model_trace, guide_trace, max_plate_nesting)


def log_weights_from_traces(
    model_trace, guide_trace, max_plate_nesting: int, *, keep_scale: bool = False
) -> torch.Tensor:
    """Per-particle, per-datapoint log weights ``(k, N)`` from vectorised traces.

    Each site's log-probability is summed over every dimension but the particle and data-plate
    dimensions. With ``keep_scale``, site scales (e.g. a KL weight from ``poutine.scale``) are
    applied, except the data plate's subsampling factor ``full_size / size``.
    """
    terms = []
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                lp = _per_datapoint_log_prob(name, site, max_plate_nesting)
                if keep_scale:
                    lp = lp * _scale_without_subsampling(site)
                terms.append(sign * lp)
    if not terms:
        raise ValueError("the model and guide have no sample sites")
    lw = terms[0]
    for term in terms[1:]:
        lw = lw + term
    return lw


def _data_frame(name: str, site: dict):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    raise ValueError(
        f"sample site '{name}' is outside pyro.plate('{DATA_PLATE}'): a per-datapoint "
        "log p(x) needs every latent and observed site to belong to one datapoint"
    )


def _scale_without_subsampling(site: dict):
    frame = _data_frame("", site)
    full = frame.full_size if frame.full_size is not None else frame.size
    return site["scale"] * frame.size / full


def _per_datapoint_log_prob(name: str, site: dict, max_plate_nesting: int) -> torch.Tensor:
    """A site's log-probability summed over every dimension but particles and datapoints."""
    frame = _data_frame(name, site)
    log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
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
            f"site '{name}' spans {log_prob.shape[1]} datapoints, but its '{DATA_PLATE}' plate has "
            f"{frame.size}: the plate must run over the rows of x"
        )
    return log_prob
