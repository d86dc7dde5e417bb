"""Likelihoods p(x|z). Each maps the decoder's output to a distribution over a flattened x.

A likelihood declares the data it accepts (:class:`Support`) and checks data against it, so that a
log-likelihood is never silently improper (e.g. a Bernoulli scoring grey pixels). Training and
evaluation score x with the same likelihood object.

To add a likelihood, subclass :class:`Likelihood`: set ``support`` and ``params_per_dim`` (how many
decoder outputs it needs per data dimension), implement ``forward(h)``, and register its name in
:mod:`pyro_vae.registry`.
"""

from __future__ import annotations

import enum

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import DataError


class Support(enum.Enum):
    """The values a likelihood assigns probability (or density) to."""

    BINARY = "binary values {0, 1}"
    REAL = "real values"


class Likelihood(nn.Module):
    """Base class: ``forward(h)`` returns p(x|z) with event dimension 1 over the flattened data.

    ``h`` is the decoder output of shape ``(..., params_per_dim * data_dim)``.
    """

    support: Support = Support.REAL
    params_per_dim: int = 1

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z): a "mean image", not a sample."""
        return self(h).mean

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` if ``x`` lies outside this likelihood's support."""
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"{what} contain {bad} NaN or infinite values")
        if self.support is Support.BINARY and not ((x == 0) | (x == 1)).all():
            raise DataError(
                f"the {self.name} likelihood needs binary data (0/1), but {what} hold values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}] that are not 0 or 1; "
                "binarise them (--binarize dynamic or --binarize static) or choose a likelihood "
                "for continuous data (--likelihood gaussian)"
            )

    @property
    def name(self) -> str:
        return type(self).__name__


class Bernoulli(Likelihood):
    """x_i ~ Bernoulli(sigmoid(h_i)), for binary data."""

    support = Support.BINARY

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=h).to_event(1)


class Gaussian(Likelihood):
    """x ~ N(h, scale^2 I) with a fixed scale.

    The seeds' "MSE + lambda * KL" objective is this likelihood with ``scale**2 = lambda / 2``
    (for a summed squared error), including the constant ``-(D/2) ln(2 pi scale^2)`` that a reported
    log-likelihood must keep.
    """

    support = Support.REAL

    def __init__(self, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Gaussian scale must be positive, got {scale}")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(h, self.scale).to_event(1)


class LearnedGaussian(Likelihood):
    """x ~ N(mu(z), diag sigma(z)^2) with ``sigma = floor + softplus(raw)``: the seeds' model.

    The floor keeps the density bounded (Mattei & Frellsen 2018): without it the likelihood of
    continuous data can grow without limit as sigma -> 0.
    """

    support = Support.REAL
    params_per_dim = 2

    def __init__(self, floor: float):
        super().__init__()
        if not floor > 0:
            raise ValueError(f"scale floor must be positive, got {floor}")
        self.floor = float(floor)

    def scale(self, h: torch.Tensor) -> torch.Tensor:
        return self.floor + F.softplus(h.chunk(2, dim=-1)[1])

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = h.chunk(2, dim=-1)
        return dist.Normal(loc, self.floor + F.softplus(raw)).to_event(1)
