"""The one place where names (from the command line and config.json) become objects.

To add a prior, likelihood, guide or objective: write its class, then add one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.infer

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.models import (
    MLP,
    VAE,
    Bernoulli,
    DiagonalNormalEncoder,
    Encoder,
    Gaussian,
    LearnedGaussian,
    Likelihood,
    Prior,
    StandardNormal,
)

PRIORS: dict[str, Callable[[ModelConfig], Prior]] = {
    "normal": lambda cfg: StandardNormal(cfg.latent_dim),
}

LIKELIHOODS: dict[str, Callable[[ModelConfig], Likelihood]] = {
    "bernoulli": lambda cfg: Bernoulli(),
    "gaussian": lambda cfg: Gaussian(cfg.gaussian_scale),
    "gaussian-learned": lambda cfg: LearnedGaussian(cfg.scale_floor),
}

GUIDES: dict[str, Callable[[ModelConfig, int], Encoder]] = {
    "diagonal": lambda cfg, data_dim: DiagonalNormalEncoder(data_dim, cfg.latent_dim, cfg.hidden),
}

ELBOS: dict[str, Callable[[TrainConfig], pyro.infer.ELBO]] = {
    "trace": lambda cfg: DeviceTrace_ELBO(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.vectorize_particles,
        max_plate_nesting=1,
    ),
    "meanfield": lambda cfg: DeviceTraceMeanField_ELBO(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.vectorize_particles,
        max_plate_nesting=1,
    ),
}


def lookup(table: dict, name: str, option: str):
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {option} '{name}'; choose one of {', '.join(table)}") from None


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    return lookup(LIKELIHOODS, cfg.likelihood, "--likelihood")(cfg)


def build_vae(cfg: ModelConfig, data_dim: int) -> VAE:
    """A VAE for ``data_dim``-dimensional datapoints as the model config describes it."""
    prior = lookup(PRIORS, cfg.prior, "--prior")(cfg)
    likelihood = build_likelihood(cfg)
    encoder = lookup(GUIDES, cfg.guide, "--guide")(cfg, data_dim)
    decoder = MLP([cfg.latent_dim, *reversed(cfg.hidden), likelihood.params_per_dim * data_dim])
    return VAE(encoder, decoder, prior, likelihood)


def build_elbo(cfg: TrainConfig) -> pyro.infer.ELBO:
    return lookup(ELBOS, cfg.elbo, "--elbo")(cfg)


def check_names(model: ModelConfig, train: TrainConfig) -> None:
    """Fail early, before any data are loaded, on a name no table knows."""
    lookup(PRIORS, model.prior, "--prior")
    lookup(LIKELIHOODS, model.likelihood, "--likelihood")
    lookup(GUIDES, model.guide, "--guide")
    lookup(ELBOS, train.elbo, "--elbo")
