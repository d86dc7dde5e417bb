"""One rank of the distributed-training test (tests/test_distributed.py), run by torchrun.

Trains a small float64 VAE with the Trainer on gloo, then saves this rank's parameters, its
epochs' objectives and validation ELBOs to OUT/rank{RANK}.pt.
"""

import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.distributed import init_process_group, world_from_env
from pyro_vae.infer import DeviceTrace_ELBO
from pyro_vae.infer.optim import JointAdam
from pyro_vae.training import Trainer
from tests.distributed_setup import BATCH, EPOCHS, SEED, data, fresh_vae, transform


def main(out: Path) -> None:
    world = world_from_env()
    init_process_group(world, torch.device("cpu"))
    torch.set_num_threads(1)
    vae = fresh_vae()
    x, val = data()
    trainer = Trainer(
        vae,
        x,
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        optim=JointAdam({"lr": 0.05}),
        batch_size=BATCH,
        transform=transform,
        val_x=val,
        world=world,
        seed=SEED,
    )
    stats = [trainer.train_epoch() for _ in range(EPOCHS)]
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    torch.save(
        {
            "params": state,
            "objectives": [s.train_objective for s in stats],
            "val": [s.val_elbo for s in stats],
            "world": world.size,
        },
        out / f"rank{world.rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    pyro.enable_validation(False)
    main(Path(sys.argv[1]))
