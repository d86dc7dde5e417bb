"""Generative models and guides: the VAE and its swappable pieces."""

from pyro_vae.models.guides import DiagonalNormalEncoder, Encoder
from pyro_vae.models.likelihoods import Bernoulli, Gaussian, LearnedGaussian, Likelihood, Support
from pyro_vae.models.nets import MLP
from pyro_vae.models.ppca import ProbabilisticPCA
from pyro_vae.models.priors import Prior, StandardNormal
from pyro_vae.models.vae import VAE, Generated

__all__ = [
    "MLP",
    "VAE",
    "Bernoulli",
    "DiagonalNormalEncoder",
    "Encoder",
    "Gaussian",
    "Generated",
    "LearnedGaussian",
    "Likelihood",
    "Prior",
    "ProbabilisticPCA",
    "StandardNormal",
    "Support",
]
