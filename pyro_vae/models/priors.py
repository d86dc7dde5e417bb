"""Priors p(z). Each is a small module whose ``forward()`` returns a distribution over z.

To add a prior, subclass :class:`Prior`, implement ``forward`` returning a distribution with
``event_shape == (latent_dim,)`` and empty batch shape (the data plate broadcasts it), declare its
hyperparameters in a nested ``Params`` (:mod:`pyro_vae.pieces`), and register its name in
:mod:`pyro_vae.registry`. Learnable parameters are registered with Pyro by the VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_vae.options import option
from pyro_vae.pieces import BuildContext, Piece, PieceParams, params_dict


class Prior(Piece, nn.Module):
    """Base class: a distribution over z in R^latent_dim, with event dimension 1.

    Built as ``cls(latent_dim, **params)`` unless a subclass overrides :meth:`build`.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    @classmethod
    def build(cls, params: PieceParams, context: BuildContext) -> Prior:
        return cls(context.latent_dim, **params_dict(params))

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


class StudentT(Prior):
    """p(z) = prod_i StudentT(z_i; df, 0, 1): heavier tails than N(0, I), which it approaches as
    ``df`` grows; ``df = 1`` is the Cauchy distribution."""

    @dataclass(frozen=True)
    class Params(PieceParams):
        df: float = option(3.0, "degrees of freedom of p(z)", positive=True)

    def __init__(self, latent_dim: int, df: float = 3.0):
        super().__init__(latent_dim)
        if not df > 0:
            raise ValueError(f"df must be positive, got {df}")
        self.register_buffer("df", torch.full((latent_dim,), float(df)))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


@dataclass(frozen=True)
class Components(PieceParams):
    num_components: int = option(
        10, "number of components or pseudo-inputs", low=1, high=10_000, metavar="K"
    )


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with learnable weights, means and scales.

    The seeds' view of a VAE as an infinite mixture of Gaussians, made a finite one in z.
    With one component at mu = 0, sigma = 1 it equals :class:`StandardNormal`.
    """

    Params = Components

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__(latent_dim)
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        self.logits = nn.Parameter(torch.zeros(num_components))
        spread = 0.0 if num_components == 1 else 1.0
        self.locs = nn.Parameter(spread * torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), pseudo-inputs u_k learned.

    The guide family is shared with the VAE's encoder, held by reference so that its parameters
    are registered once (by the guide) and trained by both terms.
    """

    Params = Components

    @classmethod
    def build(cls, params: Components, context: BuildContext) -> VampPrior:
        return cls(context.encoder, context.data_dim, params.num_components)

    def __init__(self, encoder: nn.Module, data_dim: int, num_components: int = 10):
        super().__init__(encoder.latent_dim)
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        self._encoder = (encoder,)  # a tuple hides it from nn.Module's registry
        self.pseudo_inputs = nn.Parameter(0.5 + 0.1 * torch.randn(num_components, data_dim))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    def forward(self) -> dist.TorchDistribution:
        return UniformMixture(self.encoder(self.pseudo_inputs))


class FlowPrior(Prior):
    """A standard normal pushed through learnable spline coupling flows (Durkan et al. 2019).

    Each step is a rational-quadratic spline coupling layer followed by a fixed permutation, so
    every dimension is transformed; both directions are cheap, so log p(z) needs no iteration.
    """

    @dataclass(frozen=True)
    class Params(PieceParams):
        flows: int = option(2, "coupling steps of the prior's flow", low=1, high=64)

    @classmethod
    def build(cls, params: Params, context: BuildContext) -> FlowPrior:
        return cls(context.latent_dim, num_flows=params.flows)

    def __init__(self, latent_dim: int, num_flows: int = 2, hidden: int = 64):
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ValueError("a coupling flow needs latent_dim >= 2")
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.couplings = nn.ModuleList(
            T.spline_coupling(latent_dim, hidden_dims=[hidden, hidden]) for _ in range(num_flows)
        )
        for i in range(num_flows):
            perm = torch.roll(torch.arange(latent_dim), shifts=latent_dim // 2 + i)
            self.register_buffer(f"perm{i}", perm)

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        layers = []
        for i, coupling in enumerate(self.couplings):
            layers += [coupling, T.Permute(getattr(self, f"perm{i}"))]
        return dist.TransformedDistribution(base, layers)


class UniformMixture(dist.TorchDistribution):
    """(1/K) sum_k c_k(z) for a batch of K components ``c`` with batch shape ``(K,)``.

    Unlike ``MixtureSameFamily`` it evaluates the components on z expanded to the component axis
    (not broadcast from size 1), which conditional flows (e.g. an IAF guide family) need.
    """

    arg_constraints = {}

    def __init__(self, components: dist.TorchDistribution, validate_args=None):
        if len(components.batch_shape) != 1:
            raise ValueError(
                f"expected components of batch shape (K,), got {components.batch_shape}"
            )
        self.components = components
        self.num_components = components.batch_shape[0]
        super().__init__(torch.Size(), components.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return self.components.support

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        d = len(self.event_shape)
        batch = value.shape[: value.dim() - d]
        expanded = value.unsqueeze(-d - 1).expand(*batch, self.num_components, *self.event_shape)
        log_probs = self.components.log_prob(expanded)
        return torch.logsumexp(log_probs, dim=-1) - math.log(self.num_components)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            draws = self.components.sample(torch.Size(sample_shape))  # (*S, K, *event)
            k = torch.randint(
                self.num_components, draws.shape[: len(sample_shape)], device=draws.device
            )
            index = k.reshape(*k.shape, 1, *([1] * len(self.event_shape)))
            index = index.expand(*k.shape, 1, *self.event_shape)
            return draws.gather(len(sample_shape), index).squeeze(len(sample_shape))
