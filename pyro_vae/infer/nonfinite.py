"""The one non-finite policy of the estimators: which datapoints, which site, whose fault.

An estimate of log p(x) may be -inf (every weight zero: a legitimate value of the bound) but never
NaN or +inf. The estimators that score a Pyro model/guide pair (importance sampling from the
guide or the prior, AIS, and auto's stages through them) check their per-datapoint estimates
once, at the end, with :func:`raise_if_not_finite`; refined proposals, scored through a generic
log target without the data, raise the same error naming the datapoints only
(:func:`~pyro_vae.infer.refine.proposal_log_likelihood`). The check gives the datapoints
affected, the first guide or model site whose log-density is not finite when the first of them
is traced again, and the cause: the data (NaN, infinite, or unscaled values) or the model.
"""

from __future__ import annotations

import math

import pyro
import torch

from pyro_vae.errors import NonFiniteEstimate
from pyro_vae.infer.plates import data_plate
from pyro_vae.infer.support import rows_text
from pyro_vae.infer.traces import compute_log_prob, per_datapoint_log_prob, vectorized_traces

# A non-finite estimate is blamed on the data (cause="data") when they hold NaN or infinite
# values, or values larger in magnitude than this: unscaled data (e.g. raw measurements near 1e4)
# that networks built for standardised inputs (values near 1) overflow on. Pixels in [0, 255]
# stay below it.
UNSCALED_DATA_ABS_MAX = 1e3


def not_finite(t: torch.Tensor) -> torch.Tensor:
    """NaN or +inf: values no estimate may take (-inf is a zero weight)."""
    return torch.isnan(t) | (t == math.inf)


def raise_if_not_finite(
    log_px: torch.Tensor,
    x: torch.Tensor,
    *,
    elbo: torch.Tensor | None = None,
    model=None,
    guide=None,
    particles: int = 1,
    max_plate_nesting: int = 1,
    what: str = "the estimate of log p(x)",
    chained: BaseException | None = None,
) -> None:
    """Raise :class:`~pyro_vae.errors.NonFiniteEstimate` if some ``log_px`` (or ``elbo``) of the
    rows of ``x`` is NaN or +inf: the estimators' one check, made once after their last pass.

    The error lists the datapoints; ``site`` names the first guide or model site whose
    log-density is not finite when the first of them is traced again with ``particles`` draws
    (when ``model`` and ``guide`` are given); ``cause`` is ``"data"`` when ``x`` holds NaN or
    infinite values or values larger in magnitude than :data:`UNSCALED_DATA_ABS_MAX` (unscaled
    data, to standardise), ``"model"`` otherwise. ``chained`` (Pyro's validation error, where it
    refused a non-finite value) becomes the error's cause, and is raised as it is when every
    estimate is finite.
    """
    bad = not_finite(log_px) if elbo is None else not_finite(log_px) | not_finite(elbo)
    if not bool(bad.any()):  # the one host sync of the check
        if chained is not None:  # not expected: NaN or +inf weights give such estimates
            raise chained
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
    site = None
    if model is not None and guide is not None:
        with torch.no_grad():
            site = _non_finite_site(
                model, guide, x[first : first + 1], particles, max_plate_nesting
            )
    where = (
        f"; the first non-finite log-density, tracing row {first} again, is at {site}"
        if site is not None
        else ""
    )
    message = (
        f"{what} is NaN or +inf for {len(rows)} of {n} datapoints ({rows_text(rows)}){where}; {why}"
    )
    error = NonFiniteEstimate(
        message, datapoints=rows, site=site, cause=cause, data_abs_max=data_abs_max
    )
    raise error from chained


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
                    bad = ~torch.isfinite(lp) if program == "guide" else not_finite(lp)
                    if bool(bad.any()):
                        return f"{program} site '{name}'"
        except (ValueError, RuntimeError):  # a diagnosis only: it must not hide the estimate's
            return None
    return None
