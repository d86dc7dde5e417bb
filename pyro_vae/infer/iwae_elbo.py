"""The importance-weighted bound as a training objective (Burda et al. 2016).

L_K(x) = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)], z_k ~ q(z|x), summed over datapoints. It is
Pyro's ``RenyiELBO(alpha=0)``, with two differences that matter for minibatch training:

* the log-sum-exp over particles is taken per datapoint on UNSCALED log weights, and the data
  plate's subsampling factor N/B multiplies the result afterwards. ``RenyiELBO`` applies every
  site's scale, N/B included, before the log-sum-exp, which for a minibatch of B out of N
  datapoints sharpens the particle weights to softmax((N/B) log w): another objective;
* the loss stays on the device (no ``.item()`` per step).

A KL weight from ``poutine.scale`` (beta) is kept:
log w = log p(x|z) + beta (log p(z) - log q(z|x)).
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO

from pyro_vae.infer.importance import log_weights_from_traces, vectorized_traces


class IWAE_ELBO(RenyiELBO):
    """Negative IWAE bound with ``num_particles`` = K, vectorised; needs a reparameterised guide.

    Parameters
    ----------
    num_particles : int
        K, importance samples per datapoint (K = 1 is the ELBO).
    max_plate_nesting : int
        Plate dimensions of the model (1 for a VAE's data plate).
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        k = self.num_particles
        model_trace, guide_trace = vectorized_traces(
            model, guide, k, self.max_plate_nesting, *args, **kwargs
        )
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"IWAE_ELBO needs reparameterised guide sites; '{name}' is not"
                )
        lw = log_weights_from_traces(
            model_trace, guide_trace, self.max_plate_nesting, keep_scale=True
        )
        bound = torch.logsumexp(lw, dim=0) - math.log(k)  # (B,)
        return -bound.sum() * _subsample_factor(model_trace)


def _subsample_factor(trace) -> float:
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for frame in site["cond_indep_stack"]:
                if frame.name == "data" and frame.full_size is not None:
                    return frame.full_size / frame.size
    return 1.0
