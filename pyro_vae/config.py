"""The run configuration: three small dataclasses that serialise to JSON.

Names of priors, likelihoods, objectives and so on are kept as strings here; they become objects
only in :mod:`pyro_vae.registry`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pyro_vae.errors import ConfigError

BINARIZE_MODES = ("dynamic", "static", "none")
DEQUANTIZE_MODES = ("uniform", "none")
DEVICES = ("auto", "cpu", "cuda")
# Integer options and their ranges: beyond these, networks or loops would not fit in memory or
# time (and beyond 2**63 PyTorch cannot take them at all).
INT_RANGES = {
    ("model", "latent_dim"): ("--latent-dim", 1, 4096),
    ("model", "num_components"): ("--num-components", 1, 10_000),
    ("model", "flows"): ("--flows", 1, 64),
    ("model", "rank"): ("--rank", 1, 4096),
    ("train", "epochs"): ("--epochs", 1, 1_000_000),
    ("train", "batch_size"): ("--batch-size", 1, 10_000_000),
    ("train", "num_particles"): ("--num-particles", 1, 100_000),
    ("train", "warmup_epochs"): ("--warmup-epochs", 0, 1_000_000),
    ("train", "log_every"): ("--log-every", 1, 1_000_000_000),
    ("train", "eval_samples"): ("--eval-samples", 1, 1_000_000_000),
}
MAX_HIDDEN_WIDTH = 65_536
FLOAT32_MAX = 3.4028234663852886e38  # parameters and the optimiser are float32
# Seeds reach NumPy's generator through pyro.set_rng_seed, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is turned into what the likelihood scores."""

    dataset: str = "digits"
    data_dir: str | None = None
    binarize: str = "dynamic"
    binarize_seed: int = 0  # fixes static binarisation, dequantisation noise of val/test splits
    dequantize: str = "none"
    download: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """The generative model p(z) p(x|z) and the guide q(z|x)."""

    latent_dim: int = 16
    hidden: tuple[int, ...] = (256, 256)
    prior: str = "normal"
    likelihood: str = "bernoulli"
    guide: str = "diagonal"
    gaussian_scale: float = 0.1  # sigma of the fixed-scale Gaussian likelihood
    scale_floor: float = 0.001  # lower bound on learned likelihood scales (Mattei & Frellsen 2018)
    num_components: int = 10  # mixture prior components / VampPrior pseudo-inputs
    flows: int = 2  # coupling steps of the flow prior, IAF steps of the iaf guide
    rank: int = 2  # rank of the lowrank guide's covariance factor


@dataclass(frozen=True)
class TrainConfig:
    """How the model is fitted with SVI."""

    elbo: str = "trace"
    num_particles: int = 1
    vectorize_particles: bool = True
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    eval_samples: int = 1000  # K of the evaluation run at the end of training
    precision: str = "fp32"  # of the networks in training steps (registry.PRECISIONS)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.data.binarize in BINARIZE_MODES, f"--binarize must be one of {BINARIZE_MODES}")
        _check(
            self.data.dequantize in DEQUANTIZE_MODES,
            f"--dequantize must be one of {DEQUANTIZE_MODES}",
        )
        _check(
            self.data.dequantize == "none" or self.data.binarize == "none",
            "choose binarisation or dequantisation, not both: --dequantize uniform needs "
            "--binarize none and a density likelihood (e.g. --likelihood gaussian); to binarise, "
            "drop --dequantize",
        )
        _check(self.train.device in DEVICES, f"--device must be one of {DEVICES}")
        for (section, name), (flag, low, high) in INT_RANGES.items():
            value = getattr(getattr(self, section), name)
            _check(
                low <= value <= high, f"{flag} must be an integer from {low} to {high}, got {value}"
            )
        _check(
            len(self.model.hidden) >= 1
            and all(1 <= h <= MAX_HIDDEN_WIDTH for h in self.model.hidden),
            "--hidden must be a comma-separated list of widths from 1 to "
            f"{MAX_HIDDEN_WIDTH}, e.g. 512,512",
        )
        for flag, value in (
            ("--gaussian-scale", self.model.gaussian_scale),
            ("--scale-floor", self.model.scale_floor),
            ("--lr", self.train.lr),
            ("--beta", self.train.beta),
        ):
            _check(
                math.isfinite(value) and abs(value) <= FLOAT32_MAX,
                f"{flag} must be a finite number within float32's range, got {value}",
            )
        check_seed(self.train.seed, "--seed")
        check_seed(self.data.binarize_seed, "--binarize-seed")
        _check(self.model.gaussian_scale > 0, "--gaussian-scale must be positive")
        _check(self.model.scale_floor > 0, "--scale-floor must be positive")
        _check(self.train.lr > 0, "--lr must be positive")
        _check(self.train.beta > 0, "--beta must be positive (beta=1 is the true ELBO)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config a dict (``to_dict``'s shape) holds; every section and field must be there,
        with its declared type, and nothing else (:class:`ConfigError` names what is wrong)."""
        if not isinstance(d, dict):
            raise ConfigError(f"not a valid pyro_vae run config (a {type(d).__name__})")
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        _check_keys(d, set(sections), "the config")
        parts = {}
        for name, kind in sections.items():
            values = d[name]
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' is a {type(values).__name__}")
            fields = {f.name: f for f in dataclasses.fields(kind)}
            values = {**ADDED_LATER.get(name, {}), **values}
            _check_keys(values, set(fields), f"config section '{name}'")
            if name == "model" and isinstance(values["hidden"], list):
                values["hidden"] = tuple(values["hidden"])
            for key, value in values.items():
                _check_type(f"{name}.{key}", value, fields[key].type)
            parts[name] = kind(**values)
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON ({e})") from None

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with fields of named sections replaced: ``replace(train={"epochs": 5})``."""
        parts = {}
        for name in ("data", "model", "train"):
            part = getattr(self, name)
            changes = sections.get(name, {})
            unknown = set(changes) - {f.name for f in dataclasses.fields(part)}
            _check(not unknown, f"unknown {name} option(s): {sorted(unknown)}")
            parts[name] = dataclasses.replace(part, **changes)
        return RunConfig(**parts)


# Fields added after the first release, with the value runs written before them had: a config
# that lacks them is read with these (any other missing field is refused).
ADDED_LATER = {
    "data": {"dequantize": "none"},
    "model": {"flows": 2, "num_components": 10, "rank": 2},
    "train": {"precision": "fp32"},
}


def _check_keys(d: dict, expected: set[str], what: str) -> None:
    missing, unknown = sorted(expected - set(d)), sorted(set(d) - expected)
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unknown {unknown}"] if unknown else []
        )
        raise ConfigError(f"{what} is not a valid pyro_vae run config: {'; '.join(parts)}")


# The types config.json may hold for each declared field type (JSON has no tuples; bool is not
# an int here, and an int is a float).
_JSON_TYPES = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "tuple[int, ...]": (tuple,),
}


def _check_type(name: str, value, declared: str) -> None:
    allowed = _JSON_TYPES[declared]
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok and declared == "tuple[int, ...]":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ConfigError(f"config value {name} = {value!r} is not of type {declared}")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Raise :class:`ConfigError` unless ``seed`` is an integer in 0 .. :data:`MAX_SEED`."""
    _check(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
        f"{flag} must be an integer from 0 to {MAX_SEED}, got {seed}",
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
