"""Guides q(z|x): amortised encoders whose ``forward(x)`` returns a distribution over z.

To add a guide family, subclass :class:`Encoder` and implement ``forward`` returning a
distribution with ``event_shape == (latent_dim,)`` and batch shape ``x.shape[:-1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.nets import MLP


class Encoder(nn.Module):
    """Base class for amortised guides."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class DiagonalNormalEncoder(Encoder):
    """q(z|x) = N(mu(x), diag sigma^2(x)), with ``sigma = exp(0.5 * log_var)``.

    One MLP maps x to ``(mu, log_var)``; z = mu + sigma * eps is reparameterised by Pyro.
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int]):
        super().__init__(latent_dim)
        self.net = MLP([data_dim, *hidden, 2 * latent_dim])

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's outputs ``(mu, log_var)``, each ``x.shape[:-1] + (latent_dim,)``."""
        loc, log_var = self.net(x).chunk(2, dim=-1)
        return loc, log_var

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, log_var = self.params(x)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
