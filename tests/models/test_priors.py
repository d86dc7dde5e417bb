import math

import pyro
import pytest
import torch

from pyro_vae.models import (
    DiagonalNormalEncoder,
    FlowPrior,
    MixtureOfGaussians,
    StandardNormal,
    VampPrior,
)
from pyro_vae.models.priors import StudentT


def _grid_1d(lo=-12.0, hi=12.0, n=20001):
    z = torch.linspace(lo, hi, n, dtype=torch.float64)
    return z, z[1] - z[0]


def _check_1d_prior(prior):
    """Density integrates to 1 and sample moments match the density's (goodness of fit)."""
    prior = prior.double()
    z, dz = _grid_1d()
    with torch.no_grad():
        p = prior().log_prob(z[:, None]).exp()
        samples = prior().sample((200000,))[:, 0]
    assert (p.sum() * dz).item() == pytest.approx(1.0, abs=1e-4)
    mean = (p * z).sum() * dz
    var = (p * (z - mean) ** 2).sum() * dz
    se = math.sqrt(var.item() / samples.shape[0])
    assert samples.mean().item() == pytest.approx(mean.item(), abs=5 * se)
    assert samples.var().item() == pytest.approx(var.item(), rel=0.03)


def test_mixture_prior_goodness_of_fit():
    prior = MixtureOfGaussians(latent_dim=1, num_components=3)
    with torch.no_grad():
        prior.locs.copy_(torch.tensor([[-3.0], [0.5], [4.0]]))
        prior.log_scales.copy_(torch.tensor([[0.2], [-0.5], [0.0]]))
        prior.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
    _check_1d_prior(prior)


def test_vamp_prior_goodness_of_fit():
    encoder = DiagonalNormalEncoder(data_dim=4, latent_dim=1, hidden=(8,)).double()
    _check_1d_prior(VampPrior(encoder, data_dim=4, num_components=5))


def test_flow_prior_goodness_of_fit_in_two_dimensions():
    """Density integrates to 1 and its mean matches the samples' (Monte Carlo integral with a
    broad Gaussian proposal: a grid under-resolves the flow's sharp features)."""
    torch.manual_seed(1)
    prior = FlowPrior(latent_dim=2, num_flows=2).double()
    with torch.no_grad():  # move the flow away from its initialisation
        for p in prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
        proposal = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 2.0)
        z = proposal.sample((400000,))
        w = (prior().log_prob(z) - proposal.log_prob(z).sum(-1)).exp()
        samples = prior().sample((200000,))
    assert w.mean().item() == pytest.approx(1.0, abs=0.01)
    mean = (w[:, None] * z).mean(0) / w.mean()
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)


def test_one_component_mixture_equals_the_standard_normal():
    mog = MixtureOfGaussians(latent_dim=3, num_components=1)
    z = torch.randn(10, 3)
    torch.testing.assert_close(mog().log_prob(z), StandardNormal(3)().log_prob(z))


def test_vamp_log_prob_is_the_log_mean_of_the_guide_at_the_pseudo_inputs():
    encoder = DiagonalNormalEncoder(data_dim=6, latent_dim=2, hidden=(8,))
    prior = VampPrior(encoder, data_dim=6, num_components=4)
    z = torch.randn(7, 2)
    by_hand = torch.stack([encoder(u).log_prob(z) for u in prior.pseudo_inputs])  # (4, 7)
    expected = torch.logsumexp(by_hand, 0) - math.log(4)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_vamp_prior_shares_the_encoder_without_owning_its_parameters():
    encoder = DiagonalNormalEncoder(data_dim=6, latent_dim=2, hidden=(8,))
    prior = VampPrior(encoder, data_dim=6, num_components=4)
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_inputs"]
    loss = -prior().log_prob(torch.randn(3, 2)).sum()
    loss.backward()
    assert encoder.net[0].weight.grad is not None  # the prior trains the encoder too


def test_flow_prior_needs_two_dimensions():
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        FlowPrior(latent_dim=1)


def test_priors_sample_inside_pyro():
    for prior in (MixtureOfGaussians(3, 2), FlowPrior(3)):
        with pyro.plate("data", 5):
            z = pyro.sample("z", prior())
        assert z.shape == (5, 3)


def test_student_t_prior_goodness_of_fit():
    _check_1d_prior(StudentT(latent_dim=1, df=8.0))


def test_student_t_prior_is_the_product_of_its_coordinates_and_nears_the_normal_as_df_grows():
    z = torch.randn(6, 3, dtype=torch.float64) * 2
    by_hand = torch.distributions.StudentT(2.5).log_prob(z).sum(-1)
    torch.testing.assert_close(StudentT(3, df=2.5).double()().log_prob(z), by_hand)
    wide = StudentT(3, df=1e7).double()().log_prob(z)
    torch.testing.assert_close(wide, StandardNormal(3).double()().log_prob(z), atol=1e-3, rtol=0)


def test_student_t_prior_is_built_from_the_config_with_its_df():
    from pyro_vae.config import ModelConfig
    from pyro_vae.registry import build_vae

    vae = build_vae(ModelConfig(latent_dim=2, prior="student-t", df=5.0), data_dim=4)
    assert isinstance(vae.prior, StudentT)
    torch.testing.assert_close(vae.prior.df, torch.full((2,), 5.0))
