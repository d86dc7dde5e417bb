"""Inference: sync-free ELBOs, the SVI trainer, and per-datapoint importance-sampled log p(x)."""

from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.infer.importance import (
    ImportanceResult,
    LogWeightAccumulator,
    importance_log_likelihood,
)
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.infer.svi import BetaSchedule, DeviceSVI, EpochStats, Trainer

__all__ = [
    "BetaSchedule",
    "DeviceSVI",
    "DeviceTraceMeanField_ELBO",
    "DeviceTrace_ELBO",
    "EpochStats",
    "IWAE_ELBO",
    "ImportanceResult",
    "LogWeightAccumulator",
    "Trainer",
    "importance_log_likelihood",
]
