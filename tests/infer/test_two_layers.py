"""Every estimator on a model with two latent sites per datapoint, against the exact log p(x) of
a two-level linear-Gaussian model (pyro_vae.models.TwoLevelPPCA)."""

import math

import pyro
import pytest
import torch

from pyro_vae.infer import (
    ais_log_likelihood,
    auto_log_likelihood,
    importance_log_likelihood,
    refined_log_likelihood,
)
from pyro_vae.infer.bdmc import bdmc
from pyro_vae.infer.latent import LatentSpace, simulate
from pyro_vae.models import TwoLevelPPCA


def _mean_and_se(d: torch.Tensor) -> tuple[float, float]:
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


@pytest.fixture
def two_level():
    pyro.set_rng_seed(0)
    model = TwoLevelPPCA()
    return model, model.sample_data(40)


def test_the_oracle_is_a_density_whose_posterior_factorises_as_the_guide():
    model = TwoLevelPPCA(d2=1, d1=1, D=1)
    # log p(x) integrates to 1 over a grid of one-dimensional data
    grid = torch.linspace(-30, 30, 20001, dtype=torch.float64).unsqueeze(-1)
    total = torch.logsumexp(model.log_px(grid), 0) + math.log(grid[1, 0] - grid[0, 0])
    assert abs(float(total)) < 1e-6
    # Monte Carlo of p(x) = E_{z2, z1}[p(x | z1)] agrees with the closed form
    g = torch.Generator().manual_seed(0)
    z2 = torch.randn(200000, 1, generator=g, dtype=torch.float64)
    z1 = z2 @ model.A.T + model.a + model.t2**0.5 * torch.randn(200000, 1, generator=g).double()
    x = torch.tensor([[0.3]], dtype=torch.float64)
    lik = torch.distributions.Normal(z1 @ model.W.T + model.mu, model.s2**0.5).log_prob(x)
    mc = torch.logsumexp(lik.squeeze(-1), 0) - math.log(200000)
    assert abs(float(mc - model.log_px(x)[0])) < 0.01


def test_with_the_exact_posterior_every_importance_weight_is_log_px(two_level):
    model, x = two_level
    r = importance_log_likelihood(model.model, model.exact_guide, x, num_samples=5)
    torch.testing.assert_close(r.log_px, model.log_px(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(r.elbo, model.log_px(x), rtol=0, atol=1e-9)
    assert float(r.ess.min()) == pytest.approx(5.0)


def test_the_latent_space_holds_both_sites_of_every_datapoint(two_level):
    model, x = two_level
    space = LatentSpace(model.model, model.wrong_guide, x[:3])
    assert sorted(s.name for s in space.sites) == ["z1", "z2"]
    assert space.dim == model.d1 + model.d2


def test_iwae_bounds_rise_with_k_towards_the_exact_log_px(two_level):
    model, x = two_level
    exact = model.log_px(x)
    gaps = {}
    for k in (1, 10, 1000):
        pyro.set_rng_seed(2)
        r = importance_log_likelihood(model.model, model.wrong_guide, x, num_samples=k)
        gaps[k] = _mean_and_se(exact - r.log_px)
    assert gaps[1][0] > gaps[10][0] > gaps[1000][0]
    assert gaps[1][0] > 0.2 and abs(gaps[1000][0]) < 3 * gaps[1000][1] + 0.01


def test_refined_ais_and_auto_agree_with_the_exact_log_px(two_level):
    model, x = two_level
    exact = model.log_px(x)
    pyro.set_rng_seed(3)
    refined = refined_log_likelihood(model.model, model.wrong_guide, x, num_samples=500)
    err, se = _mean_and_se(refined.log_px - exact)
    assert abs(err) < 3 * se + 0.01
    x, exact = x[:20], exact[:20]
    ais = ais_log_likelihood(model.model, model.wrong_guide, x, num_steps=100, pilot_steps=30)
    err, se = _mean_and_se(ais.log_px - exact)
    assert abs(err) < 3 * se + 0.02
    auto = auto_log_likelihood(
        model.model,
        model.wrong_guide,
        x,
        khat=lambda w: torch.zeros(w.shape[1], dtype=w.dtype),
        num_samples=200,
        stderr_tolerance=0.02,
        smc={"num_particles": 32, "num_replicates": 4},
    )
    err, se = _mean_and_se(auto.log_px - exact)
    assert abs(err) < 3 * se + 0.02
    assert auto.counts(("iwae",))["iwae"] < x.shape[0]  # some datapoints went on to later stages


def test_bdmc_brackets_the_exact_log_px_with_two_latent_sites():
    pyro.set_rng_seed(4)
    model = TwoLevelPPCA()
    like = torch.zeros(20, model.D, dtype=torch.float64)
    r = bdmc(model.model, model.wrong_guide, like, num_steps=100, pilot_steps=30)
    assert set(r.latents) == {"z1", "z2"}
    exact = model.log_px(r.x)
    low, se_low = _mean_and_se(r.lower.log_px - exact)
    high, se_high = _mean_and_se(r.upper.log_px - exact)
    assert low < 3 * se_low and high > -3 * se_high
    gap, se_gap = _mean_and_se(r.gap)
    assert -3 * se_gap < gap < 0.5  # nearly closed after 100 steps (positive in expectation)
    x, latents = simulate(model.model, like)
    assert latents["z1"].shape == (20, model.d1) and latents["z2"].shape == (20, model.d2)
