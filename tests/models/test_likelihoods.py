import math

import pytest
import torch

from pyro_vae.data import dequantize
from pyro_vae.errors import DataError, UnsupportedDataError
from pyro_vae.models import (
    BernoulliLikelihood,
    BetaLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    LearnedLaplaceLikelihood,
    Support,
)
from pyro_vae.models.likelihoods import DiscretizedLogisticDistribution

CONTINUOUS = {
    "gaussian": (GaussianLikelihood(0.7), (-15.0, 15.0)),
    "gaussian-learned": (LearnedGaussianLikelihood(0.01), (-15.0, 15.0)),
    "laplace": (LearnedLaplaceLikelihood(0.01), (-30.0, 30.0)),
    "continuous-bernoulli": (ContinuousBernoulliLikelihood(), (0.0, 1.0)),
    "beta": (BetaLikelihood(), (0.0, 1.0)),
}


def _h(lik, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, lik.params_per_dim * d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_densities_integrate_to_one_and_match_their_samples(name):
    lik, (lo, hi) = CONTINUOUS[name]
    lik = lik.double()
    h = _h(lik)
    # midpoint rule on a fine grid (avoids the end points, where Beta may diverge)
    n = 400000
    x = lo + (torch.arange(n, dtype=torch.float64) + 0.5) * (hi - lo) / n
    p = lik(h).log_prob(x[:, None]).exp()
    assert (p.sum() * (hi - lo) / n).item() == pytest.approx(1.0, abs=2e-3)
    mean = (p * x).sum() * (hi - lo) / n
    samples = lik(h).sample((100000,))[:, 0, 0]
    sd = samples.std().item()
    assert samples.mean().item() == pytest.approx(mean.item(), abs=5 * sd / math.sqrt(1e5) + 1e-9)
    torch.testing.assert_close(lik.mean(h)[0, 0], mean, atol=5e-3, rtol=0)
    lik.check_data(samples[:, None])  # samples lie in the declared support


def test_continuous_bernoulli_normaliser_matters():
    """Without its normaliser the density would not integrate to 1 (here 0.79 for logit 2)."""
    lik = ContinuousBernoulliLikelihood().double()
    h = torch.tensor([[2.0]], dtype=torch.float64)
    x = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000
    lp = lik(h).log_prob(x[:, None])
    unnormalised = x * math.log(torch.sigmoid(h)) + (1 - x) * math.log(1 - torch.sigmoid(h))
    assert lp.exp().mean().item() == pytest.approx(1.0, abs=1e-6)
    assert unnormalised.exp().mean().item() < 0.9


def test_bernoulli_masses_sum_to_one():
    lik = BernoulliLikelihood()
    h = torch.randn(1, 1)
    total = sum(lik(h).log_prob(torch.tensor([[v]])).exp() for v in (0.0, 1.0))
    assert total.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("loc, scale", [(0.3, 0.05), (0.0, 0.001), (1.2, 0.3), (0.5, 5.0)])
def test_discretized_logistic_masses_sum_to_one_and_match_samples(levels, loc, scale):
    d = DiscretizedLogisticDistribution(
        torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64), levels
    )
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    p = d.log_prob(grid[:, None]).exp()[:, 0]
    assert torch.isfinite(d.log_prob(grid[:, None])).all()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    samples = d.sample((50000,))[:, 0]
    freq = torch.stack([(samples == g).double().mean() for g in grid])
    assert (freq - p).abs().max().item() < 0.01


def test_discretized_logistic_likelihood_checks_its_grid():
    lik = DiscretizedLogisticLikelihood(floor=0.001, levels=256)
    lik.check_data(torch.tensor([[0.0, 3 / 255, 1.0]]))
    with pytest.raises(DataError, match="quantised"):
        lik.check_data(torch.tensor([[0.5 / 255]]))


@pytest.mark.parametrize(
    "lik, x, message, support",
    [
        (BernoulliLikelihood(), [[0.5]], "binarise the data", "binary"),
        (ContinuousBernoulliLikelihood(), [[1.5]], r"\[1.5, 1.5\]", "unit_interval"),
        (BetaLikelihood(), [[0.0, 0.5]], "dequantise them uniformly", "open_unit_interval"),
        (BetaLikelihood(), [[1.0]], "strictly inside", "open_unit_interval"),
        (DiscretizedLogisticLikelihood(0.01, 256), [[0.5 / 255]], "k / 255", "levels"),
    ],
    ids=["bernoulli-grey", "cb-above-1", "beta-at-0", "beta-at-1", "dlogistic-off-grid"],
)
def test_wrong_data_are_rejected_with_the_fix_in_words(lik, x, message, support):
    with pytest.raises(UnsupportedDataError, match=message) as e:
        lik.check_data(torch.tensor(x), "the test split")
    text = str(e.value)
    assert lik.name in text and "the test split" in text
    assert "--" not in text  # the library names no command-line flag; the CLI adds them
    assert e.value.support == support and e.value.distribution == lik.name
    assert e.value.low == pytest.approx(min(x[0])) and e.value.num_invalid >= 1


def test_supports_are_declared():
    assert BernoulliLikelihood().support is Support.BINARY and BernoulliLikelihood().is_discrete
    assert DiscretizedLogisticLikelihood(0.01).is_discrete
    assert (
        not BetaLikelihood().is_discrete and BetaLikelihood().support is Support.OPEN_UNIT_INTERVAL
    )


def test_uniform_dequantisation_stays_in_its_bin():
    levels = 256
    k = torch.arange(levels, dtype=torch.float64)
    x = dequantize(k / (levels - 1), levels)
    assert ((x > 0) & (x < 1)).all()
    torch.testing.assert_close(torch.floor(x * levels), k)
