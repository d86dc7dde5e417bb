"""Networks in bfloat16 (VAE.precision): float32 outside the networks, close to float32 inside."""

import pyro
import pytest
import torch

from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO
from pyro_vae.infer import importance_log_likelihood as estimate
from pyro_vae.infer.optim import JointAdam
from pyro_vae.models import MLP, networks_in
from pyro_vae.models.nets import Network
from pyro_vae.training import BetaSchedule, Trainer
from tests.helpers import binary_data, tiny_vae


def test_float32_and_none_change_nothing():
    net = MLP([5, 7, 3])
    x = torch.randn(4, 5)
    for dtype in (None, torch.float32):
        with networks_in(dtype, [net]):
            assert net.compute_dtype is None
            torch.testing.assert_close(net(x), net.forward(x), rtol=0, atol=0)


def test_bf16_networks_compute_in_bf16_and_return_float32():
    torch.manual_seed(0)
    net = MLP([20, 64, 10])
    x = torch.randn(50, 20)
    exact = net(x)
    with networks_in(torch.bfloat16, [net]):
        low = net(x)
    assert low.dtype == torch.float32
    rel = (low - exact).abs().max() / exact.abs().max()
    assert 0 < rel < 2e-2  # rounded to bfloat16's 8 bits, not exact, not garbage
    # restored afterwards: the float32 network again, bit for bit
    assert net.compute_dtype is None
    torch.testing.assert_close(net(x), exact, rtol=0, atol=0)


def test_forward_is_restored_after_an_error():
    net = MLP([3, 4, 2])
    with pytest.raises(RuntimeError, match="boom"), networks_in(torch.bfloat16, [net]):
        raise RuntimeError("boom")
    assert net.compute_dtype is None


def test_vae_precision_covers_encoder_and_decoder_only():
    vae = tiny_vae()
    with vae.precision(torch.bfloat16):
        patched = {
            name
            for name, m in vae.named_modules()
            if getattr(m, "compute_dtype", None) is torch.bfloat16
        }
    assert patched == {"encoder.net", "decoder"}

    class NoNet(torch.nn.Module):
        latent_dim = 3

    vae.encoder = NoNet()
    with pytest.raises(TypeError, match="no network '.net'"):
        vae.precision(torch.bfloat16)


def test_bf16_estimate_is_close_to_float32_on_the_same_draws():
    vae = tiny_vae(data_dim=12, latent_dim=3, hidden=(32,))
    x = binary_data(40)
    pyro.set_rng_seed(0)
    full = estimate(vae.model, vae.guide, x, num_samples=500)
    pyro.set_rng_seed(0)
    with vae.precision(torch.bfloat16):
        low = estimate(vae.model, vae.guide, x, num_samples=500)
    assert low.log_px.dtype == torch.float64
    diff = (low.log_px - full.log_px).abs()
    assert (diff > 0).any()  # the networks really ran in bf16
    assert (diff < 0.02).all()  # per datapoint, against log p(x) of about -8 nats
    assert abs((low.log_px - full.log_px).mean()) < 0.005


def _structured_data(n, seed=0):
    """Noisy copies of four binary prototypes: something for a VAE to learn."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.bernoulli(torch.full((4, 12), 0.5), generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    flips = torch.bernoulli(torch.full((n, 12), 0.05), generator=g)
    return (prototypes[labels] + flips) % 2


def _fit(precision, epochs=20):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = tiny_vae(data_dim=12, latent_dim=3, hidden=(32,))
    x = _structured_data(400)
    trainer = Trainer(
        vae,
        x,
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        lr=1e-2,
        batch_size=50,
        beta=BetaSchedule(),
        val_x=x,
        progress=False,
        precision=precision,
    )
    return vae, [trainer.train_epoch() for _ in range(epochs)]


def test_bf16_training_keeps_float32_parameters_and_learns_like_float32():
    vae, low = _fit(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    assert not any(
        getattr(m, "compute_dtype", None) for m in vae.modules()
    )  # restored after each epoch
    _, full = _fit(None)
    assert low[-1].val_elbo > low[0].val_elbo + 1.0  # it learns
    assert low[-1].val_elbo == pytest.approx(full[-1].val_elbo, abs=0.1)


def test_bf16_gradients_are_close_to_float32():
    vae = tiny_vae(data_dim=12, latent_dim=3, hidden=(32,))
    x = binary_data(64)
    grads = {}
    for dtype in (None, torch.bfloat16):
        pyro.set_rng_seed(1)
        elbo = DeviceTrace_ELBO(max_plate_nesting=1, num_particles=50, vectorize_particles=True)
        with vae.precision(dtype):
            loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        vae.zero_grad()
        loss.backward()
        grads[dtype] = torch.cat([p.grad.flatten() for p in vae.parameters()])
        assert grads[dtype].dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(grads[None], grads[torch.bfloat16], dim=0)
    assert cos > 0.99


@pytest.mark.parametrize(
    "prior, guide, likelihood",
    [
        ("normal", "full", "bernoulli"),
        ("normal", "lowrank", "bernoulli"),
        ("normal", "iaf", "bernoulli"),
        ("vamp", "diagonal", "bernoulli"),
        ("mog", "diagonal", "continuous-bernoulli"),
        ("flow", "diagonal", "beta"),
    ],
)
def test_bf16_works_with_every_kind_of_piece(prior, guide, likelihood):
    vae = tiny_vae(prior=prior, guide=guide, likelihood=likelihood, hidden=(16,))
    x = binary_data(16)
    if likelihood != "bernoulli":
        x = x * 0.9 + 0.05  # inside (0, 1) for densities on the unit interval
    svi = DeviceSVI(vae.model, vae.guide, JointAdam({"lr": 1e-3}), DeviceTrace_ELBO())
    with vae.precision(torch.bfloat16):
        losses = [svi.step(x) for _ in range(3)]
        r = estimate(vae.model, vae.guide, x, num_samples=20)
    assert all(torch.isfinite(loss) and loss.dtype == torch.float32 for loss in losses)
    assert torch.isfinite(r.log_px).all() and (r.log_px >= r.elbo - 1e-9).all()
    assert all(p.dtype == torch.float32 for p in vae.parameters())


def test_precision_blocks_nest_and_a_plain_module_is_refused():
    net = MLP([3, 4, 2])
    with networks_in(torch.bfloat16, [net]):
        with networks_in(torch.float16, [net]):
            assert net.compute_dtype is torch.float16
        assert net.compute_dtype is torch.bfloat16
    assert net.compute_dtype is None
    with pytest.raises(TypeError, match="is not a pyro_vae Network"):
        with networks_in(torch.bfloat16, [torch.nn.Linear(3, 2)]):
            pass
    wrapper = torch.nn.Sequential(MLP([3, 4]), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match="Sequential is not a pyro_vae Network"):
        with networks_in(torch.bfloat16, [wrapper]):  # its last layer would stay float32
            pass


def test_a_network_declared_float32_stays_float32_inside_a_bf16_one():
    class Outer(Network):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(3, 4)
            self.inner = MLP([4, 2])

        def compute(self, x):
            h = self.first(x)
            assert h.dtype == torch.bfloat16
            return self.inner(h.float())

    net = Outer()
    net.compute_dtype = torch.bfloat16
    net.inner.compute_dtype = torch.float32
    seen = {}
    net.inner.register_forward_hook(lambda m, i, out: seen.update(dtype=out.dtype))
    assert net(torch.randn(5, 3)).dtype == torch.float32
    assert seen["dtype"] == torch.float32
