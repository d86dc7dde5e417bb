"""The run configuration: three small dataclasses that serialise to JSON.

Every field is declared once, with its help and its range (:func:`pyro_vae.options.option`): the
checks here and the ``pyro-vae train`` flags are made from those declarations. The model section's
fields beyond the names of its pieces are declared by the pieces themselves (their ``Params``,
collected by :func:`pyro_vae.registry.piece_options`). Names of priors, likelihoods, objectives and
so on are kept as strings here; they become objects only in :mod:`pyro_vae.registry`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.options import check_options, option, parse_widths
from pyro_vae.registry import piece_options

BINARIZE_MODES = ("dynamic", "static", "none")
LR_SCHEDULES = ("none", "cosine", "plateau")
DEQUANTIZE_MODES = ("uniform", "none")
DEVICES = ("auto", "cpu", "cuda")
MAX_HIDDEN_WIDTH = 65_536
# Seeds reach NumPy's generator through pyro.set_rng_seed, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Ranges of integer options: beyond these, networks or loops would not fit in memory or time
# (and beyond 2**63 PyTorch cannot take them at all).
MAX_STEPS = 1_000_000_000


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is turned into what the likelihood scores."""

    dataset: str = option(
        "digits", "digits, mnist, fashion-mnist, kmnist, or a .npz/.npy/.pt file", metavar="NAME"
    )
    data_dir: str | None = option(None, "first directory to look in for data files")
    binarize: str = option("dynamic", "dynamic, static or none", choices=BINARIZE_MODES)
    binarize_seed: int = option(
        0,
        "seed of static and evaluation binarisation (and of val/test dequantisation noise)",
        low=0,
        high=MAX_SEED,
    )
    dequantize: str = option(
        "none",
        "uniform or none: (k + u) / levels, for densities on 8-bit data",
        choices=DEQUANTIZE_MODES,
    )
    download: bool = option(True, "never download data", negate="--no-download")


@dataclass(frozen=True)
class _ModelFields:
    """The model section's own fields; :data:`ModelConfig` adds the pieces' hyperparameters."""

    latent_dim: int = option(16, "dimension of z", low=1, high=4096, metavar="D")
    hidden: tuple[int, ...] = option(
        (256, 256), "hidden widths of encoder and decoder", parse=parse_widths, metavar="W,W"
    )
    prior: str = option("normal", "p(z)", names="PRIORS")
    likelihood: str = option("bernoulli", "p(x|z)", names="LIKELIHOODS")
    guide: str = option("diagonal", "q(z|x)", names="GUIDES")
    net: str = option(
        "mlp",
        "networks of encoder and decoder (conv: convolutions, for images)",
        names="NETWORKS",
    )
    top_latent_dim: int | None = option(
        None,
        "a second stochastic layer z2 of this dimension above z: p(z2) p(z|z2) p(x|z) with "
        "q(z|x) q(z2|z), the prior over z2 (default: one layer)",
        low=1,
        high=4096,
        metavar="D2",
    )
    top_hidden: tuple[int, ...] = option(
        (100, 100),
        "hidden widths of the networks of p(z|z2) and q(z2|z)",
        parse=parse_widths,
        metavar="W,W",
    )


@dataclass(frozen=True)
class _TrainFields:
    """The training section's own fields; :data:`TrainConfig` adds the objectives'."""

    elbo: str = option(
        "trace",
        "trace (Trace_ELBO), meanfield (TraceMeanField_ELBO) or iwae (IWAE bound with "
        "{train.num_particles} K)",
    )
    epochs: int = option(100, "passes over the training data", low=1, high=1_000_000)
    batch_size: int = option(128, "datapoints per step", low=1, high=10_000_000)
    lr: float = option(1e-3, "Adam learning rate", positive=True)
    beta: float = option(1.0, "KL weight; 1 is the true ELBO", positive=True)
    warmup_epochs: int = option(
        0, "epochs of linear KL warm-up to {train.beta}", low=0, high=1_000_000
    )
    seed: int = option(0, "seed of initialisation, minibatches and noise", low=0, high=MAX_SEED)
    device: str = option("auto", "auto, cpu or cuda", choices=DEVICES)
    log_every: int = option(50, "steps between progress updates", low=1, high=MAX_STEPS)
    eval_samples: int = option(1000, "K of the evaluation after training", low=1, high=MAX_STEPS)
    eval_method: str = option(
        "iwae",
        "estimation method of the evaluation after training: iwae (plain IWAE, the fastest) or "
        "any method of pyro-vae evaluate (auto: certified where it can be, IWAE where PSIS "
        "passes it, refined proposals then AIS where not; K >= 21; ais takes its own chains)",
        metavar="METHOD",
    )
    patience: int = option(
        0,
        "early stopping: stop once the validation L_K (K = {train.stop_samples}) has not "
        "improved for this many epochs, keep the best epoch's checkpoint and evaluate it (0: "
        "train every epoch)",
        low=0,
        high=1_000_000,
        metavar="P",
    )
    stop_samples: int = option(
        10,
        "K of the validation L_K that early stopping watches (1: a single-sample ELBO)",
        low=1,
        high=100_000,
        metavar="K",
    )
    lr_schedule: str = option(
        "none",
        "none, cosine (from {train.lr} to 0 over {train.epochs}) or plateau (halve the rate "
        "once the validation L_K has not improved for {train.lr_patience} epochs)",
        choices=LR_SCHEDULES,
    )
    lr_patience: int = option(
        5, "epochs without improvement before plateau halves the rate", low=1, high=1_000_000
    )
    clip_norm: float | None = option(
        None,
        "clip the gradients' total norm to this before each step (default: no clipping)",
        positive=True,
        metavar="C",
    )
    max_seconds: float | None = option(
        None,
        "a time budget: stop after the first epoch at which training's time, the sum of the "
        "epochs' seconds in metrics.csv (a resumed run's earlier epochs included), reaches S "
        "(default: no limit)",
        positive=True,
        metavar="S",
    )
    precision: str = option(
        "fp32",
        "precision of the networks in training steps; bf16 is mixed precision, faster where "
        "the hardware has bf16 matrix units (the final evaluation stays fp32)",
        names="PRECISIONS",
    )


# Fields of the model and training sections declared by the registered pieces (their Params:
# priors, likelihoods, guides; objectives), not here.
PIECE_OPTIONS = {
    section: {p.name: p for p in piece_options(section)} for section in ("model", "train")
}


def _with_pieces(base: type, name: str, section: str, doc: str, after: str) -> type:
    """The frozen dataclass ``name``: ``base``'s fields with the pieces' of ``section`` after
    the field ``after`` (the order, and so the positional arguments, of earlier versions)."""

    def spec(name, kind, default, option):
        return (name, kind, dataclasses.field(default=default, metadata={"option": option}))

    pieces = [spec(p.name, p.type, p.default, p.option) for p in PIECE_OPTIONS[section].values()]
    fields = []
    for f in dataclasses.fields(base):
        fields.append(spec(f.name, f.type, f.default, f.metadata["option"]))
        if f.name == after:
            fields += pieces
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = doc
    return cls


ModelConfig = _with_pieces(
    _ModelFields,
    "ModelConfig",
    "model",
    """The generative model p(z) p(x|z) and the guide q(z|x).

Its fields are ``latent_dim``, ``hidden``, the names of the ``prior``, ``likelihood``,
``guide`` and networks ``net``, and the hyperparameters those pieces declare
(:data:`PIECE_OPTIONS`, from :func:`pyro_vae.registry.piece_options`): a new piece's
hyperparameter is a field here without an edit to this module.
""",
    after="guide",
)

TrainConfig = _with_pieces(
    _TrainFields,
    "TrainConfig",
    "train",
    """How the model is fitted with SVI: the objective, its hyperparameters (declared by the
objectives, :mod:`pyro_vae.objectives`), the optimisation and the run's device and seed.""",
    after="elbo",
)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in SECTIONS:
            check_options(name, getattr(self, name))
        _check(
            self.data.dequantize == "none" or self.data.binarize == "none",
            "choose binarisation or dequantisation, not both: {data.dequantize} uniform needs "
            "{data.binarize} none and a density likelihood (e.g. {model.likelihood} gaussian); "
            "to binarise, drop {data.dequantize}",
        )
        for name in ("hidden", "top_hidden"):
            hidden = getattr(self.model, name)
            if not (len(hidden) >= 1 and all(1 <= h <= MAX_HIDDEN_WIDTH for h in hidden)):
                raise ConfigError(
                    f"must be a comma-separated list of widths from 1 to {MAX_HIDDEN_WIDTH}, "
                    "e.g. 512,512",
                    option=f"model.{name}",
                )

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
        _check_keys(d, set(SECTIONS), "the config")
        parts = {}
        for name, kind in SECTIONS.items():
            values = d[name]
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' is a {type(values).__name__}")
            fields = {f.name: f for f in dataclasses.fields(kind)}
            values = {**ADDED_LATER.get(name, {}), **values}
            if name in PIECE_OPTIONS:  # a piece's hyperparameter that a run lacks: its default
                values = {**{p.name: p.default for p in PIECE_OPTIONS[name].values()}, **values}
            _check_keys(values, set(fields), f"config section '{name}'")
            for key, value in values.items():  # JSON holds a tuple as a list
                if key in fields and fields[key].type == "tuple[int, ...]" and type(value) is list:
                    values[key] = tuple(value)
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
# that lacks them is read with these (any other missing field is refused). The pieces'
# hyperparameters are read with their declared defaults, the value a piece had before its
# hyperparameter was declared.
ADDED_LATER = {
    "data": {"dequantize": "none"},
    "model": {"net": "mlp", "top_latent_dim": None, "top_hidden": (100, 100)},
    "train": {
        "precision": "fp32",
        "patience": 0,
        "stop_samples": 10,
        "lr_schedule": "none",
        "lr_patience": 5,
        "clip_norm": None,
        "max_seconds": None,
        "eval_method": "iwae",  # the one method before the option
    },
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
    "float | None": (int, float, type(None)),
    "int | None": (int, type(None)),
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


def check_seed(seed: int, option: str = "train.seed") -> None:
    """Raise :class:`ConfigError` unless ``seed`` is an integer in 0 .. :data:`MAX_SEED`."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"must be an integer from 0 to {MAX_SEED}, got {seed}", option=option)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
