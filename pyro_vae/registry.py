"""The one place where names (from the command line and config.json) become objects.

To add a prior, likelihood, guide or objective: write its class, then add one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.infer
import torch

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.models import (
    MLP,
    VAE,
    Bernoulli,
    Beta,
    ContinuousBernoulli,
    DiagonalNormalEncoder,
    DiscretizedLogistic,
    Encoder,
    FlowPrior,
    FullCovarianceEncoder,
    Gaussian,
    IAFEncoder,
    LearnedGaussian,
    LearnedLaplace,
    Likelihood,
    LowRankEncoder,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    VampPrior,
)

# Each factory gets the model config, the data dimension and, for priors, the guide's encoder.
PRIORS: dict[str, Callable[[ModelConfig, int, Encoder], Prior]] = {
    "normal": lambda cfg, data_dim, encoder: StandardNormal(cfg.latent_dim),
    "mog": lambda cfg, data_dim, encoder: MixtureOfGaussians(cfg.latent_dim, cfg.num_components),
    "vamp": lambda cfg, data_dim, encoder: VampPrior(encoder, data_dim, cfg.num_components),
    "flow": lambda cfg, data_dim, encoder: FlowPrior(cfg.latent_dim, cfg.flows),
}

LIKELIHOODS: dict[str, Callable[[ModelConfig, int | None], Likelihood]] = {
    "bernoulli": lambda cfg, levels: Bernoulli(),
    "continuous-bernoulli": lambda cfg, levels: ContinuousBernoulli(),
    "gaussian": lambda cfg, levels: Gaussian(cfg.gaussian_scale),
    "gaussian-learned": lambda cfg, levels: LearnedGaussian(cfg.scale_floor),
    "laplace": lambda cfg, levels: LearnedLaplace(cfg.scale_floor),
    "beta": lambda cfg, levels: Beta(),
    "discretized-logistic": lambda cfg, levels: DiscretizedLogistic(
        cfg.scale_floor, _require_levels(levels)
    ),
}

GUIDES: dict[str, Callable[[ModelConfig, int], Encoder]] = {
    "diagonal": lambda cfg, d: DiagonalNormalEncoder(d, cfg.latent_dim, cfg.hidden),
    "full": lambda cfg, d: FullCovarianceEncoder(d, cfg.latent_dim, cfg.hidden),
    "lowrank": lambda cfg, d: LowRankEncoder(d, cfg.latent_dim, cfg.hidden, cfg.rank),
    "iaf": lambda cfg, d: IAFEncoder(d, cfg.latent_dim, cfg.hidden, cfg.flows),
}

# Precision of the encoder and decoder networks (VAE.precision); log-densities stay float32.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

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
    "iwae": lambda cfg: IWAE_ELBO(num_particles=cfg.num_particles, max_plate_nesting=1),
}


def _require_levels(levels: int | None) -> int:
    if levels is None:
        raise ConfigError(
            "{model.likelihood} discretized-logistic needs quantised data (8-bit images); "
            "these data are continuous"
        )
    return levels


def lookup(table: dict, name: str, option: str):
    """``table[name]``; an unknown name is a :class:`ConfigError` naming the option (its config
    path, e.g. ``model.prior``) and the names it may take."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"unknown {{{option}}} '{name}'; choose one of {', '.join(table)}"
        ) from None


def build_likelihood(cfg: ModelConfig, levels: int | None = None) -> Likelihood:
    return lookup(LIKELIHOODS, cfg.likelihood, "model.likelihood")(cfg, levels)


def build_vae(cfg: ModelConfig, data_dim: int, levels: int | None = None) -> VAE:
    """A VAE for ``data_dim``-dimensional datapoints as the model config describes it.

    ``levels`` is the number of quantisation levels of the data (for discrete likelihoods).
    """
    likelihood = build_likelihood(cfg, levels)
    encoder = lookup(GUIDES, cfg.guide, "model.guide")(cfg, data_dim)
    try:
        prior = lookup(PRIORS, cfg.prior, "model.prior")(cfg, data_dim, encoder)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{{model.prior}} {cfg.prior}: {e}") from None
    decoder = MLP([cfg.latent_dim, *reversed(cfg.hidden), likelihood.params_per_dim * data_dim])
    return VAE(encoder, decoder, prior, likelihood)


def build_elbo(cfg: TrainConfig) -> pyro.infer.ELBO:
    return lookup(ELBOS, cfg.elbo, "train.elbo")(cfg)


def build_precision(name: str) -> torch.dtype:
    return lookup(PRECISIONS, name, "train.precision")


def check_names(model: ModelConfig, train: TrainConfig) -> None:
    """Fail early, before any data are loaded, on a name no table knows."""
    lookup(PRIORS, model.prior, "model.prior")
    lookup(LIKELIHOODS, model.likelihood, "model.likelihood")
    lookup(GUIDES, model.guide, "model.guide")
    lookup(ELBOS, train.elbo, "train.elbo")
    lookup(PRECISIONS, train.precision, "train.precision")
