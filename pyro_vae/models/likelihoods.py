"""Likelihoods p(x|z). Each maps the decoder's output to a distribution over a flattened x.

A likelihood declares the data it accepts (:class:`Support`) and checks data against it, so that a
log-likelihood is never silently improper (e.g. a Bernoulli scoring grey pixels). Training and
evaluation score x with the same likelihood object.

To add a likelihood, subclass :class:`Likelihood`: set ``support`` and ``params_per_dim`` (how many
decoder outputs it needs per data dimension), implement ``forward(h)``, declare its
hyperparameters in a nested ``Params`` (:mod:`pyro_vae.pieces`), and register its name in
:mod:`pyro_vae.registry`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import SUPPORT_ADVICE, ConfigError, DataError, UnsupportedDataError
from pyro_vae.options import option
from pyro_vae.pieces import BuildContext, Piece, PieceParams, params_dict


class Support(enum.Enum):
    """The values a likelihood assigns probability (or density) to."""

    BINARY = "binary values {0, 1}"
    UNIT_INTERVAL = "values in [0, 1]"
    OPEN_UNIT_INTERVAL = "values strictly inside (0, 1)"
    LEVELS = "quantised values k / (levels - 1), k = 0 .. levels - 1"
    REAL = "real values"


DISCRETE_SUPPORTS = (Support.BINARY, Support.LEVELS)


class Likelihood(Piece, nn.Module):
    """Base class: ``forward(h)`` returns p(x|z) with event dimension 1 over the flattened data.

    ``h`` is the decoder output of shape ``(..., params_per_dim * data_dim)``. Built as
    ``cls(**params)`` unless a subclass overrides :meth:`build`.
    """

    support: Support = Support.REAL
    params_per_dim: int = 1

    @classmethod
    def build(cls, params: PieceParams, context: BuildContext) -> Likelihood:
        return cls(**params_dict(params))

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z): a "mean image", not a sample."""
        return self(h).mean

    @property
    def is_discrete(self) -> bool:
        """Whether this likelihood is a probability mass (so bits/dim need no dequantisation)."""
        return self.support in DISCRETE_SUPPORTS

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.UnsupportedDataError` if ``x`` lies outside this
        likelihood's support (:class:`~pyro_vae.errors.DataError` for NaN or infinite values).

        The message names the likelihood, the data's range and the fix, in words.
        """
        if x.numel() == 0:
            raise DataError(f"{what} hold no values")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"{what} contain {bad} NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        invalid = self._invalid(x)
        if invalid is None:
            return
        needs, fix = SUPPORT_ADVICE[self.support.name.lower()]
        if self.support is Support.LEVELS:
            needs = f"quantised values k / {self.levels - 1} (k = 0 .. {self.levels - 1})"
        if lo < 0 or hi > 1:  # not probabilities or intensities: binarising cannot apply
            fix = (
                "values outside [0, 1] are neither probabilities nor pixel intensities, so "
                "choose a likelihood for real values, such as a Gaussian, and score the data "
                "as they are"
            )
        count = int(invalid.sum())
        raise UnsupportedDataError(
            f"the {self.name} likelihood needs {needs}, but {what} lie in [{lo:.3g}, {hi:.3g}] "
            f"with {count} of {x.numel()} values outside its support; {fix}",
            what=what,
            distribution=self.name,
            support=self.support.name.lower(),
            low=lo,
            high=hi,
            num_invalid=count,
        )

    def _invalid(self, x: torch.Tensor) -> torch.Tensor | None:
        """A mask of the values outside the support, or None when every value is inside."""
        if self.support is Support.BINARY:
            bad = (x != 0) & (x != 1)
        elif self.support is Support.UNIT_INTERVAL:
            bad = (x < 0) | (x > 1)
        elif self.support is Support.OPEN_UNIT_INTERVAL:
            bad = (x <= 0) | (x >= 1)
        elif self.support is Support.LEVELS:
            k = x * (self.levels - 1)
            bad = (x < 0) | (x > 1) | ((k - k.round()).abs() > 1e-3)
        else:
            return None
        return bad if bool(bad.any()) else None

    @property
    def name(self) -> str:
        """The class's name without "Likelihood", for messages ("the Bernoulli likelihood")."""
        return type(self).__name__.removesuffix("Likelihood")


class BernoulliLikelihood(Likelihood):
    """x_i ~ Bernoulli(sigmoid(h_i)), for binary data."""

    support = Support.BINARY

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=h).to_event(1)


class GaussianLikelihood(Likelihood):
    """x ~ N(h, scale^2 I) with a fixed scale.

    The seeds' objective ``1/2 sum (x - mu)^2 + lambda * KL`` is ``lambda`` times the negative
    ELBO of this likelihood with ``scale**2 = lambda``, less the constant
    ``lambda (D/2) ln(2 pi lambda)``: the same gradients up to the factor ``lambda``
    (``experiments/seed_recipe.py`` checks it). A reported log-likelihood keeps the constant.
    """

    support = Support.REAL

    @dataclass(frozen=True)
    class Params(PieceParams):
        gaussian_scale: float = option(0.1, "fixed sigma of p(x|z)", positive=True)

    @classmethod
    def build(cls, params: Params, context: BuildContext) -> GaussianLikelihood:
        return cls(params.gaussian_scale)

    def __init__(self, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Gaussian scale must be positive, got {scale}")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(h, self.scale).to_event(1)


class LocationScale(Likelihood):
    """Base of likelihoods with a location and a learned scale per dimension: the decoder gives
    ``(loc, raw)`` and ``scale = floor + softplus(raw)``.

    The floor keeps densities bounded (Mattei & Frellsen 2018): without it the likelihood of
    continuous data can grow without limit as the scale goes to 0.
    """

    params_per_dim = 2

    @dataclass(frozen=True)
    class Params(PieceParams):
        scale_floor: float = option(
            0.001,
            "minimum scale of p(x|z) (Mattei & Frellsen 2018)",
            positive=True,
        )

    @classmethod
    def build(cls, params: Params, context: BuildContext) -> LocationScale:
        return cls(params.scale_floor)

    def __init__(self, floor: float):
        super().__init__()
        if not floor > 0:
            raise ValueError(f"scale floor must be positive, got {floor}")
        self.floor = float(floor)

    def loc_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = h.chunk(2, dim=-1)
        return loc, self.floor + F.softplus(raw)


class LearnedGaussianLikelihood(LocationScale):
    """x ~ N(mu(z), diag sigma(z)^2) with ``sigma = floor + softplus(raw)``: the seeds' model."""

    support = Support.REAL

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(*self.loc_scale(h)).to_event(1)


class ContinuousBernoulliLikelihood(Likelihood):
    """x_i ~ ContinuousBernoulli(sigmoid(h_i)) on [0, 1], normaliser included
    (Loaiza-Ganem & Cunningham 2019): a proper density for grey values, unlike the Bernoulli."""

    support = Support.UNIT_INTERVAL

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=h).to_event(1)


class LearnedLaplaceLikelihood(LocationScale):
    """x ~ Laplace(mu(z), b(z)) per dimension, ``b = floor + softplus(raw)``."""

    support = Support.REAL

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(*self.loc_scale(h)).to_event(1)


class BetaLikelihood(Likelihood):
    """x ~ Beta(a(z), b(z)) per dimension on (0, 1), ``a, b = 0.01 + softplus(raw)``.

    Data must be strictly inside (0, 1): 8-bit pixels get there by uniform dequantisation,
    (k + u) / 256, which is how pyro_vae squeezes 0 and 1 (``--dequantize uniform``).
    """

    support = Support.OPEN_UNIT_INTERVAL
    params_per_dim = 2

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        a, b = (0.01 + F.softplus(t) for t in h.chunk(2, dim=-1))
        return dist.Beta(a, b).to_event(1)


class DiscretizedLogisticLikelihood(LocationScale):
    """Each x_i in {0, 1/(L-1), ..., 1} gets the mass of a logistic(mu(z), s(z)) over its bin,
    with the end bins open to -inf and +inf (Salimans et al. 2017, one component per pixel).
    A probability, so log p(x) converts to bits/dim directly.
    """

    support = Support.LEVELS

    @classmethod
    def build(
        cls, params: LocationScale.Params, context: BuildContext
    ) -> DiscretizedLogisticLikelihood:
        if context.levels is None:
            raise ConfigError(
                "{model.likelihood} discretized-logistic needs quantised data (8-bit images); "
                "these data are continuous"
            )
        return cls(params.scale_floor, context.levels)

    def __init__(self, floor: float, levels: int = 256):
        super().__init__(floor)
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.levels = int(levels)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return DiscretizedLogisticDistribution(*self.loc_scale(h), self.levels).to_event(1)


class DiscretizedLogisticDistribution(dist.TorchDistribution):
    """A logistic(loc, scale) discretised to the grid k / (levels - 1) on [0, 1]."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc, scale, levels: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = levels
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticDistribution, _instance)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.levels = self.levels
        super(DiscretizedLogisticDistribution, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        half = 0.5 / (self.levels - 1)
        upper = (value - self.loc + half) / self.scale
        lower = (value - self.loc - half) / self.scale
        first = F.logsigmoid(upper)  # bin 0: P(y < 0 + half)
        last = F.logsigmoid(-lower)  # bin L-1: P(y > 1 - half)
        # log(sigmoid(u) - sigmoid(l)), computed on the side of the bin away from saturation
        right = (upper + lower) > 0
        hi = torch.where(right, F.logsigmoid(-lower), F.logsigmoid(upper))
        lo = torch.where(right, F.logsigmoid(-upper), F.logsigmoid(lower))
        middle = hi + _log1mexp(lo - hi)
        return torch.where(value < half, first, torch.where(value > 1 - half, last, middle))

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            y = self.loc.expand(shape) + self.scale.expand(shape) * (torch.log(u) - torch.log1p(-u))
            return (y.clamp(0, 1) * (self.levels - 1)).round() / (self.levels - 1)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate near 0 and far below it (Maechler 2012)."""
    a = a.clamp(max=-1e-12)
    return torch.where(
        a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a))
    )
