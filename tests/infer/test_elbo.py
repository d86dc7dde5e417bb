import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.infer import (
    DeviceSVI,
    DeviceTrace_ELBO,
    DeviceTraceMeanField_ELBO,
    importance_log_likelihood,
)
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.infer.optim import JointAdam
from tests.helpers import NETS, binary_data, tiny_vae


@pytest.mark.parametrize(
    "ours, theirs",
    [(DeviceTrace_ELBO, Trace_ELBO), (DeviceTraceMeanField_ELBO, TraceMeanField_ELBO)],
)
@pytest.mark.parametrize("vectorize", [False, True])
def test_device_elbos_equal_pyros_on_the_same_draws(ours, theirs, vectorize):
    vae = tiny_vae()
    x = binary_data(9)
    kwargs = dict(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    index = torch.arange(9)
    pyro.set_rng_seed(11)
    a = ours(**kwargs).differentiable_loss(vae.model, vae.guide, x, index=index, num_data=90)
    pyro.set_rng_seed(11)
    b = theirs(**kwargs).differentiable_loss(vae.model, vae.guide, x, index=index, num_data=90)
    torch.testing.assert_close(a, b)
    grads_a = torch.autograd.grad(a, list(vae.parameters()))
    grads_b = torch.autograd.grad(b, list(vae.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb)


def test_trace_and_meanfield_agree_in_expectation_on_the_vae():
    vae = tiny_vae(data_dim=12, latent_dim=3).double()
    x = binary_data(10).double()
    n = 20000
    with torch.no_grad():
        trace = DeviceTrace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
        mf = DeviceTraceMeanField_ELBO(
            num_particles=n, vectorize_particles=True, max_plate_nesting=1
        )
        a = trace.differentiable_loss(vae.model, vae.guide, x).item()
        b = mf.differentiable_loss(vae.model, vae.guide, x).item()
        # the importance estimator's mean log weight is a third estimate of the same ELBO
        c = -importance_log_likelihood(vae.model, vae.guide, x, num_samples=n).elbo.sum().item()
    assert a == pytest.approx(b, abs=0.15), (a, b)
    assert c == pytest.approx(b, abs=0.15), (c, b)


def test_vae_k1_log_px_equals_a_single_sample_trace_elbo():
    vae = tiny_vae()
    x = binary_data(8)
    pyro.set_rng_seed(5)
    r = importance_log_likelihood(vae.model, vae.guide, x, num_samples=1, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    torch.testing.assert_close(r.log_px, r.elbo)
    assert r.elbo.sum().item() == pytest.approx(-loss, abs=1e-4)


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
@pytest.mark.parametrize(
    "make_optim", [lambda: pyro.optim.Adam({"lr": 1e-2}), lambda: JointAdam({"lr": 1e-2})]
)
@pytest.mark.parametrize(
    "make_elbo",
    [
        lambda: DeviceTrace_ELBO(max_plate_nesting=1),
        lambda: IWAE_ELBO(num_particles=3, max_plate_nesting=1),
    ],
    ids=["trace", "iwae"],
)
def test_svi_step_makes_no_host_sync(monkeypatch, make_optim, precision, make_elbo):
    """No .item(), float() or bool() of a tensor inside a training step.

    Exempt: torch Adam's step counters, which live on the CPU even when training on CUDA.
    """
    vae = tiny_vae()
    x = binary_data(16)
    svi = DeviceSVI(vae.model, vae.guide, make_optim(), make_elbo())
    svi.step(x)  # first step creates the optimizers

    counters = [s["step"] for opt in svi.optim.optim_objs.values() for s in opt.state.values()]
    if isinstance(svi.optim, JointAdam):
        counters = [s["step"] for s in svi.optim.optimizer.state.values()]
    assert counters and all(c.device.type == "cpu" for c in counters)
    originals = {}

    def forbidding(name):
        def forbidden(self, *args, **kwargs):
            if any(self is c for c in counters):
                return originals[name](self, *args, **kwargs)
            raise AssertionError(f"host sync inside the SVI step: Tensor.{name}")

        return forbidden

    with pyro.validation_enabled(False), vae.precision(precision):
        for name in ("item", "__bool__", "__float__", "tolist", "cpu", "numpy"):
            originals[name] = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, forbidding(name))
        loss = svi.step(x, index=torch.arange(16), num_data=160, beta=0.5)
        monkeypatch.undo()
    assert loss.shape == () and not loss.requires_grad


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name", ["trace", "meanfield", "iwae"])
def test_every_registered_objective_agrees_through_every_entry_point_and_trains_under_svi(
    name, net
):
    """loss, loss_and_grads and differentiable_loss give one value on the same draws, so the
    objective works under Pyro's stock SVI as under DeviceSVI, with MLPs and convolutions."""
    from pyro_vae.config import TrainConfig
    from pyro_vae.registry import build_elbo

    vae = tiny_vae(**NETS[net])
    x = binary_data(12)
    elbo = build_elbo(TrainConfig(elbo=name, num_particles=3))
    kwargs = dict(index=torch.arange(12), num_data=48)
    values = []
    for method in ("loss", "loss_and_grads", "differentiable_loss"):
        pyro.set_rng_seed(4)
        value = getattr(elbo, method)(vae.model, vae.guide, x, **kwargs)
        values.append(value.detach().item() if torch.is_tensor(value) else value)
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert values[0] == pytest.approx(values[2], rel=1e-6)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(x) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
