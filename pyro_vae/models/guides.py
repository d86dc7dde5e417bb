"""Guides q(z|x): amortised encoders whose ``forward(x)`` returns a distribution over z.

To add a guide family, subclass :class:`Encoder`, implement ``forward`` returning a
distribution with ``event_shape == (latent_dim,)`` and batch shape ``x.shape[:-1]``, declare its
hyperparameters in a nested ``Params`` (:mod:`pyro_vae.pieces`), and register its name in
:mod:`pyro_vae.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.nets import MLPNetworks, Network, Networks
from pyro_vae.options import option
from pyro_vae.pieces import BuildContext, Piece, PieceParams, params_dict


class Encoder(Piece, nn.Module):
    """Base class for amortised guides.

    Built as ``cls(data_dim, latent_dim, hidden, **params, networks=context.networks)`` unless
    a subclass overrides :meth:`build`. A guide's network, ``self.net``, comes from
    :meth:`network`: made by the network piece (:class:`~pyro_vae.models.nets.Networks`), or an
    MLP of widths ``hidden`` when there is none.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    @classmethod
    def build(cls, params: PieceParams, context: BuildContext) -> Encoder:
        return cls(
            context.data_dim,
            context.latent_dim,
            context.hidden,
            **params_dict(params),
            networks=context.networks,
        )

    @classmethod
    def check_fit(cls, params: PieceParams, latent_dim: int) -> None:
        """Raise :class:`~pyro_vae.errors.ConfigError` when the hyperparameters ``params`` do not
        fit a latent space of ``latent_dim`` (checked before any data are loaded); every
        ``params`` fits by default."""

    @staticmethod
    def network(
        networks: Networks | None,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        out_features: int,
    ) -> Network:
        """The encoder network from flattened data to ``out_features``."""
        if networks is None:
            networks = MLPNetworks(data_dim, latent_dim, hidden)
        return networks.encoder(out_features)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class DiagonalNormalEncoder(Encoder):
    """q(z|x) = N(mu(x), diag sigma^2(x)), with ``sigma = exp(0.5 * log_var)``.

    One MLP maps x to ``(mu, log_var)``; z = mu + sigma * eps is reparameterised by Pyro.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        *,
        networks: Networks | None = None,
    ):
        super().__init__(latent_dim)
        self.net = self.network(networks, data_dim, latent_dim, hidden, 2 * latent_dim)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's outputs ``(mu, log_var)``, each ``x.shape[:-1] + (latent_dim,)``."""
        loc, log_var = self.net(x).chunk(2, dim=-1)
        return loc, log_var

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, log_var = self.params(x)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)


class FullCovarianceEncoder(Encoder):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with a lower-triangular Cholesky factor from the encoder.

    The diagonal of L is ``exp(0.5 * log_var)``; the strictly lower part is unconstrained. This
    family contains the exact posterior of linear-Gaussian models such as probabilistic PCA.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        *,
        networks: Networks | None = None,
    ):
        super().__init__(latent_dim)
        self.num_offdiag = latent_dim * (latent_dim - 1) // 2
        out = 2 * latent_dim + self.num_offdiag
        self.net = self.network(networks, data_dim, latent_dim, hidden, out)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        d = self.latent_dim
        h = self.net(x)
        loc, log_var, offdiag = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        lower = offdiag.new_zeros(*offdiag.shape[:-1], d, d)
        lower[..., self.rows, self.cols] = offdiag
        tril = lower + torch.diag_embed(torch.exp(0.5 * log_var))
        return dist.MultivariateNormal(loc, scale_tril=tril)


# Why a covariance factor of rank above the latent dimension is refused (its capacitance
# matrix, rank x rank per datapoint, only makes every step slower).
_RANK_ABOVE_DIM = (
    "a covariance factor of rank above the latent dimension adds nothing (rank {latent_dim} "
    "already gives every covariance) and makes each step slower"
)


class LowRankEncoder(Encoder):
    """q(z|x) = N(mu(x), diag(sigma^2(x)) + F(x) F(x)^T) with a rank-``rank`` factor F."""

    @dataclass(frozen=True)
    class Params(PieceParams):
        rank: int = option(2, "rank of the covariance factor", low=1, high=4096)

    @classmethod
    def check_fit(cls, params: Params, latent_dim: int) -> None:
        if params.rank > latent_dim:
            raise ConfigError(
                f"must be at most {{model.latent_dim}} ({latent_dim}), got {params.rank}: "
                f"{_RANK_ABOVE_DIM.format(latent_dim=latent_dim)}",
                option="model.rank",
            )

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        rank: int = 2,
        *,
        networks: Networks | None = None,
    ):
        super().__init__(latent_dim)
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if rank > latent_dim:
            raise ValueError(
                f"rank {rank} is above latent_dim {latent_dim}: "
                f"{_RANK_ABOVE_DIM.format(latent_dim=latent_dim)}"
            )
        self.rank = rank
        out = (2 + rank) * latent_dim
        self.net = self.network(networks, data_dim, latent_dim, hidden, out)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        d = self.latent_dim
        h = self.net(x)
        loc, log_var, factor = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        factor = factor.reshape(*factor.shape[:-1], d, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, torch.exp(log_var))


class IAFEncoder(Encoder):
    """A diagonal Gaussian followed by inverse autoregressive flow steps conditioned on x.

    Kingma et al. (2016): z_0 ~ N(mu(x), sigma^2(x)), then z_t = mu_t(z_{t-1}, h) +
    sigma_t(z_{t-1}, h) * z_{t-1} with autoregressive networks that also see a context h(x) from
    the encoder. Sampling and the density of a drawn sample are both one pass per step.
    """

    @dataclass(frozen=True)
    class Params(PieceParams):
        flows: int = option(2, "autoregressive steps of the guide's flow", low=1, high=64)

    @classmethod
    def build(cls, params: Params, context: BuildContext) -> IAFEncoder:
        return cls(
            context.data_dim,
            context.latent_dim,
            context.hidden,
            num_flows=params.flows,
            networks=context.networks,
        )

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        num_flows: int = 2,
        context_dim: int = 32,
        *,
        networks: Networks | None = None,
    ):
        super().__init__(latent_dim)
        out = 2 * latent_dim + context_dim
        self.net = self.network(networks, data_dim, latent_dim, hidden, out)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(
                latent_dim, context_dim, hidden_dims=[4 * latent_dim, 4 * latent_dim]
            )
            for _ in range(num_flows)
        )

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        d = self.latent_dim
        h = self.net(x)
        loc, log_var, context = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        base = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])
