"""Training on several processes with ``torch.distributed`` (torchrun) and DistributedDataParallel.

A launch such as ``torchrun --standalone --nproc_per_node=2 ...`` starts one process per device
(rank); :func:`world_from_env` reads the rank and the world size torchrun sets, and
:func:`init_process_group` joins them (gloo on CPU, NCCL on CUDA). With one process nothing
here is used, and training is what it always was.

Each global minibatch of B rows is split into contiguous shards, one per rank
(:func:`shard_bounds`). Rank r scores its b_r rows with the data plate's usual N / b_r scale;
its loss is weighted by W b_r / B, so that DistributedDataParallel's mean of the ranks'
gradients is the gradient of the single-process loss on the whole minibatch
(:class:`DistributedSVI`). Every rank draws the same minibatch order (drawn on rank 0 and
broadcast), and its own noise (draws of z, dynamic binarisation) from a stream seeded by
``(seed, rank, epoch)`` at the start of each epoch (:func:`rank_seed`), so that an epoch can be
replayed exactly, by a resumed run or by a single process that keeps the ranks' streams apart.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.driver import by_blocks, joined, num_blocks, run_blocks
from pyro_vae.infer.svi import DeviceSVI

# How long a rank waits for the others in one collective before the job fails.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a launch.

    Attributes
    ----------
    rank : int
        0 .. size - 1; rank 0 writes files and prints.
    size : int
        The number of processes (W).
    local_rank : int
        The rank on this machine: the CUDA device this process uses.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (one process
    when they are absent)."""
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)"
        ) from None
    if not (size >= 1 and 0 <= rank < size and local_rank >= 0):
        raise ConfigError(f"rank {rank} of a world of {size} processes is not a valid launch")
    return World(rank=rank, size=size, local_rank=local_rank)


def init_process_group(world: World, device: torch.device) -> None:
    """Join the launch's processes (once): NCCL for CUDA devices, gloo for the CPU."""
    if not world.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT
    )


def shard_bounds(batch_size: int, world: World) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a minibatch of ``batch_size`` rows that rank ``world.rank``
    scores: contiguous shards, the first ``batch_size mod W`` ranks one row longer."""
    base, extra = divmod(batch_size, world.size)
    lo = world.rank * base + min(world.rank, extra)
    return lo, lo + base + (1 if world.rank < extra else 0)


def check_shards(num_data: int, batch_size: int, world: World) -> None:
    """Refuse minibatches that would leave a rank without rows (every rank joins every step)."""
    last = num_data % batch_size or batch_size
    smallest = min(batch_size, num_data, last)
    if smallest < world.size:
        raise ConfigError(
            f"a minibatch of {smallest} datapoints cannot be split among {world.size} "
            "processes: every process needs at least one datapoint of every minibatch; choose "
            f"a {{train.batch_size}} of at least {world.size} whose last minibatch of the "
            f"{num_data} training datapoints has at least {world.size} too"
        )


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank ``rank``'s noise in epoch ``epoch`` (0-based) of a run seeded ``seed``:
    independent streams per rank and epoch (NumPy's SeedSequence), in 0 .. 2**32 - 1."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


class _WeightedLoss(nn.Module):
    """The module DistributedDataParallel wraps: its forward is a rank's weighted loss, so that
    DDP's gradient hooks see every parameter the loss uses (the VAE's networks, held as a
    submodule: their parameter names are unchanged)."""

    def __init__(self, vae: nn.Module, elbo):
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, x, index, num_data, beta, weight):
        loss = self.elbo.differentiable_loss(
            self.vae.model, self.vae.guide, x, index=index, num_data=num_data, beta=beta
        )
        return loss * weight


class DistributedSVI(DeviceSVI):
    """:class:`~pyro_vae.infer.svi.DeviceSVI` for one rank of a launch: ``step`` takes the whole
    minibatch's indices, scores this rank's shard, and leaves every rank with the same
    parameters (the gradients are averaged by DistributedDataParallel before the optimiser
    steps). Its loss is this rank's weighted share; the ranks' mean is the minibatch's loss.
    The trainer cuts the shards (:func:`shard_bounds`), so that each rank transforms only its
    own rows.
    """

    def __init__(self, vae: nn.Module, optim, loss, world: World):
        super().__init__(vae.model, vae.guide, optim, loss)
        self.world = world
        self.ddp = DistributedDataParallel(_WeightedLoss(vae, loss))

    def differentiable_loss(self, x, *, index, num_data, beta=1.0, weight=1.0) -> torch.Tensor:
        """This rank's loss on its shard ``x`` (its rows ``index`` of the ``num_data`` training
        datapoints), weighted by ``weight`` = W b_r / B, through DDP (whose backward averages
        the ranks' gradients); :meth:`DeviceSVI.step` steps on it."""
        return self.ddp(x, index, num_data, beta, weight)


def broadcast_permutation(n: int, device: torch.device, world: World) -> torch.Tensor:
    """A random order of ``n`` rows, drawn on rank 0 from its stream and sent to every rank."""
    perm = (
        torch.randperm(n, device=device)
        if world.is_main
        else torch.empty(n, dtype=torch.int64, device=device)
    )
    dist.broadcast(perm, src=0)
    return perm


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank (pickled: a path, a checkpoint's state)."""
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_rank(seed: int, world: World, epoch: int) -> None:
    """Seed this rank's streams (torch, NumPy, Python) for epoch ``epoch``."""
    pyro.set_rng_seed(rank_seed(seed, world.rank, epoch))


def estimate(
    estimator,
    settings,
    model,
    guide,
    x: torch.Tensor,
    *,
    seed: int,
    world: World = SINGLE,
    stream: int = 0,
    max_plate_nesting: int | None = None,
    progress: bool | str | None = False,
):
    """``estimator`` (an :class:`~pyro_vae.infer.estimator.Estimator`) on every row of ``x`` in
    seeded blocks (:func:`pyro_vae.infer.driver.run_blocks`): all of them in one process; with
    several ranks, rank r computes blocks r, r + W, ... and rank 0 gathers them. Either way the
    whole estimate, on rank 0, is bit for bit the same (the other ranks return None)."""

    def compute(blocks):
        return run_blocks(
            estimator,
            settings,
            model,
            guide,
            x,
            seed=seed,
            blocks=blocks,
            stream=stream,
            max_plate_nesting=max_plate_nesting,
            progress=progress if world.is_main else "off",
        )

    if not world.is_distributed:
        return joined(compute(None))
    return _shared(compute, num_blocks(x.shape[0], estimator.block_rows), world)


def sharded(function, x: torch.Tensor, *, seed: int, world: World, stream: int = 0, **bar):
    """``function(rows)`` of each block of ``x`` seeded as the estimators' blocks
    (:func:`pyro_vae.infer.driver.by_blocks`), shared among the ranks as :func:`estimate`
    shares them: the whole result, joined in block order, on rank 0 (None on the others); in
    one process, every block in turn."""
    if not world.is_distributed:
        return joined(by_blocks(function, x, seed=seed, stream=stream, **bar))
    bar = bar if world.is_main else {}
    return _shared(
        lambda blocks: by_blocks(function, x, seed=seed, blocks=blocks, stream=stream, **bar),
        num_blocks(x.shape[0]),
        world,
    )


def _shared(compute, total: int, world: World):
    """``compute(blocks)`` of this rank's blocks (of ``total``), gathered and joined on rank 0."""
    blocks = range(world.rank, total, world.size)
    try:
        mine = {b: _on_host(r) for b, r in compute(blocks).items()}
    except PyroVAEError as e:  # its message goes to rank 0, which raises it: the others return
        mine = _Failed(type(e).__name__, world.rank, e.template)
    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(mine, gathered, dst=0)
    if not world.is_main:
        return None
    for part in gathered:
        if isinstance(part, _Failed):
            raise PyroVAEError(f"on rank {part.rank}: {part.template}")
    return joined({b: r for part in gathered for b, r in part.items()})


@dataclass(frozen=True)
class _Failed:
    """A rank's failed share (exceptions with keyword fields do not pickle)."""

    kind: str
    rank: int
    template: str


def _on_host(result):
    return dataclasses.replace(
        result,
        **{
            f.name: getattr(result, f.name).cpu()
            for f in dataclasses.fields(result)
            if isinstance(getattr(result, f.name), torch.Tensor)
        },
    )
