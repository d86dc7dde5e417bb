"""Predictive checks against exact linear-Gaussian models: a correct model is not flagged, a
mis-specified one is, and the replicates come from the predictive distributions."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer.predictive import (
    LOG_LIK,
    mean_intensity,
    on_pixels,
    predictive_check,
    total_variation,
    u_tail_share,
)
from pyro_vae.models.ppca import ProbabilisticPCA, TwoLevelPPCA

pytestmark = pytest.mark.usefixtures("float64_default")


def ml_ppca(x: torch.Tensor, d: int, s2: float) -> ProbabilisticPCA:
    """PPCA fitted to ``x`` by maximum likelihood with the noise variance held at ``s2``
    (Tipping & Bishop 1999: W = U_d (L_d - s2)^1/2, mu the data mean); its posterior is exact."""
    mu = x.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((x - mu).T))
    model = ProbabilisticPCA(d=d, D=x.shape[1], s2=s2)
    model.W = evecs[:, -d:] * (evals[-d:] - s2).clamp_min(0).sqrt()
    model.mu = mu
    return model


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_correct_model_with_its_exact_posterior_is_not_flagged(seed):
    p = ProbabilisticPCA(d=3, D=16, s2=0.5, seed=seed)
    x = p.sample_data(400, seed=seed + 10)
    pyro.set_rng_seed(seed)
    check = predictive_check(p.model, p.exact_guide, x, num_draws=200, image_shape=(4, 4))
    # posterior predictive p-values of a correct model lie nearer 1/2 than uniform ones
    assert check.extreme() == {}
    assert set(check.names) == {"mean_intensity", "on_pixels", "total_variation", LOG_LIK}


def test_prior_predictive_p_values_of_a_correct_model_are_uniform():
    """The observed data are draws from the prior predictive: over data sets the p-values are
    uniform, and within one the per-image u-values are."""
    p = ProbabilisticPCA(d=3, D=16, s2=0.5, seed=3)
    p_values = {"mean_intensity": [], "on_pixels": [], "total_variation": []}
    for data_seed in range(100):
        x = p.sample_data(100, seed=1000 + data_seed)
        check = predictive_check(p.model, None, x, kind="prior", num_draws=100, image_shape=(4, 4))
        assert set(check.names) == set(p_values)
        for name in p_values:
            p_values[name].append(check.p_value(name))
    for name, values in p_values.items():
        # Kolmogorov-Smirnov distance from the uniform, below its 1% critical value 1.63 / 10
        v = torch.tensor(values).sort().values
        grid = torch.arange(1, 101, dtype=torch.float64) / 100
        distance = torch.maximum((grid - v).abs(), (grid - 0.01 - v).abs()).max().item()
        assert distance < 0.163, (name, distance)
    # u = k / S, k uniform on 0..S: 6 of the 101 values lie in the outer 2.5% tails
    assert u_tail_share(100, 0.025) == pytest.approx(6 / 101)
    for name in ("mean_intensity", "total_variation"):
        u = check.u_values(name)
        outer = ((u < 0.025) | (u > 0.975)).double().mean().item()
        # 100 images: 6 expected, binomial sd 2.4
        assert 0.0 <= outer <= 0.14, (name, outer)
        assert abs(u.mean().item() - 0.5) < 0.1


def test_a_gaussian_of_small_fixed_variance_on_binary_data_is_flagged():
    p = ProbabilisticPCA(d=3, D=16, s2=0.5)
    binary = (p.sample_data(400) > p.mu).double()
    model = ml_ppca(binary, d=3, s2=0.01)  # its best fit, scored with an exact posterior
    check = predictive_check(
        model.model, model.exact_guide, binary, kind="posterior", num_draws=100, image_shape=(4, 4)
    )
    flagged = check.extreme()
    assert flagged[LOG_LIK] == 0.0  # every replicate fits its z better than the data do
    assert LOG_LIK in flagged and check.u_values(LOG_LIK).max() < 0.05
    # the replicates' pixel values are spread over (0, 1), the data's are not
    assert check.observed_pixels[1:-1].sum() == 0
    assert check.replicated_pixels[1:-1].sum() > 0.3


def test_the_replicates_follow_the_posterior_and_prior_predictive():
    p = ProbabilisticPCA(d=2, D=6, s2=0.3)
    x = p.sample_data(4)
    s = 4000
    post = predictive_check(p.model, p.exact_guide, x, kind="posterior", num_draws=s)
    m, cov = p.posterior(x)
    # E[x_rep | x] = W m + mu, averaged over coordinates
    mean = (m @ p.W.T + p.mu).mean(-1)
    # Var of a replicate's coordinate mean: (1/D^2) 1^T (W P W^T + s2 I) 1
    one = torch.ones(6)
    sd = math.sqrt(float(one @ (p.W @ cov @ p.W.T + p.s2 * torch.eye(6)) @ one)) / 6
    got = post.replicated["mean_intensity"].mean(0)
    assert torch.all((got - mean).abs() < 4 * sd / math.sqrt(s))
    # E_q[log p(x | z)] in closed form, and E[log p(x_rep | z)] = -D/2 (log 2 pi s2 + 1)
    exact = dist.Normal(m @ p.W.T + p.mu, p.s2**0.5).log_prob(x).sum(-1)
    exact = exact - torch.trace(p.W @ cov @ p.W.T) / (2 * p.s2)
    lik = post.observed[LOG_LIK]
    assert lik.shape == (s, 4)
    assert torch.allclose(lik.mean(0), exact, atol=4 * lik.std(0).max().item() / math.sqrt(s))
    rep = post.replicated[LOG_LIK].mean().item()
    assert rep == pytest.approx(-3 * (math.log(2 * math.pi * p.s2) + 1), abs=0.05)

    prior = predictive_check(p.model, None, x, kind="prior", num_draws=s)
    marginal = p.W @ p.W.T + p.s2 * torch.eye(6)
    sd = math.sqrt(float(one @ marginal @ one)) / 6
    got = prior.replicated["mean_intensity"]
    assert got.mean().item() == pytest.approx(p.mu.mean().item(), abs=4 * sd / math.sqrt(4 * s))
    assert got.std().item() == pytest.approx(sd, rel=0.05)
    assert LOG_LIK not in prior.replicated


def test_blocks_of_images_keep_each_image_with_its_own_replicates():
    p = ProbabilisticPCA(d=2, D=6, s2=0.3)
    x = p.sample_data(10)
    x[3] += 5.0  # one image far from the others: its replicates must follow it
    pyro.set_rng_seed(3)
    blocks = predictive_check(p.model, p.exact_guide, x, num_draws=2000, batch_size=3)
    m, _ = p.posterior(x)
    expected = (m @ p.W.T + p.mu).mean(-1)  # E[mean intensity of x_rep | x_n], per image
    got = blocks.replicated["mean_intensity"].mean(0)
    assert torch.allclose(got, expected, atol=0.05)
    assert blocks.replicated[LOG_LIK].shape == (2000, 10)
    assert blocks.examples.shape == (10, 6)
    assert blocks.replicated_pixels.sum().item() == pytest.approx(1.0)
    assert blocks.observed_pixels.sum().item() == pytest.approx(1.0)
    # the same seed and blocks give the same replicates
    pyro.set_rng_seed(3)
    again = predictive_check(p.model, p.exact_guide, x, num_draws=2000, batch_size=3)
    for name in blocks.names:
        assert torch.equal(again.replicated[name], blocks.replicated[name])


def test_two_latent_sites_are_replicated_through_both():
    p = TwoLevelPPCA()
    x = p.sample_data(300)
    check = predictive_check(p.model, p.exact_guide, x, num_draws=100)
    assert check.extreme() == {}
    assert check.replicated[LOG_LIK].shape == (100, 300)


def test_the_statistics_on_known_images():
    img = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 4)
    assert mean_intensity(img).item() == 0.75
    assert on_pixels(img).item() == 3
    # neighbours: vertical (0,1) (1,1); horizontal (0,1) (1,1): two of four differ by 1
    assert total_variation(img, (2, 2)).item() == 0.5
    assert total_variation(img, (1, 2, 2)).item() == 0.5
    # flat data: consecutive coordinates 0-1, 1-1, 1-1
    assert total_variation(img).item() == pytest.approx(1 / 3)
    assert total_variation(torch.zeros(3, 5, 4), (2, 2)).shape == (3, 5)


def test_bad_arguments_are_refused():
    p = ProbabilisticPCA(d=2, D=6, s2=0.3)
    x = p.sample_data(5)
    with pytest.raises(ValueError, match="kind must be one of"):
        predictive_check(p.model, p.exact_guide, x, kind="likelihood")
    with pytest.raises(ValueError, match="pass one"):
        predictive_check(p.model, None, x, kind="posterior")
    with pytest.raises(ValueError, match="num_draws"):
        predictive_check(p.model, p.exact_guide, x, num_draws=0)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        predictive_check(p.model, p.exact_guide, x[0])

    def two_observed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ p.W.T + p.mu, 1.0).to_event(1), obs=x)
            pyro.sample("y", dist.Normal(z[..., 0], 1.0), obs=x[:, 0])

    with pytest.raises(ValueError, match="one observed site"):
        predictive_check(two_observed, p.exact_guide, x)
