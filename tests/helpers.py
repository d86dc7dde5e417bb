"""Small shared builders for tests."""

from pathlib import Path

import torch

from pyro_vae.config import ModelConfig
from pyro_vae.registry import build_vae


def tiny_vae(data_dim=12, latent_dim=3, likelihood="bernoulli", hidden=(16,), **kwargs):
    cfg = ModelConfig(latent_dim=latent_dim, hidden=hidden, likelihood=likelihood, **kwargs)
    return build_vae(cfg, data_dim)


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
