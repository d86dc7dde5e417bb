"""Small shared builders for tests."""

import os
import sys
from pathlib import Path

import torch

from pyro_vae.config import ModelConfig
from pyro_vae.registry import build_vae


def tiny_vae(
    data_dim=12, latent_dim=3, likelihood="bernoulli", hidden=(16,), image_shape=None, **kwargs
):
    cfg = ModelConfig(latent_dim=latent_dim, hidden=hidden, likelihood=likelihood, **kwargs)
    return build_vae(cfg, data_dim, image_shape=image_shape)


# The networks a test builds for 12-value datapoints: MLPs, or convolutions of 3x4 images.
NETS = {"mlp": {}, "conv": {"net": "conv", "channels": (4,), "image_shape": (3, 4)}}


def binary_data(n=20, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, d, generator=g), generator=g)


def requires_cuda(fn):
    import pytest

    return pytest.mark.cuda(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    )


def evaluation_file(run_dir, k, split="test", precision="fp32", suffix=".json") -> Path:
    """Where ``pyro-vae evaluate`` keeps the evaluation of that setting."""
    return Path(run_dir) / "evaluations" / f"{split}-K{k}-{precision}{suffix}"


def cli_command(*args) -> list[str]:
    """The ``pyro-vae`` command line with ``args``, run by this Python in a subprocess."""
    return [sys.executable, "-m", "pyro_vae.cli", *map(str, args)]


def cli_env(**extra) -> dict[str, str]:
    """A subprocess environment with warnings as errors, plus ``extra``."""
    return {**os.environ, "PYTHONWARNINGS": "error", **extra}


def cli_error(capsys, *argv) -> str:
    """Run the command line in-process; assert one ``pyro-vae: error:`` line and exit status 2,
    and return the line."""
    from pyro_vae.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("pyro-vae: error:") and "\n" not in err, err
    return err
