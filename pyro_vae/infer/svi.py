"""A Pyro SVI step that does not wait for the device.

:class:`DeviceSVI` works for any Pyro model/guide pair; the VAE trainer built on it is
:class:`pyro_vae.training.Trainer`.
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose ``step`` returns the loss as a detached device tensor.

    Works with any Pyro optimizer; :class:`~pyro_vae.infer.optim.JointAdam` steps all parameters
    in one call.

    Pyro's ``SVI.step`` returns a Python float, which waits for the device every step. This step
    computes ``loss.differentiable_loss`` (see :mod:`pyro_vae.infer.elbo` for ELBOs that need no
    sync), back-propagates, and applies the Pyro optimizer to the parameters the step touched.
    """

    def __init__(self, model, guide, optim, loss: pyro.infer.ELBO, **kwargs):
        if not hasattr(loss, "differentiable_loss"):
            raise TypeError("DeviceSVI needs an ELBO object with differentiable_loss")
        super().__init__(model, guide, optim, loss, **kwargs)
        self.elbo = loss

    def step(self, *args, **kwargs) -> torch.Tensor:
        with poutine.trace(param_only=True) as param_capture:
            loss = self.differentiable_loss(*args, **kwargs)
            loss.backward()
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        self.optim(params)
        for p in params:
            p.grad = None  # the next backward writes fresh gradients: no zeroing kernels
        return loss.detach()

    def differentiable_loss(self, *args, **kwargs) -> torch.Tensor:
        """The loss the step back-propagates (subclasses change what it is, not the step)."""
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
