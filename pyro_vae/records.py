"""Typed records of results: an :class:`Evaluation` of a run and its per-datapoint values.

An evaluation is kept in a run directory as ``evaluations/SETTING.json``
(:meth:`Evaluation.to_dict`, one flat JSON object whose keys are the field names) beside
``SETTING.nc`` (the per-datapoint values, :class:`PerPoint`). :meth:`Evaluation.from_dict`
reads what earlier versions wrote too: a field they lacked takes the value those versions meant
(fp32, IWAE from the guide) or None.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import CheckpointError

# JSON holds no infinities or NaN: a number that was not finite is written as null. These are
# read back as -inf (a log-density whose weights were all zero: log p(x), the ELBO, L_K); a
# written bits/dim of null as +inf (-log p(x) / D); the nulls in kl_per_dim as NaN; the other
# nulls of float fields as NaN, except where None has its own meaning (no error bar, no k-hat).
MINUS_INF_IF_NULL = ("log_px", "elbo")


@dataclass(frozen=True)
class PerPoint:
    """The per-datapoint values of an evaluation, each ``(N,)`` on the host.

    ``khat`` is NaN where it is undefined (AIS); ``estimator`` names the estimator (a stage of
    ``auto``) behind each estimate, ``draws`` counts its importance draws (or AIS chains), and
    ``extras`` holds one method's own values (``acceptance`` of AIS, ``reliable`` of ``auto``).
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    stderr: torch.Tensor
    khat: torch.Tensor
    estimator: tuple[str, ...] | None = None
    draws: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, block) -> PerPoint:
        """The values of an estimate (a :class:`~pyro_vae.infer.estimator.LogZBlock`)."""
        return cls(
            log_px=block.log_px,
            elbo=block.elbo,
            ess=block.ess,
            stderr=block.stderr,
            khat=block.khat,
            estimator=block.estimator,
            draws=block.draws,
            extras=dict(block.extras),
        )

    def stats(self, stages: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The diagnostics as the ``.nc`` file keeps them (numbers only): ``method`` is each
        datapoint's estimator as its index in ``stages`` (recorded in the summary), kept only
        where the method has several stages, as is ``draws``."""
        out = {k: getattr(self, k).numpy() for k in ("khat", "ess", "stderr")}
        if len(stages) > 1 and self.estimator is not None:
            out["method"] = np.array([stages.index(name) for name in self.estimator])
            out["draws"] = self.draws.numpy()
        for key, value in self.extras.items():
            out[key] = value.double().numpy()
        return out


@dataclass(frozen=True)
class Evaluation:
    """log p(x) of a run on one split, its diagnostics, and what was scored how.

    Means are nats per datapoint over the split. ``num_samples`` is K of the importance
    samplers (the number of chains for AIS). Fields that only some methods or data have are
    None elsewhere (and left out of the JSON). ``per_point`` holds the per-datapoint values when
    the evaluation was just computed; a stored one reads them from its ``.nc``
    (:meth:`pyro_vae.runs.StoredEvaluation.per_point`).
    """

    # the estimate
    log_px: float
    split: str
    num_samples: int
    log_px_stderr: float | None = None  # None: K = 1 (no Monte Carlo error), or unbounded
    log_px_std: float = math.nan
    elbo: float = math.nan
    gap: float = math.nan
    ess_mean: float = math.nan
    ess_min: float = math.nan
    # PSIS k-hat (None where not computed, with khat_note saying why)
    khat_mean: float | None = None
    khat_max: float | None = None
    khat_threshold: float | None = None
    num_khat_above_threshold: int | None = None
    frac_khat_above_threshold: float | None = None
    khat_note: str | None = None
    bounds_vs_k: dict[str, float] | None = None  # L_K by K
    # the model's latent space
    active_units: int | None = None
    latent_dim: int | None = None
    kl_per_dim: list[float] | None = None
    # the estimator, its settings and its own summary (its fields in the JSON's top level)
    method: str = "iwae"
    method_settings: dict[str, Any] | None = None
    method_summary: dict[str, Any] = field(default_factory=dict)
    num_datapoints: int | None = None
    first: int | None = None  # the first rows of the split only (None: all of it)
    precision: str = "fp32"
    # what was scored
    dataset: str | None = None
    binarize: str | None = None
    binarize_seed: int | None = None
    dequantize: str = "none"
    levels: int | None = None
    likelihood: str | None = None
    prior: str | None = None
    guide: str | None = None
    objective: str | None = None
    epochs_trained: int | None = None
    seed: int | None = None
    seconds: float | None = None
    bits_per_dim: float | None = None
    processes: int | None = None  # computed by several processes, in seeded blocks
    # "best": the best epoch's of early stopping; "last": the last of a run that keeps a best one
    # (None: the run's only checkpoint)
    checkpoint: str | None = None
    evaluation_id: str | None = None
    # keys of a newer version's JSON, kept as they are
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    per_point: PerPoint | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method_settings is None:  # before methods: IWAE with K importance samples
            object.__setattr__(self, "method_settings", {"num_samples": self.num_samples})

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary: every field but ``extra`` and ``per_point``, in order, the optional
        ones only when set; then ``extra``'s keys."""
        out = {}
        for f in _FIELDS:
            value = getattr(self, f.name)
            if f.name in OPTIONAL and value is None:
                continue
            if f.name == "method_summary":
                out.update(value)
                continue
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the evaluation") -> Evaluation:
        """The evaluation a JSON summary holds; :class:`CheckpointError` (naming ``where``) when
        it is not one: not an object, a required key missing, or a value of the wrong type."""
        if not isinstance(d, dict) or not REQUIRED <= set(d):
            raise CheckpointError(f"{where} is not an evaluation summary")
        values, extra, summary = {}, {}, {}
        summary_keys = _summary_keys()
        for key, value in d.items():
            f = _BY_NAME.get(key)
            if key in summary_keys:
                summary[key] = value
                continue
            if f is None or key == "method_summary":
                extra[key] = value
                continue
            if value is None and key not in OPTIONAL and not f.type.endswith("| None"):
                value = -math.inf if key in MINUS_INF_IF_NULL else math.nan
            elif value is None and key == "bits_per_dim":
                value = math.inf
            elif key == "bounds_vs_k" and isinstance(value, dict):
                value = {k: -math.inf if v is None else v for k, v in value.items()}
            elif key == "kl_per_dim" and isinstance(value, list):
                value = [math.nan if v is None else v for v in value]
            if not _has_type(value, f.type):
                raise CheckpointError(f"{where}: {key} = {value!r} is not of type {f.type}")
            values[key] = value
        return cls(**values, method_summary=summary, extra=extra)

    def replace(self, **changes) -> Evaluation:
        return dataclasses.replace(self, **changes)


_FIELDS = [f for f in dataclasses.fields(Evaluation) if f.name not in ("extra", "per_point")]
_BY_NAME = {f.name: f for f in _FIELDS}
REQUIRED = {"split", "num_samples", "log_px"}
# Left out of the JSON when None: what only some methods or data have.
OPTIONAL = {
    "khat_note",
    "bounds_vs_k",
    "bits_per_dim",
    "processes",
    "checkpoint",
    "evaluation_id",
}


def _summary_keys() -> set[str]:
    """The keys of every estimator's own summary fields (the table's ``summary_keys``)."""
    from pyro_vae.infer.estimators import ESTIMATORS

    return {k for e in ESTIMATORS.values() for k in e.summary_keys}


def _has_type(value, declared: str) -> bool:
    if value is None:
        return declared.endswith("| None") or declared == "float"
    kind = declared.removesuffix(" | None")
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("dict"):
        return isinstance(value, dict)
    if kind.startswith("list"):
        return isinstance(value, list)
    return True  # pragma: no cover - every declared type is listed above
