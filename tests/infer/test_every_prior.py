"""Every registered prior under every estimator of log p(x) and every check: a prior whose
support the per-datapoint latent space cannot map (a mixture's, say) fails here, not in a user's
``evaluate``. A tiny untrained VAE and few draws keep the grid fast.

The reference is importance sampling from the prior itself, outside ``pyro_vae.infer``: under a
Bernoulli likelihood its weights p(x|z) lie in (0, 1], so K = 20000 draws give log p(x) to a few
hundredths of a nat whatever the prior. Every estimator is a stochastic lower bound that improves
on the guide's ELBO, so its mean over the datapoints must lie between that ELBO and log p(x)
(the ELBO gap is a fraction of a nat for most priors, several nats for the untrained flow)."""

import math
from dataclasses import dataclass

import pyro
import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.infer import (
    ais_log_likelihood,
    auto_log_likelihood,
    bdmc,
    importance_log_likelihood,
    predictive_check,
    refined_log_likelihood,
    simulation_based_calibration,
)
from pyro_vae.infer import estimate as estimate_by
from pyro_vae.registry import PRIORS, build_vae

D, N = 6, 3
AIS = {"num_chains": 4, "num_steps": 5, "num_leapfrog": 1, "pilot_steps": 3}
REFINE = {"max_steps": 10, "check_every": 5, "init_samples": 16, "num_particles": 4}
SMC = {"refine_steps": 10, "smc_particles": 8, "smc_replicates": 2}
SLACK = 0.3  # nats allowed on either side of the bracket, beyond the error bar


@dataclass(frozen=True)
class Case:
    vae: torch.nn.Module
    x: torch.Tensor
    elbo: float  # the guide's, mean over the datapoints of x
    log_px: float  # from the prior, mean over the datapoints of x


@pytest.fixture(scope="module", params=list(PRIORS), ids=list(PRIORS))
def case(request) -> Case:
    """An untrained VAE with the prior, built once for the module (no estimator changes it)."""
    pyro.set_rng_seed(0)
    cfg = ModelConfig(latent_dim=2, hidden=(8,), prior=request.param, num_components=3, flows=1)
    vae = build_vae(cfg, D)
    x = torch.bernoulli(torch.full((N, D), 0.5), generator=torch.Generator().manual_seed(1))
    return Case(vae, x, guide_elbo(vae, x), log_px_from_the_prior(vae, x))


def guide_elbo(vae, x) -> float:
    with torch.no_grad():
        return importance_log_likelihood(vae.model, vae.guide, x, num_samples=256).elbo.mean()


def log_px_from_the_prior(vae, x, num_samples=20_000) -> float:
    """The mean over the datapoints of log (1/K) sum_k p(x | z_k), z_k ~ p(z)."""
    with torch.no_grad():
        z = vae.prior().sample((num_samples,)).unsqueeze(1)  # (K, 1, latent_dim)
        log_lik = vae.likelihood(vae.decoder(z)).log_prob(x).double()  # (K, N)
    return float((log_lik.logsumexp(0) - math.log(num_samples)).mean())


def assert_between_elbo_and_log_px(result, x, elbo: float, log_px: float):
    """The mean of ``result.log_px`` over the datapoints of ``x`` lies between the guide's ELBO
    and log p(x), give or take three of its own error bars and SLACK."""
    estimate = result.log_px.double()
    assert estimate.shape == (x.shape[0],)
    assert torch.isfinite(estimate).all()
    error_bar = 3 * float(result.stderr.double().square().sum().sqrt()) / x.shape[0]
    assert elbo - SLACK - error_bar < float(estimate.mean()) < log_px + SLACK + error_bar


ESTIMATORS = {
    "iwae": lambda vae, x: importance_log_likelihood(vae.model, vae.guide, x, num_samples=64),
    "refined": lambda vae, x: refined_log_likelihood(
        vae.model, vae.guide, x, num_samples=16, **REFINE
    ),
    "ais": lambda vae, x: ais_log_likelihood(vae.model, vae.guide, x, **AIS),
    "smc": lambda vae, x: estimate_by(vae.model, vae.guide, x, "smc", seed=0, **SMC),
    # an error bar no estimate meets sends every datapoint through all three stages
    "auto": lambda vae, x: auto_log_likelihood(
        vae.model,
        vae.guide,
        x,
        num_samples=21,
        max_samples=21,
        stderr_tolerance=1e-9,
        refine=REFINE,
        smc={"num_particles": SMC["smc_particles"], "num_replicates": SMC["smc_replicates"]},
    ),
}


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_every_estimator_scores_every_prior(case, method):
    result = ESTIMATORS[method](case.vae, case.x)
    assert_between_elbo_and_log_px(result, case.x, case.elbo, case.log_px)
    if method == "auto":
        assert result.counts(("iwae", "refined", "smc")) == {
            "iwae": 0,
            "refined": 0,
            "smc": N,
        }  # through every stage


def test_bdmc_sandwiches_every_prior(case):
    vae = case.vae
    result = bdmc(vae.model, vae.guide, case.x, **AIS)
    assert result.x.shape == case.x.shape
    log_px = log_px_from_the_prior(vae, result.x)
    assert_between_elbo_and_log_px(result.lower, result.x, guide_elbo(vae, result.x), log_px)
    upper = result.upper.log_px.double()
    assert torch.isfinite(upper).all()
    error_bar = 3 * float(result.upper.stderr.double().square().sum().sqrt()) / N
    assert float(upper.mean()) > log_px - SLACK - error_bar


@pytest.mark.parametrize("kind", ["prior", "posterior"])
def test_predictive_check_of_every_prior(case, kind):
    check = predictive_check(case.vae.model, case.vae.guide, case.x, kind=kind, num_draws=8)
    assert set(check.names) >= {"mean_intensity", "on_pixels", "total_variation"}
    for name, values in check.replicated.items():
        assert values.shape == (8, N), name
        assert torch.isfinite(values).all(), name


def test_sbc_of_every_prior(case):
    vae = case.vae
    result = simulation_based_calibration(
        vae.model, vae.guide, case.x, num_draws=9, num_proposals=16
    )
    assert result.ranks.shape == result.resampled_ranks.shape == (N, 2)
    assert ((result.ranks >= 0) & (result.ranks <= 9)).all()
    assert ((result.resampled_ranks >= 0) & (result.resampled_ranks <= 9)).all()
    assert torch.isfinite(result.ess).all() and (result.ess >= 1 - 1e-6).all()
