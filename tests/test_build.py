"""The one build step: a config becomes its data, model, objective and optimiser once."""

import pytest
import torch

from pyro_vae.build import build
from pyro_vae.config import RunConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.training import Trainer

CONFIG = RunConfig().replace(
    model={"latent_dim": 2, "hidden": (16,)},
    train={"epochs": 1, "batch_size": 100, "device": "cpu", "warmup_epochs": 2},
)


def test_the_same_config_builds_the_same_objects_bit_for_bit():
    a, b = build(CONFIG), build(CONFIG)
    for (name, p), (_, q) in zip(
        a.vae.state_dict().items(), b.vae.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    assert a.splits.keys() == {"train", "val"}
    assert all(torch.equal(a.splits[k], b.splits[k]) for k in a.splits)
    other = build(CONFIG.replace(train={"seed": 1}))
    assert not torch.equal(
        next(iter(other.vae.state_dict().values())), next(iter(a.vae.state_dict().values()))
    )


def test_the_built_objects_follow_the_config():
    built = build(CONFIG.replace(train={"elbo": "iwae", "num_particles": 3, "lr": 0.01}))
    assert isinstance(built.elbo, IWAE_ELBO) and built.elbo.num_particles == 3
    assert built.optim.pt_optim_args["lr"] == 0.01
    n = built.splits["train"].shape[0]
    assert built.beta.warmup_steps == 2 * -(-n // 100)  # two epochs of steps
    assert built.transform is not None  # dynamic binarisation, per minibatch
    assert built.precision == torch.float32 and built.device == torch.device("cpu")


def test_a_trainer_of_the_built_objects_trains_them():
    built = build(CONFIG)
    trainer = built.trainer(progress=False)
    assert trainer.optim is built.optim and trainer.vae is built.vae
    before = {k: v.clone() for k, v in built.vae.state_dict().items()}
    trainer.train_epoch()
    assert any(not torch.equal(before[k], v) for k, v in built.vae.state_dict().items())


def test_a_trainer_takes_a_learning_rate_or_an_optimiser_not_both():
    built = build(CONFIG)
    x = built.splits["train"]
    with pytest.raises(TypeError, match="either lr"):
        Trainer(built.vae, x, elbo=built.elbo, lr=0.1, optim=built.optim, batch_size=10)
    with pytest.raises(TypeError, match="either lr"):
        Trainer(built.vae, x, elbo=built.elbo, batch_size=10)


def test_an_unknown_name_is_refused_before_any_data_are_loaded():
    with pytest.raises(ConfigError, match="unknown model.prior 'nope'"):
        build(CONFIG.replace(model={"prior": "nope"}, data={"dataset": "/no/such/file.npz"}))
