"""Loading a run: its device, its data as the likelihood scores it, and its trained VAE."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import registry
from pyro_vae.config import RunConfig
from pyro_vae.data import load_dataset, minibatch_transform, prepare_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.transforms import is_quantised
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.models import VAE, Likelihood
from pyro_vae.runs import RunDir

# Options that may change when a run is resumed: they do not change what is being fitted.
RESUMABLE = {"train": {"epochs", "device", "log_every", "eval_samples"}, "data": {"data_dir"}}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{train.device} cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def load_data(config: RunConfig) -> Dataset:
    d = config.data
    return load_dataset(d.dataset, d.data_dir, download=d.download)


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
    if is_quantised(d.binarize, d.dequantize, dataset.levels) and not likelihood.is_discrete:
        kind = "binarised" if d.binarize != "none" else f"quantised ({dataset.levels} levels)"
        raise DataError(
            f"the {config.model.likelihood} likelihood is a density, and {dataset.name} data "
            f"are {kind}: a density of discrete values is no valid log-likelihood. Use "
            "{data.dequantize} uniform (with {data.binarize} none), or a discrete likelihood "
            "({model.likelihood} bernoulli with {data.binarize}, or discretized-logistic)"
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


def training_identity(config: RunConfig) -> RunConfig:
    """The config with the resumable options reset: what a checkpoint must match."""
    defaults = RunConfig()
    return config.replace(
        **{
            section: {name: getattr(getattr(defaults, section), name) for name in names}
            for section, names in RESUMABLE.items()
        }
    )


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[RunConfig, VAE, dict[str, Any]]:
    """The config, the trained VAE (on ``device``) and the checkpoint's metadata of a run."""
    run = RunDir(run_dir).require()
    config = run.read_config()
    dev = resolve_device(device if device != "auto" else config.train.device)
    state = run.load_checkpoint(training_identity(config), map_location=dev)
    meta = _checked_meta(run, state)
    pyro.clear_param_store()
    vae = registry.build_vae(config.model, meta["data_dim"], meta.get("levels")).to(dev)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not match its run's model: {first}") from None
    vae.eval()
    return config, vae, meta


def _checked_meta(run: RunDir, state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's metadata (data shape, levels) and epoch, each checked."""
    meta = state.get("meta")
    epoch = state.get("epoch")
    path = run.checkpoint_path
    if not isinstance(meta, dict) or not is_int(meta.get("data_dim")) or meta["data_dim"] < 1:
        raise CheckpointError(f"{path} lacks the data shape (meta.data_dim)")
    shape = meta.get("image_shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(is_int(n) and n >= 1 for n in shape)
        or math.prod(shape) != meta["data_dim"]
    ):
        raise CheckpointError(
            f"{path}: meta.image_shape {shape} does not hold {meta['data_dim']} values "
            "per datapoint"
        )
    levels = meta.get("levels")
    if levels is not None and (not is_int(levels) or levels < 2):
        raise CheckpointError(f"{path}: meta.levels {levels!r} is not a number of levels")
    if not is_int(epoch) or epoch < 1:
        raise CheckpointError(f"{path} lacks the number of epochs trained (epoch)")
    return {**meta, "epoch": epoch}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
