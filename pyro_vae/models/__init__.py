"""Generative models and guides: the VAE and its swappable pieces."""

from pyro_vae.models.guides import (
    DiagonalNormalEncoder,
    Encoder,
    FullCovarianceEncoder,
    IAFEncoder,
    LowRankEncoder,
)
from pyro_vae.models.likelihoods import (
    Bernoulli,
    Beta,
    ContinuousBernoulli,
    DiscretizedLogistic,
    Gaussian,
    LearnedGaussian,
    LearnedLaplace,
    Likelihood,
    LocationScale,
    Support,
)
from pyro_vae.models.nets import MLP
from pyro_vae.models.ppca import ProbabilisticPCA
from pyro_vae.models.precision import networks_in
from pyro_vae.models.priors import FlowPrior, MixtureOfGaussians, Prior, StandardNormal, VampPrior
from pyro_vae.models.vae import VAE, Generated

__all__ = [
    "Bernoulli",
    "Beta",
    "ContinuousBernoulli",
    "DiagonalNormalEncoder",
    "DiscretizedLogistic",
    "Encoder",
    "FlowPrior",
    "FullCovarianceEncoder",
    "Gaussian",
    "Generated",
    "IAFEncoder",
    "LearnedGaussian",
    "LearnedLaplace",
    "Likelihood",
    "LocationScale",
    "LowRankEncoder",
    "MLP",
    "MixtureOfGaussians",
    "Prior",
    "ProbabilisticPCA",
    "StandardNormal",
    "Support",
    "VAE",
    "VampPrior",
    "networks_in",
]
