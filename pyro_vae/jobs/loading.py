"""Loading a run: its config and its trained VAE (built as :mod:`pyro_vae.build` builds one)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyro

from pyro_vae import registry
from pyro_vae.build import resolve_device
from pyro_vae.config import RunConfig
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.models import VAE
from pyro_vae.runs import RunDir

# Options that may change when a run is resumed: they do not change what is being fitted.
RESUMABLE = {
    "train": {"epochs", "max_seconds", "device", "log_every", "eval_samples", "eval_method"},
    "data": {"data_dir"},
}


def training_identity(config: RunConfig) -> RunConfig:
    """The config with the resumable options reset: what a checkpoint must match."""
    defaults = RunConfig()
    return config.replace(
        **{
            section: {name: getattr(getattr(defaults, section), name) for name in names}
            for section, names in RESUMABLE.items()
        }
    )


CHECKPOINTS = ("best", "last")


def load_run(
    run_dir: str | Path, device: str = "auto", checkpoint: str | None = None
) -> tuple[RunConfig, VAE, dict[str, Any]]:
    """The config, the trained VAE (on ``device``) and the checkpoint's metadata of a run.

    A run trained with early stopping (``train.patience``) gives its best epoch's checkpoint
    (``best.pt``, ``meta["checkpoint"] == "best"``); any other run its last. ``checkpoint``
    chooses: ``"best"`` (an error for a run without one) or ``"last"`` (``meta["checkpoint"]
    == "last"`` when the run also holds a best one, else None: it is the run's only one).
    """
    if checkpoint not in (None, *CHECKPOINTS):
        raise ConfigError(f"must be best or last, got {checkpoint!r}", option="args.checkpoint")
    run = RunDir(run_dir).require()
    config = run.read_config()
    dev = resolve_device(device if device != "auto" else config.train.device)
    identity = training_identity(config)
    last = run.load_checkpoint(identity, map_location=dev)
    has_best, best_epoch = _best_epoch(run, config, last, checkpoint)
    if checkpoint == "best" and not has_best:
        raise CheckpointError(
            f"{run.path} has no best epoch's checkpoint ({run.best_path.name}): it was trained "
            "without early stopping (--patience), or no epoch of it has finished; its last "
            "checkpoint is its only one"
        )
    best = has_best and checkpoint != "last"
    state = run.load_checkpoint(identity, map_location=dev, best=True) if best else last
    which = "best" if best else ("last" if has_best else None)
    meta = {**_checked_meta(run, state, best), "checkpoint": which}
    if best and best_epoch is not None and meta["epoch"] != best_epoch:
        raise CheckpointError(
            f"{run.best_path} holds epoch {meta['epoch']}, but the run's best epoch is "
            f"{best_epoch} ({run.checkpoint_path.name} says so): it was replaced. Restore it from "
            "a backup, or score the last checkpoint ({args.checkpoint} last)"
        )
    pyro.clear_param_store()
    shape = meta.get("image_shape")
    vae = registry.build_vae(
        config.model, meta["data_dim"], meta.get("levels"), None if shape is None else tuple(shape)
    ).to(dev)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not match its run's model: {first}") from None
    vae.eval()
    return config, vae, meta


def _best_epoch(
    run: RunDir, config: RunConfig, last: dict[str, Any], checkpoint: str | None
) -> tuple[bool, int | None]:
    """Whether a run keeps a best epoch's checkpoint, and that epoch as the run's last
    checkpoint records it (None: a checkpoint of an earlier version, which recorded no early
    stopping state; its best.pt is used when present). Refuses a run whose recorded best epoch
    has no best.pt, unless the last checkpoint is asked for."""
    if config.train.patience <= 0:
        return False, None
    stopping = last.get("early_stopping")
    if not isinstance(stopping, dict):
        return run.best_path.is_file(), None
    epoch = stopping.get("best_epoch")
    if not is_int(epoch) or epoch < 1:  # no epoch scored yet: the last checkpoint is the one
        return False, None
    if not run.best_path.is_file() and checkpoint != "last":
        raise CheckpointError(
            f"{run.path} was trained with early stopping and its best epoch is {epoch}, but "
            f"{run.best_path.name} is missing: restore it from a backup, or score the last "
            "checkpoint ({args.checkpoint} last)"
        )
    return True, epoch


def _checked_meta(run: RunDir, state: dict[str, Any], best: bool = False) -> dict[str, Any]:
    """The checkpoint's metadata (data shape, levels) and epoch, each checked."""
    meta = state.get("meta")
    epoch = state.get("epoch")
    path = run.best_path if best else run.checkpoint_path
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
