"""The importance-weighted bound as a training objective (Burda et al. 2016).

L_K(x) = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)], z_k ~ q(z|x), summed over datapoints. Without
subsampling it is Pyro's ``RenyiELBO(alpha=0)``, with two differences that matter for minibatch
training:

* the log-sum-exp over particles is taken per datapoint on UNSCALED log weights, and the data
  plate's subsampling factor N/B multiplies the result afterwards. ``RenyiELBO`` applies every
  site's scale, N/B included, before the log-sum-exp, which for a minibatch of B out of N
  datapoints sharpens the particle weights to softmax((N/B) log w): another objective;
* ``differentiable_loss`` stays on the device (no ``.item()`` per step).

``IWAE_ELBO`` therefore derives from :class:`pyro.infer.ELBO`, not from ``RenyiELBO``: its three
entry points, ``differentiable_loss`` (what :class:`~pyro_vae.infer.svi.DeviceSVI` calls),
``loss_and_grads`` (what Pyro's stock :class:`~pyro.infer.SVI` calls) and ``loss``, are all the one
computation below, so every trainer optimises the same bound.

A KL weight from ``poutine.scale`` (beta) is kept:
log w = log p(x|z) + beta (log p(z) - log q(z|x)).
"""

from __future__ import annotations

import math

import torch
from pyro.infer import ELBO
from pyro.util import warn_if_nan

from pyro_vae.infer.plates import data_plate
from pyro_vae.infer.traces import log_weights_from_traces, vectorized_traces


class IWAE_ELBO(ELBO):
    """Negative IWAE bound with ``num_particles`` = K, vectorised; needs a reparameterised guide.

    ``loss`` (a float, no gradients), ``loss_and_grads`` (a float; back-propagates the loss, as
    Pyro's ELBOs do, for :class:`pyro.infer.SVI`) and ``differentiable_loss`` (a device tensor)
    return the same value for the same draws. Each raises ``NotImplementedError`` for a guide
    with a sample site that has no ``rsample``.

    Parameters
    ----------
    num_particles : int
        K, importance samples per datapoint (K = 1 is the ELBO).
    max_plate_nesting : int
        Plate dimensions of the model (1 for a VAE's data plate).
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def _get_trace(self, model, guide, args, kwargs):
        """One guide trace and the model replayed against it: a single particle, as in
        :func:`~pyro_vae.infer.traces.vectorized_traces` with K = 1."""
        return vectorized_traces(model, guide, 1, self.max_plate_nesting, *args, **kwargs)

    def _get_traces(self, model, guide, args, kwargs):
        """The K particles as one vectorised pair of traces, K in a plate left of all others."""
        yield vectorized_traces(
            model, guide, self.num_particles, self.max_plate_nesting, *args, **kwargs
        )

    def _loss_and_traces(self, model, guide, args, kwargs):
        """The negative bound as a tensor (differentiable if gradients are enabled), with the
        traces it was computed from."""
        k = self.num_particles
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"IWAE_ELBO needs reparameterised guide sites; '{name}' is not"
                )
        lw = log_weights_from_traces(
            model_trace, guide_trace, self.max_plate_nesting, keep_scale=True
        )
        bound = torch.logsumexp(lw, dim=0) - math.log(k)  # (B,)
        loss = -bound.sum() * _subsample_factor(model_trace)
        return loss, model_trace, guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative bound as a device tensor with its autograd graph (no host sync)."""
        loss, _, _ = self._loss_and_traces(model, guide, args, kwargs)
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative bound as a float, computed without gradients."""
        with torch.no_grad():
            loss, _, _ = self._loss_and_traces(model, guide, args, kwargs)
        value = loss.item()
        warn_if_nan(value, "loss")
        return value

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative bound as a float, after back-propagating it into the parameters.

        As in Pyro's ELBOs, ``backward`` runs only when the traces hold parameters and the loss
        requires gradients. For a reparameterised guide the loss is its own surrogate.
        """
        loss, model_trace, guide_trace = self._loss_and_traces(model, guide, args, kwargs)
        trainable_params = any(
            site["type"] == "param"
            for trace in (model_trace, guide_trace)
            for site in trace.nodes.values()
        )
        if trainable_params and loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        value = loss.detach().item()
        warn_if_nan(value, "loss")
        return value


def _subsample_factor(trace) -> float:
    plate = data_plate(trace)
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for frame in site["cond_indep_stack"]:
                if frame.name == plate and frame.full_size is not None:
                    return frame.full_size / frame.size
    return 1.0
