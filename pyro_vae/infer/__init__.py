"""Inference for any Pyro model/guide pair with a data plate: sync-free ELBOs and SVI step,
per-datapoint estimates of log p(x) behind one protocol (:mod:`pyro_vae.infer.estimator`) and one
table (:data:`~pyro_vae.infer.estimators.ESTIMATORS`: importance sampling from the guide, from
refined proposals or from the prior, annealed importance sampling, the escalating ``auto``), run
by :func:`estimate` in seeded blocks; the BDMC sandwich; and the workflow checks: predictive
checks and simulation-based calibration. The VAE trainer is :mod:`pyro_vae.training`."""

from pyro_vae.infer.ais import AISResult, ais_log_likelihood, reverse_ais_log_likelihood
from pyro_vae.infer.bdmc import BDMCResult, bdmc
from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.infer.escalate import auto_log_likelihood
from pyro_vae.infer.estimator import Estimator, LogZBlock, Settings
from pyro_vae.infer.estimators import ESTIMATORS, estimate
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
    "BDMCResult",
    "DeviceSVI",
    "DeviceTraceMeanField_ELBO",
    "DeviceTrace_ELBO",
    "ESTIMATORS",
    "Estimator",
    "IWAE_ELBO",
    "ImportanceResult",
    "LogWeightAccumulator",
    "LogZBlock",
    "PredictiveCheck",
    "SBCResult",
    "Settings",
    "Statistic",
    "ais_log_likelihood",
    "auto_log_likelihood",
    "bdmc",
    "coverage",
    "estimate",
    "importance_log_likelihood",
    "predictive_check",
    "refined_log_likelihood",
    "reverse_ais_log_likelihood",
    "simulation_based_calibration",
    "verdicts",
]
