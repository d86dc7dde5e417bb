import pyro
import pyro.optim
import pytest
import torch

from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO
from pyro_vae.infer.optim import JointAdam
from tests.helpers import binary_data, tiny_vae


def _fit(optim, steps=25, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = tiny_vae()
    x = binary_data(32)
    svi = DeviceSVI(vae.model, vae.guide, optim, DeviceTrace_ELBO(max_plate_nesting=1))
    for _ in range(steps):
        svi.step(x)
    return vae, svi


def test_joint_adam_equals_pyros_per_parameter_adam():
    a, _ = _fit(pyro.optim.Adam({"lr": 0.01}))
    b, _ = _fit(JointAdam({"lr": 0.01}))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_joint_adam_state_round_trip_continues_exactly():
    whole, _ = _fit(JointAdam({"lr": 0.01}), steps=20)
    first, svi = _fit(JointAdam({"lr": 0.01}), steps=10)
    params = {k: v.clone() for k, v in first.state_dict().items()}
    state = svi.optim.get_state()
    rng = torch.get_rng_state()
    pyro.clear_param_store()
    resumed = tiny_vae()
    resumed.load_state_dict(params)
    optim = JointAdam({"lr": 0.01})
    optim.set_state(state)
    torch.set_rng_state(rng)
    svi2 = DeviceSVI(resumed.model, resumed.guide, optim, DeviceTrace_ELBO(max_plate_nesting=1))
    x = binary_data(32)
    for _ in range(10):
        svi2.step(x)
    for name, p in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], p, rtol=0, atol=0, msg=name)


def test_joint_adam_refuses_state_of_other_parameters():
    _, svi = _fit(JointAdam({"lr": 0.01}), steps=2)
    state = svi.optim.get_state()
    state = {**state, "names": state["names"][:-1]}
    with pytest.raises(ValueError, match="optimizer state"):
        svi.optim.set_state(state)
