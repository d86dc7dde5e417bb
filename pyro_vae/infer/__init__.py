"""Inference: sync-free ELBOs, the SVI trainer, and per-datapoint estimates of log p(x):
importance sampling, annealed importance sampling and the BDMC sandwich."""

from pyro_vae.infer.ais import AISResult, ais_log_likelihood, reverse_ais_log_likelihood
from pyro_vae.infer.bdmc import BDMCResult, bdmc
from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.infer.escalate import AutoResult, auto_log_likelihood
from pyro_vae.infer.importance import (
    ImportanceResult,
    LogWeightAccumulator,
    importance_log_likelihood,
)
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.infer.refine import refined_log_likelihood
from pyro_vae.infer.svi import BetaSchedule, DeviceSVI, EpochStats, Trainer

__all__ = [
    "AISResult",
    "AutoResult",
    "BDMCResult",
    "BetaSchedule",
    "DeviceSVI",
    "DeviceTraceMeanField_ELBO",
    "DeviceTrace_ELBO",
    "EpochStats",
    "IWAE_ELBO",
    "ImportanceResult",
    "LogWeightAccumulator",
    "Trainer",
    "ais_log_likelihood",
    "auto_log_likelihood",
    "bdmc",
    "importance_log_likelihood",
    "refined_log_likelihood",
    "reverse_ais_log_likelihood",
]
