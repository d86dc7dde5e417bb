"""Priors p(z). Each is a small module whose ``forward()`` returns a distribution over z.

To add a prior, subclass :class:`Prior`, implement ``forward`` returning a distribution with
``event_shape == (latent_dim,)`` and empty batch shape (the data plate broadcasts it), and register
its name in :mod:`pyro_vae.registry`. Learnable parameters are registered with Pyro by the VAE.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class Prior(nn.Module):
    """Base class: a distribution over z in R^latent_dim, with event dimension 1."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
