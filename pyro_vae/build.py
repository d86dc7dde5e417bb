"""One build step: a run's config becomes its data, transforms, model, objective and optimiser.

:func:`build` makes them once, in the order that fixes their random draws (the seed, the data
and their checks, then the networks' initialisation), and returns them as :class:`Built`;
training (:meth:`Built.trainer`), the jobs and the experiments receive these objects instead of
looking names up again. Names become objects only through :mod:`pyro_vae.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.infer
import pyro.optim
import torch

from pyro_vae import registry
from pyro_vae.config import DEVICES, RunConfig
from pyro_vae.data import load_dataset, minibatch_transform, prepare_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.transforms import check_density_data
from pyro_vae.distributed import SINGLE, World
from pyro_vae.errors import ConfigError
from pyro_vae.infer.optim import JointAdam
from pyro_vae.models import VAE, Likelihood
from pyro_vae.training import BetaSchedule, LRSchedule, Trainer


@dataclass(frozen=True)
class Built:
    """What :func:`build` made of a config.

    Attributes
    ----------
    config : RunConfig
        The config it was made from.
    device : torch.device
        Where the model and the splits are.
    dataset : Dataset
        The data set as stored.
    splits : dict of str to Tensor
        The prepared splits (:func:`prepare_splits`), on ``device``.
    transform : callable or None
        The per-minibatch transform of the training split (dynamic binarisation or
        dequantisation; :func:`pyro_vae.data.minibatch_transform`).
    vae : VAE
        The model and guide, freshly initialised, on ``device``.
    elbo : pyro.infer.ELBO
        The training objective.
    optim : pyro.optim.PyroOptim
        The optimiser (Adam at the config's learning rate).
    beta : BetaSchedule
        The KL weight per step (its warm-up in steps of this training split).
    schedule : LRSchedule
        The learning rate over epochs (``train.lr_schedule``).
    precision : torch.dtype
        The networks' precision in training steps.
    """

    config: RunConfig
    device: torch.device
    dataset: Dataset
    splits: dict[str, torch.Tensor]
    transform: Callable[[torch.Tensor], torch.Tensor] | None
    vae: VAE
    elbo: pyro.infer.ELBO
    optim: pyro.optim.PyroOptim
    beta: BetaSchedule
    precision: torch.dtype
    schedule: LRSchedule

    def trainer(self, *, progress: bool | str = False, world: World = SINGLE) -> Trainer:
        """A :class:`~pyro_vae.training.Trainer` of these objects on the training split (this
        rank's, when ``world`` holds several: :mod:`pyro_vae.distributed`)."""
        t = self.config.train
        return Trainer(
            self.vae,
            self.splits["train"],
            elbo=self.elbo,
            optim=self.optim,
            batch_size=t.batch_size,
            beta=self.beta,
            transform=self.transform,
            val_x=self.splits.get("val"),
            log_every=t.log_every,
            progress=progress,
            precision=self.precision,
            world=world,
            seed=t.seed,
        )


def build(
    config: RunConfig, *, splits: tuple[str, ...] = ("train", "val"), world: World = SINGLE
) -> Built:
    """Everything ``config`` describes, made once: the device, the data set and its ``splits``
    (checked against the likelihood), the per-minibatch transform, the VAE (a fresh Pyro param
    store, the networks initialised from ``train.seed``), the objective, the optimiser, the KL
    schedule and the precision. The same config builds the same objects, bit for bit."""
    registry.check_names(config.model, config.train)
    device = resolve_device(config.train.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.train.seed)
    dataset = load_data(config, world)
    likelihood = registry.build_likelihood(config.model, dataset.data_dim, dataset.levels)
    data = prepare_splits(config, dataset, likelihood, splits)
    vae = registry.build_vae(
        config.model, dataset.data_dim, dataset.levels, dataset.image_shape
    ).to(device)
    t = config.train
    steps_per_epoch = math.ceil(data["train"].shape[0] / t.batch_size) if "train" in data else 0
    optim = JointAdam({"lr": t.lr}, clip_norm=t.clip_norm)
    schedule = LRSchedule(t.lr_schedule, optim, vae, epochs=t.epochs, patience=t.lr_patience)
    return Built(
        config=config,
        device=device,
        dataset=dataset,
        splits={name: x.to(device) for name, x in data.items()},
        transform=minibatch_transform(config.data.binarize, config.data.dequantize, dataset.levels),
        vae=vae,
        elbo=registry.build_elbo(t),
        optim=optim,
        beta=BetaSchedule(t.beta, t.warmup_epochs * steps_per_epoch),
        precision=registry.build_precision(t.precision),
        schedule=schedule,
    )


def resolve_device(name: str) -> torch.device:
    """The device named ``auto`` (CUDA when there is one, else the CPU), ``cpu`` or ``cuda``;
    a :class:`~pyro_vae.errors.ConfigError` for any other name (every command's check)."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{train.device} cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def load_data(config: RunConfig, world: World = SINGLE) -> Dataset:
    """The config's data set. With several ranks, rank 0 loads (and, if allowed, downloads) it
    first and the others after it, so that one process writes the download cache."""
    d = config.data
    if world.is_distributed and not world.is_main:
        torch.distributed.barrier()
    try:
        return load_dataset(d.dataset, d.data_dir, download=d.download and world.is_main)
    finally:
        if world.is_distributed and world.is_main:
            torch.distributed.barrier()


def prepare_splits(
    config: RunConfig,
    dataset: Dataset,
    likelihood: Likelihood,
    splits=("train", "val", "test"),
    *,
    fixed: bool = False,
) -> dict[str, torch.Tensor]:
    """The data set and its splits as the likelihood scores them, each checked against it.

    With dynamic binarisation or dequantisation the training split stays as stored and is
    transformed per minibatch; a sample of it is transformed here to check it. With ``fixed``
    (for an evaluation) every split, the training split included, gets its one seeded draw.
    """
    d = config.data
    check_density_data(
        config.model.likelihood,
        likelihood.is_discrete,
        dataset.name,
        d.binarize,
        d.dequantize,
        dataset.levels,
    )
    prepared = {}
    transform = minibatch_transform(d.binarize, d.dequantize, dataset.levels)
    for split in splits:
        x = prepare_split(
            dataset.split(split),
            split,
            d.binarize,
            d.binarize_seed,
            d.dequantize,
            dataset.levels,
            fixed=fixed,
        )
        fresh = split == "train" and not fixed and transform is not None
        scored = transform(x[:1000]) if fresh else x
        likelihood.check_data(scored, f"the {split} split of {dataset.name}")
        prepared[split] = x
    return prepared
