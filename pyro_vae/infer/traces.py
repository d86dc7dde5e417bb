"""Traces of a model/guide pair with a plate of draws, and their per-datapoint log-densities:
what every estimator of log p(x) computes its log weights from."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.infer.plates import DATA_PLATE, PARTICLE_PLATE, data_frame, data_plate, plate_nesting
from pyro_vae.infer.support import check_observed_support


def vectorized_traces(model, guide, num_particles: int, max_plate_nesting: int, *args, **kwargs):
    """Guide and replayed model traces with ``num_particles`` draws in a plate left of all others.

    Subsample sites are pruned; gradients flow if enabled.
    """
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
        return traces(model, guide, *args, **kwargs)


def traces(model, guide, *args, **kwargs):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def guess_max_plate_nesting(model, guide, x) -> int:
    """Plate depth from one trace, drawn without moving the caller's random number streams."""
    devices = [x.device] if x.device.type == "cuda" else []
    # Unvalidated: it needs only the plates; the first pass of each block is validated.
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        pair = traces(model, guide, x)
    return plate_nesting(*pair)


def log_weights(
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


def _scale_without_subsampling(site: dict, plate: str):
    frame = data_frame("", site, plate)
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
    frame = data_frame(name, site, plate)
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
