import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from pyro_vae.infer import IWAE_ELBO, DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from tests.helpers import binary_data, tiny_vae


def test_iwae_elbo_equals_renyi_alpha_zero_without_subsampling():
    vae = tiny_vae()
    x = binary_data(9)
    pyro.set_rng_seed(3)
    ours = IWAE_ELBO(num_particles=5).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    assert ours.item() == pytest.approx(renyi.loss(vae.model, vae.guide, x), rel=1e-6)


def test_iwae_elbo_scales_by_n_over_b_after_the_logsumexp():
    vae = tiny_vae()
    x = binary_data(9)
    pyro.set_rng_seed(3)
    batch = IWAE_ELBO(num_particles=5).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    scaled = IWAE_ELBO(num_particles=5).differentiable_loss(
        vae.model, vae.guide, x, index=torch.arange(9), num_data=90
    )
    assert scaled.item() == pytest.approx(10 * batch.item(), rel=1e-6)


def test_iwae_with_one_particle_is_the_elbo():
    vae = tiny_vae()
    x = binary_data(9)
    pyro.set_rng_seed(4)
    a = IWAE_ELBO(num_particles=1).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)
    assert a.item() == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x), rel=1e-6)


def test_iwae_bound_is_tighter_than_the_elbo_in_expectation():
    vae = tiny_vae()
    x = binary_data(20)
    with torch.no_grad():
        elbo = DeviceTrace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
        loss_elbo = elbo.differentiable_loss(vae.model, vae.guide, x).item()
        iwae = (
            sum(
                IWAE_ELBO(num_particles=20).differentiable_loss(vae.model, vae.guide, x).item()
                for _ in range(100)
            )
            / 100
        )
    assert iwae < loss_elbo - 0.1  # a smaller loss: a larger bound


@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_meanfield_falls_back_to_the_sampled_kl_for_priors_without_closed_form(prior):
    vae = tiny_vae(prior=prior)
    x = binary_data(9)
    pyro.set_rng_seed(8)
    a = DeviceTraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(8)
    b = DeviceTrace_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(a, b)
