"""The two-stochastic-layer VAE: p(z2) p(z|z2) p(x|z) with q(z|x) q(z2|z)."""

import json

import pyro
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.models import TwoLayerVAE
from pyro_vae.registry import GUIDES, PRIORS, build_vae
from tests.helpers import binary_data


def _two_layer(**kwargs) -> TwoLayerVAE:
    pyro.clear_param_store()
    cfg = ModelConfig(latent_dim=3, hidden=(16,), top_latent_dim=2, top_hidden=(8,), **kwargs)
    return build_vae(cfg, 12)


def test_the_model_and_guide_have_both_layers_in_the_data_plate_weighted_by_beta():
    vae = _two_layer()
    assert isinstance(vae, TwoLayerVAE) and (vae.latent_dim, vae.top_latent_dim) == (3, 2)
    x = binary_data(5)
    guide = poutine.trace(vae.guide).get_trace(x, beta=0.5)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, beta=0.5)
    for trace in (guide, model):
        for name, size in (("z", 3), ("z2", 2)):
            site = trace.nodes[name]
            assert site["value"].shape == (5, size), name
            assert site["scale"] == 0.5, name  # the KL weight covers both layers
            assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert model.nodes["x"]["scale"] == 1.0
    # p(z | z2) is evaluated at the guide's z2: the model reads z2 before z
    z2 = guide.nodes["z2"]["value"]
    expected = vae.transition(z2).log_prob(guide.nodes["z"]["value"])
    torch.testing.assert_close(model.nodes["z"]["fn"].log_prob(model.nodes["z"]["value"]), expected)


@pytest.mark.parametrize("guide", list(GUIDES))
@pytest.mark.parametrize("prior", [p for p in PRIORS if p != "vamp"])
def test_every_prior_and_guide_fits_and_estimates_consistently_with_two_layers(prior, guide):
    vae = _two_layer(prior=prior, guide=guide, num_components=3, flows=1)
    x = binary_data(24)
    svi = DeviceSVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), DeviceTrace_ELBO(max_plate_nesting=1)
    )
    losses = [svi.step(x[:16]).item() for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses)))
    r = importance_log_likelihood(vae.model, vae.guide, x[16:], num_samples=64)
    assert torch.isfinite(r.log_px).all() and (r.log_px >= r.elbo - 1e-6).all()
    pyro.set_rng_seed(1)
    one = importance_log_likelihood(vae.model, vae.guide, x[16:], num_samples=1)
    torch.testing.assert_close(one.log_px, one.elbo)


def test_a_vampprior_over_the_upper_layer_is_refused_and_old_configs_have_one_layer():
    with pytest.raises(ConfigError, match="prior vamp is built from q"):
        _two_layer(prior="vamp")
    old = json.loads(RunConfig().to_json())
    del old["model"]["top_latent_dim"], old["model"]["top_hidden"]
    model = RunConfig.from_dict(old).model
    assert model.top_latent_dim is None and model.top_hidden == (100, 100)
    with pytest.raises(ConfigError) as e:
        RunConfig(model=ModelConfig(top_hidden=(0,)))
    assert e.value.option == "model.top_hidden"


def test_samples_come_down_both_layers_and_bf16_covers_all_four_networks():
    vae = _two_layer()
    drawn = vae.sample(7)
    assert drawn.z.shape == (7, 3) and drawn.sample.shape == (7, 12)
    assert len(vae.networks()) == 4
    x = binary_data(4)
    with vae.precision(torch.bfloat16):
        assert all(net.compute_dtype == torch.bfloat16 for net in vae.networks())
        half = vae.upper(vae.encoder(x).mean).mean
    assert not torch.equal(half, vae.upper(vae.encoder(x).mean).mean)
