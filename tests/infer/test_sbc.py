"""Simulation-based calibration against exact posteriors: the exact guide is calibrated, guides
too narrow, too wide or shifted are named as such, and resampling repairs what it can."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer.sbc import (
    chi2_uniformity,
    coverage,
    fractional_ranks,
    nominal_coverage,
    simulation_based_calibration,
    verdicts,
)
from pyro_vae.models.ppca import ProbabilisticPCA, TwoLevelPPCA

pytestmark = pytest.mark.usefixtures("float64_default")


PPCA = ProbabilisticPCA(d=3, D=10, s2=0.5)


def scaled_guide(factor: float = 1.0, shift: float = 0.0):
    """The exact posterior with its scale times ``factor`` and its mean moved by ``shift``
    posterior standard deviations."""

    def guide(x):
        loc, cov = PPCA.posterior(x)
        with pyro.plate("data", x.shape[0]):
            loc = loc + shift * cov.diagonal().sqrt()
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov * factor**2))

    return guide


def sbc(guide, n=1000, **kwargs):
    return simulation_based_calibration(PPCA.model, guide, torch.zeros(n, 10), **kwargs)


def test_the_exact_posterior_is_calibrated_in_every_coordinate():
    result = sbc(PPCA.exact_guide, num_proposals=500)
    assert result.names == ("z[0]", "z[1]", "z[2]")
    assert result.ranks.shape == (1000, 3) and result.ranks.min() >= 0 and result.ranks.max() <= 99
    assert verdicts(result.ranks, 99) == ["calibrated"] * 3
    assert torch.all(chi2_uniformity(result.ranks, 99) > 0.01)
    assert torch.all((coverage(result.ranks, 99, 0.9) - 0.9).abs() < 0.03)
    assert torch.all((coverage(result.ranks, 99, 0.5) - 0.5).abs() < 0.05)
    # equal weights: every resampled draw is one of the guide's, the ESS all of them
    assert verdicts(result.resampled_ranks, 99) == ["calibrated"] * 3
    assert torch.allclose(result.ess, torch.full((1000,), 500.0))


@pytest.mark.parametrize(
    "factor, shift, verdict",
    [
        (0.5, 0.0, "over-confident"),  # half the scale: 90% intervals cover about 59%
        (2.0, 0.0, "under-confident"),  # twice the scale: they cover about 99.9%
        # q's draws mostly above the truth: ranks low, and its intervals miss (74% cover)
        (1.0, 1.0, "biased high, over-confident"),
        (1.0, -1.0, "biased low, over-confident"),
        (1.0, 0.3, "biased high"),  # 88.5% cover: within 3 standard errors of 90%
    ],
)
def test_a_miscalibrated_guide_is_named(factor, shift, verdict):
    result = sbc(scaled_guide(factor, shift))
    assert verdicts(result.ranks, 99) == [verdict] * 3
    assert torch.all(chi2_uniformity(result.ranks, 99) < 1e-6)
    cov90 = coverage(result.ranks, 99, 0.9)
    if factor < 1:
        assert torch.all(cov90 < 0.7)
    if factor > 1:
        assert torch.all(cov90 > 0.97)


def test_importance_resampling_repairs_a_wide_guide():
    result = sbc(scaled_guide(1.5), num_proposals=2000)
    assert verdicts(result.ranks, 99) == ["under-confident"] * 3
    assert torch.all((coverage(result.resampled_ranks, 99, 0.9) - 0.9).abs() < 0.03)
    assert torch.all(chi2_uniformity(result.resampled_ranks, 99) > 1e-3)
    assert 100 < result.ess.mean() < 2000


def test_two_latent_sites_are_ranked_coordinate_by_coordinate():
    p = TwoLevelPPCA()
    result = simulation_based_calibration(p.model, p.exact_guide, torch.zeros(800, p.D))
    assert result.names == (*(f"z2[{i}]" for i in range(2)), *(f"z1[{i}]" for i in range(4)))
    assert verdicts(result.ranks, 99) == ["calibrated"] * 6

    def wide(x):  # both layers 1.5 times too wide: resampling repairs both sites
        m1, P1 = p.posterior_z1(x)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(m1, covariance_matrix=P1 * 2.25))
            m2, P2 = p.posterior_z2(z1)
            pyro.sample("z2", dist.MultivariateNormal(m2, covariance_matrix=P2 * 2.25))

    result = simulation_based_calibration(p.model, wide, torch.zeros(800, p.D), num_proposals=2000)
    assert all("under-confident" in v for v in verdicts(result.ranks, 99)[2:])
    assert verdicts(result.resampled_ranks, 99) == ["calibrated"] * 6

    def narrow_top(x):  # q(z2|z1) at half its scale: only z2 is over-confident
        m1, P1 = p.posterior_z1(x)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(m1, covariance_matrix=P1))
            m2, P2 = p.posterior_z2(z1)
            pyro.sample("z2", dist.MultivariateNormal(m2, covariance_matrix=P2 / 4))

    result = simulation_based_calibration(p.model, narrow_top, torch.zeros(800, p.D))
    assert verdicts(result.ranks, 99) == ["over-confident"] * 2 + ["calibrated"] * 4


def test_a_positive_latent_is_ranked_in_its_unconstrained_space():
    """Gamma-Poisson: z ~ Gamma(a, b), x_d ~ Poisson(z); p(z | x) = Gamma(a + sum x, b + D)."""
    a, b, d = 3.0, 2.0, 5

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(torch.tensor(a), torch.tensor(b)))
            pyro.sample(
                "x", dist.Poisson(z.unsqueeze(-1).expand(z.shape + (d,))).to_event(1), obs=x
            )

    def guide(x, factor=1.0):
        with pyro.plate("data", x.shape[0]):
            shape, rate = a + x.sum(-1), torch.full(x.shape[:1], b + d)
            # factor scales the standard deviation at the same mean: shape / f^2, rate / f^2
            pyro.sample("z", dist.Gamma(shape / factor**2, rate / factor**2))

    exact = simulation_based_calibration(model, guide, torch.zeros(1000, d))
    assert exact.names == ("z[0]",)
    assert verdicts(exact.ranks, 99) == ["calibrated"]
    narrow = simulation_based_calibration(model, lambda x: guide(x, 0.5), torch.zeros(1000, d))
    assert verdicts(narrow.ranks, 99) == ["over-confident"]
    # resampling a guide 1.5 times too wide by p(x, z) / q(z | x), Jacobians and all, repairs it
    wide = simulation_based_calibration(
        model, lambda x: guide(x, 1.5), torch.zeros(1000, d), num_proposals=1000
    )
    # (widening a Gamma at its mean moves its median down: the ranks are skewed too)
    assert "under-confident" in verdicts(wide.ranks, 99)[0]
    assert verdicts(wide.resampled_ranks, 99) == ["calibrated"]


def test_the_rank_statistics_on_known_ranks():
    uniform = torch.arange(100).repeat(10).unsqueeze(1)  # each of 0..99 ten times
    assert coverage(uniform, 99, 0.9).item() == pytest.approx(0.9)
    assert coverage(uniform, 99, 0.5).item() == pytest.approx(0.5)
    assert chi2_uniformity(uniform, 99).item() == pytest.approx(1.0)
    assert verdicts(uniform, 99) == ["calibrated"]
    extremes = torch.tensor([0, 99]).repeat(500).unsqueeze(1)
    assert coverage(extremes, 99, 0.9).item() == 0.0
    assert chi2_uniformity(extremes, 99).item() < 1e-12
    assert verdicts(extremes, 99) == ["over-confident"]
    assert verdicts(torch.full((1000, 1), 50), 99) == ["under-confident"]
    f = fractional_ranks(torch.tensor([[0], [99]]), 99)
    assert f.squeeze().tolist() == [0.01, 1.0]


@pytest.mark.parametrize("num_draws", [19, 20, 29, 49, 50, 99])
def test_uniform_ranks_are_calibrated_whatever_the_number_of_draws(num_draws):
    """The 90% interval holds a share of the L + 1 rank values that is 0.9 only when L + 1 is a
    multiple of 20; the verdict compares with that share, not with 0.9."""
    values = num_draws + 1
    balanced = torch.arange(values).repeat(2000 // values + 1).unsqueeze(1)
    assert coverage(balanced, num_draws, 0.9).item() == pytest.approx(
        nominal_coverage(num_draws, 0.9), abs=1e-3
    )
    if values % 20 == 0:
        assert nominal_coverage(num_draws, 0.9) == pytest.approx(0.9)
    g = torch.Generator().manual_seed(num_draws)
    flagged = 0
    for _ in range(40):
        ranks = torch.randint(0, values, (1000, 1), generator=g)
        flagged += verdicts(ranks, num_draws) != ["calibrated"]
    assert flagged <= 3  # about 1% of calibrated coordinates are flagged by chance


def test_resampling_refuses_weights_it_cannot_normalise():
    from types import SimpleNamespace

    from pyro_vae.infer.sbc import _resampled_ranks

    log_w = torch.zeros(20, 4)
    log_w[3, 1] = float("nan")  # row 1: a NaN weight
    log_w[:, 2] = -float("inf")  # row 2: every weight zero
    space = SimpleNamespace(
        sample_guide=lambda k, rows: torch.zeros(k, rows.numel(), 2),
        joint=lambda u, rows, guide: SimpleNamespace(
            log_prior=log_w, log_lik=torch.zeros_like(log_w), log_guide=torch.zeros_like(log_w)
        ),
    )
    rows = torch.arange(10, 14)
    with pytest.raises(ValueError, match=r"simulations \[11, 12\] have importance weights"):
        _resampled_ranks(space, rows, torch.zeros(4, 2), 9, 20)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_draws"):
        sbc(PPCA.exact_guide, n=10, num_draws=0)
    with pytest.raises(ValueError, match="num_proposals"):
        sbc(PPCA.exact_guide, n=10, num_proposals=-1)
