"""Guide hyperparameters that do not fit the latent space are refused before any work."""

import pytest
import torch

from pyro_vae import jobs
from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import LowRankEncoder
from pyro_vae.options import flag_of
from pyro_vae.registry import build_vae, check_names


def as_flags(error: ConfigError) -> str:
    return error.render(lambda path: flag_of(path.split(".")[-1]))


def test_a_rank_above_the_latent_dimension_is_refused_naming_both_numbers():
    with pytest.raises(ConfigError) as caught:
        check_names(ModelConfig(latent_dim=2, guide="lowrank", rank=100), TrainConfig())
    assert caught.value.option == "model.rank"
    message = as_flags(caught.value)
    assert message.startswith("--rank must be at most --latent-dim (2), got 100: ")
    assert "adds nothing" in message


def test_a_rank_up_to_the_latent_dimension_builds_and_other_guides_ignore_it():
    for rank in (1, 3):
        check_names(ModelConfig(latent_dim=3, guide="lowrank", rank=rank), TrainConfig())
    vae = build_vae(ModelConfig(latent_dim=3, hidden=(8,), guide="lowrank", rank=3), 6)
    q = vae.encoder(torch.rand(5, 6))
    assert q.cov_factor.shape == (5, 3, 3)
    check_names(ModelConfig(latent_dim=2, guide="diagonal", rank=100), TrainConfig())


def test_the_low_rank_encoder_itself_refuses_a_rank_above_its_latent_dimension():
    with pytest.raises(ValueError, match="rank 5 is above latent_dim 2"):
        LowRankEncoder(data_dim=6, latent_dim=2, hidden=(8,), rank=5)


def test_train_refuses_the_rank_before_loading_data_or_making_the_run(tmp_path):
    config = RunConfig().replace(
        data={"dataset": str(tmp_path / "missing.npy")},
        model={"latent_dim": 2, "guide": "lowrank", "rank": 100},
        train={"epochs": 1, "device": "cpu"},
    )
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"model.rank must be at most model.latent_dim \(2\)"):
        jobs.train(config, out, evaluate_at_end=False, progress=False, echo=lambda line: None)
    assert not out.exists()
