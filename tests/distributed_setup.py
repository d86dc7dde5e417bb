"""What the distributed-training test's ranks and its single-process reference share."""

import pyro
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.registry import build_vae

SEED = 3
BATCH = 15  # 50 rows: minibatches of 15, 15, 15, 5; shards of 8/7 and 3/2 on two ranks
EPOCHS = 2
N, D = 50, 6


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Training probabilities (binarised per minibatch) and binary validation data, float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, D, generator=g, dtype=torch.float64)
    val = torch.bernoulli(torch.rand(20, D, generator=g, dtype=torch.float64), generator=g)
    return x, val


def transform(xb: torch.Tensor) -> torch.Tensor:
    """Dynamic binarisation: noise from the rank's own stream."""
    return torch.bernoulli(xb)


def fresh_vae():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    return build_vae(ModelConfig(latent_dim=2, hidden=(8,)), D).double()
