"""The latent variables of a Pyro model/guide pair as one unconstrained vector per datapoint.

Samplers and optimisers that work on one datapoint's posterior at a time (annealed importance
sampling, refined proposals) need what Pyro's HMC needs for a whole model: the latent sample sites
flattened into a vector, mapped to unconstrained space with ``biject_to(support)``, and the
log-density there. :class:`LatentSpace` does that per datapoint: for ``u`` of shape ``(S, N, D)``
(S draws for each of N datapoints, D unconstrained latent coordinates per datapoint) it returns
per-datapoint log-densities of shape ``(S, N)``, with the log-Jacobian of the map from ``u`` to the
constrained latents, so that

.. math:: \\log p(x_n, z(u)) + \\log |\\det \\partial z / \\partial u|

is the unnormalised log posterior density of datapoint n in u-space. Datapoints stay independent:
row n depends only on ``u[:, n]`` and ``x[n]``.

The programs follow the convention of :func:`~pyro_vae.infer.importance_log_likelihood`: every
sample site lies in one plate over the rows of ``x`` (``pyro.plate("data")``; found by structure,
:func:`~pyro_vae.infer.plates.data_plate`). Site scales (a KL weight from
``poutine.scale``) are ignored, masks are applied: the densities are the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to, constraints

from pyro_vae.infer.plates import LATENT_DRAWS_PLATE as _PARTICLE_PLATE
from pyro_vae.infer.plates import data_plate, plate_nesting
from pyro_vae.infer.support import check_observed_support
from pyro_vae.infer.traces import (
    compute_log_prob,
    guess_max_plate_nesting,
    per_datapoint_log_prob,
    vectorized_traces,
)


def bijectable(support: constraints.Constraint) -> constraints.Constraint:
    """The constraint ``biject_to`` maps onto for a site of support ``support``.

    A wrapper that changes only how a value is checked, not the set of values, is unwrapped to
    its base: torch's ``MixtureSameFamilyConstraint`` (the support of a ``MixtureSameFamily``,
    checked against every component) is the components' support. ``independent`` constraints
    keep their event dimensions, around their unwrapped base.
    """
    if isinstance(support, constraints.independent):
        base = bijectable(support.base_constraint)
        if base is support.base_constraint:
            return support
        return constraints.independent(base, support.reinterpreted_batch_ndims)
    base = getattr(support, "base_constraint", None)
    if isinstance(base, constraints.Constraint) and base.event_dim == support.event_dim:
        return bijectable(base)
    return support


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site: where its datapoint axis is and how it maps to u-space.

    ``shape`` is the site's value shape with the draw axis first and the datapoint axis moved to
    position 1, without those two: ``value.movedim(data_axis, 1).shape[2:]``.
    """

    name: str
    data_axis: int
    shape: tuple[int, ...]
    transform: torch.distributions.Transform
    identity: bool

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Joint:
    """Per-datapoint log-densities at a batch of points u, each of shape ``(S, N)``.

    ``log_prior`` is log p(z), ``log_lik`` log p(x|z) (observed sites), ``log_det`` the
    log-Jacobian log|dz/du|; ``log_guide`` is log q(z|x), when it was asked for (else None).
    """

    log_prior: torch.Tensor
    log_lik: torch.Tensor
    log_det: torch.Tensor
    log_guide: torch.Tensor | None = None

    @property
    def log_target(self) -> torch.Tensor:
        """log p(x, z) + log|dz/du|: the unnormalised log posterior density in u-space."""
        return self.log_prior + self.log_lik + self.log_det


class LatentSpace:
    """Latent sites of ``model``/``guide`` on data ``x``, flattened per datapoint.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(x)`` and ``guide(x)``; every sample site lies in one
        plate over the rows of ``x`` (:func:`~pyro_vae.infer.plates.data_plate`).
    x : Tensor
        The data, first dimension indexing datapoints (N of them).
    max_plate_nesting : int, optional
        Found from one trace when not given.

    Notes
    -----
    Each latent site's unconstrained coordinates come from ``biject_to`` of the support of the
    MODEL's distribution at that site (as in Pyro's HMC; a mixture's support is its components',
    :func:`bijectable`); real-valued latents are used as they are.
    The flat vector of a datapoint concatenates its sites in the model's order.
    """

    def __init__(
        self, model: Callable, guide: Callable, x: torch.Tensor, *, max_plate_nesting=None
    ):
        if x.shape[0] < 1:
            raise ValueError("x holds no datapoints")
        self.model, self.guide, self.x = model, guide, x
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, guide, x)
        self.max_plate_nesting = max_plate_nesting
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            with torch.no_grad():
                model_trace, guide_trace = vectorized_traces(model, guide, 1, max_plate_nesting, x)
        self.data_plate = data_plate(model_trace, guide_trace)
        self.sites = tuple(self._latent_sites(model_trace))
        if not self.sites:
            raise ValueError("the model has no latent sample sites")
        missing = [s.name for s in self.sites if s.name not in guide_trace.nodes]
        if missing:
            raise ValueError(f"the guide has no sample site for the model's latent {missing}")
        self.names = frozenset(s.name for s in self.sites)
        extra = [
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and name not in self.names and not name.startswith("_")
        ]
        if extra:
            raise ValueError(
                f"the guide samples {extra}, which the model does not: a per-datapoint density "
                "of the latents needs the guide's sample sites to be the model's latents"
            )
        self.dim = sum(s.size for s in self.sites)
        self.dtype = guide_trace.nodes[self.sites[0].name]["value"].dtype

    def _latent_sites(self, trace):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            plate = self.data_plate
            frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
            if frame is None:  # pragma: no cover - data_plate found it in every site
                raise ValueError(
                    f"latent site '{name}' is outside pyro.plate('{plate}'): a per-datapoint "
                    "posterior needs every latent site to belong to one datapoint"
                )
            fn, value = site["fn"], site["value"]
            batch_dims = value.dim() - fn.event_dim
            if batch_dims != self.max_plate_nesting + 1:
                raise ValueError(
                    f"latent site '{name}' has value of shape {tuple(value.shape)}: expected "
                    f"{self.max_plate_nesting + 1} batch dimensions (draws and plates)"
                )
            data_axis = batch_dims + frame.dim
            support = bijectable(fn.support)
            base = support
            while isinstance(base, constraints.independent):
                base = base.base_constraint
            identity = type(base) is type(constraints.real)
            transform = biject_to(support)
            # the unconstrained value's shape (a simplex of k loses a coordinate, for example)
            free = value if identity else transform.inv(value)
            if free.dim() != value.dim():
                raise ValueError(
                    f"latent site '{name}' has support {support}, whose unconstrained form "
                    "changes its number of dimensions; it is not supported"
                )
            moved = free.movedim(data_axis, 1).shape[2:]
            yield LatentSite(name, data_axis, tuple(moved), transform, identity)

    @property
    def num_data(self) -> int:
        return self.x.shape[0]

    # --- between flat u and site values -------------------------------------------------------

    def unflatten(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unconstrained site values from ``u`` of shape ``(S, N, D)``."""
        if u.dim() != 3 or u.shape[2] != self.dim:
            raise ValueError(f"expected u of shape (S, N, {self.dim}), got {tuple(u.shape)}")
        out, start = {}, 0
        for site in self.sites:
            part = u[..., start : start + site.size]
            start += site.size
            part = part.reshape(u.shape[0], u.shape[1], *site.shape)
            out[site.name] = part.movedim(1, site.data_axis)
        return out

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(S, N, D)`` from unconstrained site values (inverse of :meth:`unflatten`)."""
        parts = []
        for site in self.sites:
            v = values[site.name].movedim(site.data_axis, 1)
            parts.append(v.reshape(v.shape[0], v.shape[1], -1))
        return torch.cat(parts, dim=-1)

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Constrained site values z(u) and ``log|dz/du|`` of shape ``(S, N)``."""
        free = self.unflatten(u)
        values = {}
        log_det = torch.zeros(u.shape[0], u.shape[1], dtype=u.dtype, device=u.device)
        for site in self.sites:
            v = free[site.name]
            if site.identity:
                values[site.name] = v
                continue
            z = site.transform(v)
            values[site.name] = z
            ladj = site.transform.log_abs_det_jacobian(v, z)
            batch_dims = self.max_plate_nesting + 1
            while ladj.dim() > batch_dims:
                ladj = ladj.sum(-1)
            ladj = ladj.expand(v.shape[:batch_dims]).movedim(site.data_axis, 1)
            log_det = log_det + ladj.reshape(u.shape[0], u.shape[1], -1).sum(-1)
        return values, log_det

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat u ``(S, N, D)`` from constrained site values."""
        free = {}
        for site in self.sites:
            v = values[site.name]
            free[site.name] = v if site.identity else site.transform.inv(v)
        return self.flatten(free)

    # --- densities ----------------------------------------------------------------------------

    def _x(self, rows: torch.Tensor | None) -> torch.Tensor:
        return self.x if rows is None else self.x[rows]

    def joint(
        self, u: torch.Tensor, rows: torch.Tensor | None = None, *, guide: bool = False
    ) -> Joint:
        """Log-densities at ``u`` ``(S, N', D)``, for the datapoints ``rows`` (all when None).

        Differentiable with respect to ``u`` when gradients are enabled. With ``guide``, also
        log q(z|x) of the guide at the same z.
        """
        x = self._x(rows)
        if u.shape[1] != x.shape[0]:
            raise ValueError(f"u holds {u.shape[1]} datapoints, the data {x.shape[0]}")
        values, log_det = self.constrain(u)
        with pyro.plate(_PARTICLE_PLATE, u.shape[0], dim=-self.max_plate_nesting - 1):
            model_trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(x)
            guide_trace = None
            if guide:
                guide_trace = poutine.trace(poutine.condition(self.guide, data=values)).get_trace(x)
        log_prior, log_lik = self._sum_sites(prune_subsample_sites(model_trace), u)
        log_guide = None
        if guide_trace is not None:
            log_guide, _ = self._sum_sites(prune_subsample_sites(guide_trace), u)
        return Joint(log_prior, log_lik, log_det, log_guide)

    def _sum_sites(self, trace, u) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, observed) per-datapoint log-probabilities of a trace, each ``(S, N)``."""
        shape = (u.shape[0], u.shape[1])
        compute_log_prob(trace)
        latent = torch.zeros(shape, dtype=u.dtype, device=u.device)
        observed = torch.zeros(shape, dtype=u.dtype, device=u.device)
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = per_datapoint_log_prob(name, site, self.max_plate_nesting, self.data_plate).expand(
                shape
            )
            if site["is_observed"] and name not in self.names:
                observed = observed + lp
            else:
                latent = latent + lp
        return latent, observed

    def log_target(self, u: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x, z(u)) + log|dz/du|``, shape ``(S, N')``: the unnormalised log posterior
        density in u-space (differentiable)."""
        return self.joint(u, rows).log_target

    # --- draws --------------------------------------------------------------------------------

    def sample_guide(self, num: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``num`` draws of u per datapoint from the guide q(z|x): ``(num, N', D)``, no grad."""
        x = self._x(rows)
        with torch.no_grad(), pyro.validation_enabled(False):
            with pyro.plate(_PARTICLE_PLATE, num, dim=-self.max_plate_nesting - 1):
                trace = poutine.trace(self.guide).get_trace(x)
        return self.unconstrain({s.name: trace.nodes[s.name]["value"] for s in self.sites})

    def sample_prior(self, num: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``num`` draws of u per datapoint from the prior p(z): ``(num, N', D)``, no grad."""
        x = self._x(rows)
        with torch.no_grad(), pyro.validation_enabled(False):
            with pyro.plate(_PARTICLE_PLATE, num, dim=-self.max_plate_nesting - 1):
                trace = poutine.trace(self.model).get_trace(x)
        return self.unconstrain({s.name: trace.nodes[s.name]["value"] for s in self.sites})


def simulate(
    model: Callable, x_like: torch.Tensor, *, max_plate_nesting: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Data simulated from the model: z ~ p(z), x ~ p(x|z), one per row of ``x_like``.

    ``x_like`` only gives the shape (and device and dtype) of the data: its values are ignored
    (the observed sites are sampled, ``poutine.uncondition``). Returns the simulated ``x`` (the
    value of the model's one observed site) and the latent values, each an exact draw from the
    posterior p(z | x) of its row, with one batch dimension per plate of the model
    (``max_plate_nesting`` of them, of size 1 for plates the site is not in) before its event
    dimensions: the layout :func:`~pyro_vae.infer.ais.reverse_ais_log_likelihood` takes.
    """
    with torch.no_grad(), pyro.validation_enabled(False):
        if max_plate_nesting is None:
            probe = poutine.trace(poutine.uncondition(model)).get_trace(x_like)
            max_plate_nesting = plate_nesting(prune_subsample_sites(probe))
        # under a plate of one draw left of the model's plates, every latent gets all
        # max_plate_nesting batch dimensions (those of plates it is not in have size 1), the
        # layout LatentSpace and reverse AIS expect once the draw dimension is removed
        with pyro.plate(_PARTICLE_PLATE, 1, dim=-max_plate_nesting - 1):
            trace = poutine.trace(poutine.uncondition(model)).get_trace(x_like)
        trace = prune_subsample_sites(trace)
    observed = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("was_observed")
    ]
    if len(observed) != 1:
        raise ValueError(f"simulation needs a model with one observed site, found {observed}")
    latents = {
        name: site["value"].squeeze(0)
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["infer"].get("was_observed")
        and not site["is_observed"]
    }
    x = trace.nodes[observed[0]]["value"]
    return x.reshape(x_like.shape).to(x_like.dtype), latents


def check_data(model, guide, x, max_plate_nesting: int, rows: tuple[int, int] = (0, 0)) -> None:
    """Raise :class:`~pyro_vae.errors.UnsupportedDataError` if ``x`` lies outside the support of
    an observed site of ``model`` (one trace, whose draws are discarded; the caller's random
    streams are left as they were). ``rows`` as for
    :func:`~pyro_vae.infer.support.check_observed_support`."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model_trace, _ = vectorized_traces(model, guide, 1, max_plate_nesting, x)
    check_observed_support(model_trace, rows)
