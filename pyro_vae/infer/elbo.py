"""Pyro's ELBOs with a ``differentiable_loss`` that stays on the device.

Pyro's :class:`~pyro.infer.Trace_ELBO` and :class:`~pyro.infer.TraceMeanField_ELBO` compute a float
copy of the loss for every particle (``torch_item``), which on a GPU forces a host synchronisation
in every training step. The subclasses here compute the same differentiable loss from the same
traces without that copy, so a training step can be queued without waiting for the device. Their
values equal Pyro's (``tests/infer/test_elbo.py`` checks this site by site on the same traces).
"""

from __future__ import annotations

import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO


class _DeviceLoss:
    """Mixin: ``differentiable_loss`` as the mean of ``_device_loss_particle`` over particles."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._device_loss_particle(model_trace, guide_trace)
        return loss / self.num_particles


class DeviceTrace_ELBO(_DeviceLoss, Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` whose differentiable loss needs no host sync.

    For a fully reparameterised guide the surrogate ELBO equals the ELBO, so the loss is
    ``-(sum_model log p - sum_guide log q)``. Guides with non-reparameterised sites fall back to
    Pyro's computation (correct, with its host sync).
    """

    def _device_loss_particle(self, model_trace, guide_trace) -> torch.Tensor:
        elbo = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                if not is_identically_zero(score_function_term):
                    loss, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
                    return loss + (surrogate - surrogate.detach())
                if not is_identically_zero(entropy_term):
                    elbo = elbo - entropy_term.sum()
        return -elbo


class DeviceTraceMeanField_ELBO(_DeviceLoss, TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` whose differentiable loss needs no host sync.

    Uses the analytic KL(q(z|x) || p(z)) where PyTorch/Pyro know it (e.g. diagonal Gaussians:
    ``1/2 sum (sigma^2 + mu^2 - 1 - ln sigma^2)``) and a one-sample estimate ``log q - log p``
    otherwise, exactly as Pyro does.
    """

    def _device_loss_particle(self, model_trace, guide_trace) -> torch.Tensor:
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                entropy_term = guide_site["score_parts"].entropy_term
                elbo = elbo + model_site["log_prob_sum"] - entropy_term.sum()
            else:
                kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
                elbo = elbo - kl.sum()
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()  # auxiliary sites
        return -elbo
