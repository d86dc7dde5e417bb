"""Every prior x likelihood x guide x network: a short fit runs, and the estimator stays
consistent."""

import itertools

import pyro
import pyro.optim
import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.data import dequantize
from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.registry import GUIDES, LIKELIHOODS, NETWORKS, PRIORS, build_vae

D, LEVELS = 6, 256
IMAGE = (2, 3)  # the datapoints as images, for the convolutional networks


def data_for(likelihood: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, LEVELS, (n, D), generator=g) / (LEVELS - 1)
    if likelihood == "bernoulli":
        return torch.bernoulli(levels, generator=g)
    if likelihood == "discretized-logistic":
        return levels
    if likelihood in ("beta", "continuous-bernoulli"):
        return dequantize(levels, LEVELS, torch.rand(n, D, generator=g))
    return torch.randn(n, D, generator=g)


@pytest.mark.parametrize(
    "prior, likelihood, guide, net",
    list(itertools.product(PRIORS, LIKELIHOODS, GUIDES, NETWORKS)),
)
def test_short_fit_and_consistent_estimates(prior, likelihood, guide, net):
    cfg = ModelConfig(
        latent_dim=2,
        hidden=(8,),
        prior=prior,
        likelihood=likelihood,
        guide=guide,
        num_components=3,
        flows=1,
        net=net,
        channels=(3,),
    )
    vae = build_vae(cfg, D, levels=LEVELS, image_shape=IMAGE)
    x = data_for(likelihood, 48)
    train, test = x[:40], x[40:]
    vae.likelihood.check_data(x)
    svi = DeviceSVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), DeviceTrace_ELBO(max_plate_nesting=1)
    )
    losses = [svi.step(train).item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    r = importance_log_likelihood(vae.model, vae.guide, test, num_samples=64)
    assert torch.isfinite(r.log_px).all() and torch.isfinite(r.elbo).all()
    assert (r.log_px >= r.elbo - 1e-6).all()
    pyro.set_rng_seed(1)
    one = importance_log_likelihood(vae.model, vae.guide, test, num_samples=1)
    torch.testing.assert_close(one.log_px, one.elbo)
