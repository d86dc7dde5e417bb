"""Bidirectional Monte Carlo (BDMC): a sandwich around log p(x) on data simulated from the model.

On data simulated from the model, z ~ p(z), x ~ p(x|z), each z is an exact draw from the posterior
p(z|x) of its x. Forward AIS from f_0 gives a stochastic lower bound of log p(x)
(:func:`~pyro_vae.infer.ais.ais_log_likelihood`); reverse AIS started from the exact z gives a
stochastic upper bound (:func:`~pyro_vae.infer.ais.reverse_ais_log_likelihood`). Their gap, per
datapoint and on average, bounds the error of AIS with those settings on this model, and of any
other lower bound (IWAE) that sits below the upper one (Grosse, Ghahramani & Adams 2015; Wu et al.
2017). The bound holds for simulated data only: on real data no exact posterior draw exists.

References
----------
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.infer.ais import AISResult, ais_log_likelihood, reverse_ais_log_likelihood
from pyro_vae.infer.latent import simulate


@dataclass(frozen=True)
class BDMCResult:
    """The sandwich on simulated data.

    Attributes
    ----------
    x : Tensor
        The simulated data, one row per datapoint.
    latents : dict of str to Tensor
        The latent values each row was simulated from (exact posterior draws).
    lower, upper : AISResult
        Forward AIS (stochastic lower bound) and reverse AIS (stochastic upper bound) of
        log p(x), per datapoint.
    """

    x: torch.Tensor
    latents: dict[str, torch.Tensor]
    lower: AISResult
    upper: AISResult

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per datapoint, in nats (positive in expectation)."""
        return self.upper.log_px - self.lower.log_px

    @property
    def mean_gap(self) -> float:
        """The gap of the means: upper and lower bounds of the mean log p(x) over datapoints."""
        return float(self.upper.log_px.mean() - self.lower.log_px.mean())


def bdmc(
    model: Callable,
    guide: Callable,
    x_like: torch.Tensor,
    *,
    progress: bool | str | None = False,
    **settings,
) -> BDMCResult:
    """Simulate ``len(x_like)`` datapoints from the model and sandwich their log p(x).

    ``x_like`` gives only the shape, device and dtype of the data (see
    :func:`~pyro_vae.infer.latent.simulate`); ``settings`` (``num_chains``, ``num_steps``,
    ``num_leapfrog``, ``start``, ...) are those of :func:`~pyro_vae.infer.ais.ais_log_likelihood`
    and apply to both directions.
    """
    x, latents = simulate(model, x_like)
    lower = ais_log_likelihood(model, guide, x, progress=progress, **settings)
    upper = reverse_ais_log_likelihood(model, guide, x, latents, progress=progress, **settings)
    return BDMCResult(x=x, latents=latents, lower=lower, upper=upper)
