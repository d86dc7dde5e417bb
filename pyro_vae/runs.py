"""A run directory on disk: config.json, metrics.csv, checkpoint.pt, evaluation.json.

Files are written atomically (a temporary file in the same directory, then ``os.replace``), so a
crash leaves the previous version intact. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pyro_vae import arviz_compat
from pyro_vae.config import RunConfig
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.infer.svi import EpochStats

CHECKPOINT_FORMAT = 1
METRIC_FIELDS = [f.name for f in dataclasses.fields(EpochStats)]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`ConfigError` unless ``path`` can be written as a file: not a directory, and
    no part of its parent a file. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory; give the path of a file")
    _check_parents(p, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`ConfigError` unless ``path`` is a directory or can be created as one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a directory")
    _check_parents(p, what)
    return p


def _check_parents(p: Path, what: str) -> None:
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {p} lies under {parent}, which is a file")
            return


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class RunDir:
    """The files of one training run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    evaluation_path = property(lambda self: self.path / "evaluation.json")
    inference_data_path = property(lambda self: self.path / "evaluation.nc")

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunDir:
        """Raise a clear error unless this is a run directory with a checkpoint."""
        if not self.path.is_dir():
            raise CheckpointError(f"run directory not found: {self.path}")
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path} is not a pyro-vae run directory (no config.json)")
        if not self.checkpoint_path.is_file():
            raise CheckpointError(
                f"{self.path} has no checkpoint.pt: training never finished an epoch"
            )
        return self

    # config
    def write_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config.to_json() + "\n")

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_json(self.config_path.read_text())
        except OSError as e:
            raise CheckpointError(f"cannot read {self.config_path}: {e}") from None
        except ConfigError as e:
            raise CheckpointError(f"{self.config_path}: {e}") from None

    # checkpoint
    def save_checkpoint(self, state: dict[str, Any], config: RunConfig) -> None:
        payload = {"format": CHECKPOINT_FORMAT, "config": config.to_json(), **state}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self, config: RunConfig, map_location=None) -> dict[str, Any]:
        try:
            state = torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {self.checkpoint_path}") from None
        except Exception as e:
            raise CheckpointError(
                f"{self.checkpoint_path} is corrupt or not a pyro-vae checkpoint "
                f"({type(e).__name__})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a pyro-vae checkpoint (format)")
        if state.get("config") != config.to_json():
            raise CheckpointError(
                f"{self.checkpoint_path} was written for another config than {self.config_path}"
            )
        return state

    # metrics
    def write_metrics(self, rows: list[EpochStats]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))
        atomic_write_text(self.metrics_path, out.getvalue())

    def read_metrics(self) -> list[EpochStats]:
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open() as f:
            rows = list(csv.DictReader(f))
        types = {f.name: f.type for f in dataclasses.fields(EpochStats)}
        cast = {"int": int, "float": float}
        return [EpochStats(**{k: cast[types[k]](v) for k, v in row.items()}) for row in rows]

    # evaluation
    def write_evaluation(self, summary: dict[str, Any]) -> None:
        """evaluation.json: valid JSON, with NaN and infinite numbers written as null."""
        text = json.dumps(json_safe(summary), indent=2, allow_nan=False)
        atomic_write_text(self.evaluation_path, text + "\n")

    def read_evaluation(self) -> dict[str, Any]:
        try:
            return json.loads(self.evaluation_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{self.path} has no evaluation.json: run pyro-vae evaluate {self.path}"
            ) from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.evaluation_path} is not valid JSON ({e})") from None

    def write_inference_data(self, idata) -> None:
        """evaluation.nc, written to a temporary name and renamed into place."""
        tmp = self.inference_data_path.with_suffix(".nc.tmp")
        arviz_compat.save_netcdf(idata, tmp)
        os.replace(tmp, self.inference_data_path)

    def read_inference_data(self):
        if not self.inference_data_path.is_file():
            raise CheckpointError(
                f"{self.path} has no evaluation.nc: run pyro-vae evaluate {self.path}"
            )
        return arviz_compat.load_netcdf(self.inference_data_path)
