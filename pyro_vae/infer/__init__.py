"""Inference for any Pyro model/guide pair with a data plate: sync-free ELBOs and SVI step,
per-datapoint estimates of log p(x): importance sampling (from the guide or refined proposals),
annealed importance sampling, the BDMC sandwich and the escalating ``auto``; and the workflow
checks: predictive checks and simulation-based calibration. The VAE trainer is
:mod:`pyro_vae.training`."""

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
from pyro_vae.infer.predictive import PredictiveCheck, Statistic, predictive_check
from pyro_vae.infer.refine import refined_log_likelihood
from pyro_vae.infer.sbc import SBCResult, coverage, simulation_based_calibration, verdicts
from pyro_vae.infer.svi import DeviceSVI

__all__ = [
    "AISResult",
    "AutoResult",
    "BDMCResult",
    "DeviceSVI",
    "DeviceTraceMeanField_ELBO",
    "DeviceTrace_ELBO",
    "IWAE_ELBO",
    "ImportanceResult",
    "LogWeightAccumulator",
    "PredictiveCheck",
    "SBCResult",
    "Statistic",
    "ais_log_likelihood",
    "auto_log_likelihood",
    "bdmc",
    "coverage",
    "importance_log_likelihood",
    "predictive_check",
    "refined_log_likelihood",
    "reverse_ais_log_likelihood",
    "simulation_based_calibration",
    "verdicts",
]
