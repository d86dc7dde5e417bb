import math

import pyro
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

from pyro_vae.infer import IWAE_ELBO, DeviceSVI, DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from tests.helpers import binary_data, tiny_vae

# A minibatch of B = 8 out of N = 80 datapoints: the data plate scales log-densities by N/B = 10.
NUM_DATA = 80
INDEX = torch.arange(8) * 10


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def _minibatch_kwargs(beta=1.0):
    return dict(index=INDEX, num_data=NUM_DATA, beta=beta)


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


def test_loss_entry_points_agree_on_a_subsampled_minibatch():
    vae = tiny_vae()
    x = binary_data(8)
    elbo = IWAE_ELBO(num_particles=5)
    kwargs = _minibatch_kwargs()
    pyro.set_rng_seed(1)
    loss = elbo.loss(vae.model, vae.guide, x, **kwargs)
    pyro.set_rng_seed(1)
    loss_and_grads = elbo.loss_and_grads(vae.model, vae.guide, x, **kwargs)
    pyro.set_rng_seed(1)
    differentiable = elbo.differentiable_loss(vae.model, vae.guide, x, **kwargs).item()
    assert isinstance(loss, float) and isinstance(loss_and_grads, float)
    assert loss == pytest.approx(differentiable, rel=1e-6)
    assert loss_and_grads == pytest.approx(differentiable, rel=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_every_entry_point_is_the_minibatch_iwae_bound_not_renyis(beta):
    """-(N/B) sum_b [logsumexp_k log w_kb - log K], log w = log p(x|z) + beta (log p(z) - log q),
    from the same draws computed by hand; RenyiELBO puts N/B inside the log-sum-exp instead."""
    vae = tiny_vae()
    x = binary_data(8)
    k = 5
    kwargs = _minibatch_kwargs(beta)
    pyro.set_rng_seed(2)
    with torch.no_grad():
        q = vae.encoder(x)
        z = q.rsample((k,))  # the draws the guide's plates make from the same seed: (K, B, L)
        lw = vae.likelihood(vae.decoder(z)).log_prob(x) + beta * (
            vae.prior().log_prob(z) - q.log_prob(z)
        )
        bound = torch.logsumexp(lw, dim=0) - math.log(k)
        expected = (-(NUM_DATA / x.shape[0]) * bound.sum()).item()
    elbo = IWAE_ELBO(num_particles=k)
    values = {}
    for name in ("loss", "loss_and_grads", "differentiable_loss"):
        pyro.set_rng_seed(2)
        value = getattr(elbo, name)(vae.model, vae.guide, x, **kwargs)
        values[name] = value.item() if isinstance(value, torch.Tensor) else value
    pyro.set_rng_seed(2)
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    renyi_value = renyi.loss(vae.model, vae.guide, x, **kwargs)
    assert renyi_value != pytest.approx(expected, rel=1e-3)  # the two objectives differ here
    for name, value in values.items():
        assert value == pytest.approx(expected, rel=1e-5), name


def _gradients(vae):
    grads = {name: p.grad.clone() for name, p in vae.named_parameters() if p.grad is not None}
    vae.zero_grad(set_to_none=True)
    return grads


def test_loss_and_grads_gives_the_gradients_of_differentiable_loss(float64):
    vae = tiny_vae()
    x = binary_data(8)
    elbo = IWAE_ELBO(num_particles=5)
    kwargs = _minibatch_kwargs()
    pyro.set_rng_seed(3)
    with poutine.trace(param_only=True) as capture:
        elbo.loss_and_grads(vae.model, vae.guide, x, **kwargs)
    assert capture.trace.nodes  # the parameters Pyro's SVI would step
    stock = _gradients(vae)
    pyro.set_rng_seed(3)
    elbo.differentiable_loss(vae.model, vae.guide, x, **kwargs).backward()
    ours = _gradients(vae)
    assert stock and stock.keys() == ours.keys()
    for name in ours:
        torch.testing.assert_close(stock[name], ours[name], rtol=1e-10, atol=1e-12, msg=name)


def test_stock_pyro_svi_steps_like_device_svi(float64):
    vae = tiny_vae()
    x = binary_data(8)
    kwargs = _minibatch_kwargs()
    start = {name: p.clone() for name, p in vae.state_dict().items()}

    def fit(svi_class):
        vae.load_state_dict(start)
        svi = svi_class(
            vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), loss=IWAE_ELBO(num_particles=5)
        )
        pyro.set_rng_seed(4)
        losses = [float(svi.step(x, **kwargs)) for _ in range(3)]
        return losses, {name: p.clone() for name, p in vae.state_dict().items()}

    stock_losses, stock_params = fit(SVI)
    device_losses, device_params = fit(DeviceSVI)
    assert stock_losses == pytest.approx(device_losses, rel=1e-10)
    for name, p in device_params.items():
        torch.testing.assert_close(stock_params[name], p, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", ["loss", "loss_and_grads", "differentiable_loss"])
def test_every_entry_point_refuses_a_guide_without_rsample(method):
    vae = tiny_vae()
    x = binary_data(8)

    def guide(x, **kwargs):  # Bernoulli has no rsample: a score-function guide
        pyro.module("vae.encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Bernoulli(0.5).expand([3]).to_event(1))

    with pytest.raises(NotImplementedError, match="reparameterised guide sites; 'z'"):
        getattr(IWAE_ELBO(num_particles=3), method)(vae.model, guide, x)
