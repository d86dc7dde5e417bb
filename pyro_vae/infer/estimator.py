"""What every estimator of log p(x) is: one protocol, one settings base, one result type.

An estimator of per-datapoint log p(x) for a Pyro model/guide pair (importance sampling from the
guide, from refined proposals or from the prior, annealed importance sampling, the escalating
``auto``) is a subclass of :class:`Estimator` that declares

* ``name`` (the ``--method`` of ``pyro-vae evaluate``), ``label`` (one line for tables and
  ``--help``) and ``has_khat`` (whether its estimates carry a PSIS k-hat);
* ``Settings``, a frozen dataclass of :class:`Settings` whose fields are declared with
  :func:`~pyro_vae.options.option` (help, range, default): the one place its defaults live. The
  command line's flags, the docs table and the evaluation's ``method_settings`` derive from it;
* ``run_block(model, guide, x, settings, context) -> LogZBlock``: the estimate of a block of
  datapoints, drawing from torch's (and so Pyro's) random stream, which the block driver
  (:mod:`pyro_vae.infer.driver`) seeds for each block.

and is added to the table :data:`pyro_vae.infer.estimators.ESTIMATORS` with one line. Nothing
else dispatches on a method's name: the jobs, the command line, the records and the experiments
read the table. See docs/adding-a-piece.md, "Adding an estimator".

Like BlackJAX's ``init/step`` with an ``Info`` record and Pyro's ``LogWeightsMixin``, the
protocol is small on purpose: the driver owns blocks, seeds and progress; an estimator owns the
mathematics of one block.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pyro_vae.options import check_options, declared, option

# PSIS's constants, as pyro_vae.arviz_compat states them (a test checks that they agree): infer/
# imports nothing of ArviZ's until a k-hat is computed.
KHAT_THRESHOLD = 0.7
PSIS_MIN_SAMPLES = 21


@dataclass(frozen=True)
class Settings:
    """The settings of an estimator, each field declared with :func:`~pyro_vae.options.option`.

    Checked on construction (ranges and types from the declarations, then :meth:`check`); errors
    name a field as ``estimator.NAME`` (the command line shows its flag)."""

    def __post_init__(self) -> None:
        check_options("estimator", self)
        self.check()

    def check(self) -> None:
        """Checks across fields, beyond each field's declaration (none by default)."""

    def recorded(self) -> dict[str, Any]:
        """The settings recorded with an evaluation (``method_settings``): what was estimated
        how, leaving out those that only split the work (``recorded=False``)."""
        return {f.name: getattr(self, f.name) for f, opt in declared(self) if opt.recorded}

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ImportanceSettings(Settings):
    """Settings of the estimators that draw K importance samples per datapoint."""

    num_samples: int = option(
        1000,
        "K, importance samples per datapoint (iwae, refined, auto, prior)",
        low=1,
        high=100_000_000,
        metavar="K",
        why="the K log weights of each datapoint are kept in memory, 8 bytes each",
    )


@dataclass(frozen=True)
class LogZBlock:
    """Per-datapoint estimates of log p(x) for a block of datapoints, whatever the estimator.

    Each tensor is ``(N,)`` float64 (``draws`` int64), on the host. Values an estimator does not
    define are NaN (``elbo`` of a method that does not draw from the guide, ``khat`` of AIS).

    Attributes
    ----------
    log_px, stderr, ess : Tensor
        The estimate, its Monte Carlo error bar and the effective sample size of its weights.
    elbo : Tensor
        The guide's ELBO at the datapoint (NaN where not estimated).
    khat : Tensor
        PSIS k-hat of the estimate's importance weights (NaN where undefined).
    estimator : tuple of str
        The estimator (a name in the table) that produced each datapoint's estimate: the
        method's own name, or a stage of ``auto``.
    draws : LongTensor
        The importance draws (or AIS chains) behind each estimate.
    seconds : dict of str to float
        Wall time spent, by estimator (stage).
    log_weights : Tensor, optional
        ``(K, N)``: every datapoint's K log weights, where every datapoint has K of them.
    extras : dict of str to Tensor
        Per-datapoint values of one method (``acceptance`` of AIS, ``reliable`` of ``auto``),
        each ``(N,)``.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    elbo: torch.Tensor
    khat: torch.Tensor
    estimator: tuple[str, ...]
    draws: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    log_weights: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.log_px.shape[0]
        if len(self.estimator) != n:
            raise ValueError(f"{len(self.estimator)} estimator names for {n} datapoints")

    @property
    def num_points(self) -> int:
        return self.log_px.shape[0]

    def counts(self, names: tuple[str, ...] | None = None) -> dict[str, int]:
        """Datapoints whose estimate each estimator produced: of each of ``names`` (zero
        included), or of each name present, in order of first appearance."""
        out: dict[str, int] = dict.fromkeys(names or (), 0)
        for name in self.estimator:
            out[name] = out.get(name, 0) + 1
        return out

    def where(self, name: str) -> torch.Tensor:
        """The datapoints whose estimate the estimator ``name`` produced: ``(N,)`` bool."""
        return torch.tensor([e == name for e in self.estimator], dtype=torch.bool)

    def on_host(self) -> LogZBlock:
        """The same block with every tensor on the host."""
        return dataclasses.replace(
            self,
            **{
                name: value.cpu()
                for name in _TENSORS + ("log_weights",)
                if (value := getattr(self, name)) is not None
            },
            extras={k: v.cpu() for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(parts: list[LogZBlock]) -> LogZBlock:
        """Blocks of consecutive datapoints joined in order (their times added up)."""
        if len(parts) == 1:
            return parts[0]
        seconds: dict[str, float] = {}
        for p in parts:
            for name, t in p.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + t
        weights = [p.log_weights for p in parts]
        same_k = all(w is not None and w.shape[0] == weights[0].shape[0] for w in weights)
        extras = {
            key: torch.cat([p.extras[key] for p in parts])
            for key in parts[0].extras
            if all(key in p.extras for p in parts)
        }
        return LogZBlock(
            **{name: torch.cat([getattr(p, name) for p in parts]) for name in _TENSORS},
            estimator=sum((p.estimator for p in parts), ()),
            seconds=seconds,
            log_weights=torch.cat(weights, dim=1) if same_k else None,
            extras=extras,
        )


_TENSORS = ("log_px", "stderr", "ess", "elbo", "khat", "draws")


@dataclass(frozen=True)
class BlockContext:
    """What the driver tells an estimator about the block it runs: ``max_plate_nesting`` of
    the programs (found once) and ``started``, ``time.perf_counter()`` when the estimate began
    (for a time budget across blocks). The block's stream is already seeded."""

    max_plate_nesting: int
    started: float


class Estimator:
    """An estimator of per-datapoint log p(x): see the module docstring.

    Subclasses set the class attributes and implement :meth:`run_block`; the other methods
    have defaults that suit the estimators drawing K importance samples per datapoint.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    Settings: ClassVar[type[Settings]]
    has_khat: ClassVar[bool] = True
    # Names ``LogZBlock.estimator`` may hold for this method (auto: its stages).
    stages: ClassVar[tuple[str, ...] | None] = None
    # Keys of the method's own summary fields (:meth:`summary`) in an evaluation.
    summary_keys: ClassVar[tuple[str, ...]] = ()
    # Datapoints per block of the driver: fixed, so that the draws do not depend on how the
    # blocks are shared. More for estimators whose per-block cost is mostly fixed (a
    # per-datapoint optimisation runs the block's rows together until the slowest converges).
    block_rows: ClassVar[int] = 64

    def run_block(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        settings: Settings,
        context: BlockContext,
    ) -> LogZBlock:
        raise NotImplementedError

    def stage_names(self) -> tuple[str, ...]:
        return self.stages or (self.name,)

    def draws_per_point(self, settings: Settings) -> int:
        """The weights behind each estimate: K (or the number of chains)."""
        return settings.num_samples

    def setting_name(self, draws: int, recorded: dict[str, Any]) -> str:
        """The middle of an evaluation's setting name (``refined-K1000``)."""
        return f"{self.name}-K{draws}"

    def describe(self, draws: int, recorded: dict[str, Any]) -> str:
        """How an evaluation's numbers were made, for its printed summary."""
        return f"{importance_samples(draws)} ({self.label})"

    def summary(self, block: LogZBlock, settings: Settings) -> dict[str, Any]:
        """The method's own summary fields of an evaluation (JSON values; keys in
        :attr:`summary_keys`)."""
        return {}

    def summary_lines(self, summary: dict[str, Any], num_datapoints: int, draws: int) -> list[str]:
        """Lines of the printed evaluation for the method's own summary fields."""
        return []

    def khat_note(self, draws: int) -> str | None:
        """Why the method's estimates have no k-hat at all, or None (they have one)."""
        return None

    def caveat(self, summary: dict[str, Any], frac_khat_above: float) -> str | None:
        """Why a comparison's ranking may rest on unreliable estimates of this method, or None.
        By default, the share of datapoints whose k-hat is above the threshold."""
        if math.isnan(frac_khat_above):
            return "k-hat was not computed (too few importance samples)"
        if frac_khat_above > 0:
            most = "most of its" if frac_khat_above > 0.5 else "some of its"
            return (
                f"{100 * frac_khat_above:.1f}% of its datapoints have k-hat > {KHAT_THRESHOLD} "
                f"({most} "
                "estimates of log p(x) are unreliable lower bounds; more samples or a better "
                "proposal may change the ranking)"
            )
        return None


def importance_samples(draws: int) -> str:
    """``K=1000 importance samples`` (``sample`` for one)."""
    return f"K={draws} importance {'sample' if draws == 1 else 'samples'}"


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat per datapoint of log weights ``(K, N)``: ``(N,)`` float64 on the host; NaN
    for fewer than :data:`PSIS_MIN_SAMPLES` weights, 0 where a datapoint's weights are all equal
    (no tail: the proposal is its exact posterior). Batched
    (:func:`~pyro_vae.infer.psis.pareto_khat`, equal to ArviZ's ``psislw``, which the rest of
    ``infer/`` does not import)."""
    if log_weights.shape[0] < PSIS_MIN_SAMPLES:
        return torch.full((log_weights.shape[1],), math.nan, dtype=torch.float64)
    from pyro_vae.infer.psis import pareto_khat

    lw = log_weights.detach().cpu().double()
    flat = (lw.max(0).values - lw.min(0).values) < 1e-8
    return torch.where(flat, 0.0, pareto_khat(lw))


def without_khat(
    result, name: str, elbo: torch.Tensor, seconds: float, draws: int, extras: dict
) -> LogZBlock:
    """The block of an estimate with no importance weights for k-hat (AIS, SMC): ``result``'s
    ``log_px``, ``stderr`` and ``ess``, k-hat NaN, ``draws`` chains or particles a datapoint."""
    n = result.log_px.shape[0]
    return LogZBlock(
        log_px=result.log_px.detach().cpu().double(),
        stderr=result.stderr.detach().cpu().double(),
        ess=result.ess.detach().cpu().double(),
        elbo=elbo.detach().cpu().double(),
        khat=torch.full((n,), math.nan, dtype=torch.float64),
        estimator=(name,) * n,
        draws=torch.full((n,), draws, dtype=torch.long),
        seconds={name: seconds},
        extras={k: v.detach().cpu().double() for k, v in extras.items()},
    )


def from_weights(
    result, name: str, *, elbo: torch.Tensor | None = None, seconds: float = 0.0, keep: bool = True
) -> LogZBlock:
    """The block of an importance estimate (an :class:`~pyro_vae.infer.importance.ImportanceResult`
    holding its log weights): k-hat from the weights, the result's own ELBO unless ``elbo`` is
    given, the weights kept when ``keep``."""
    n = result.log_px.shape[0]
    weights = result.log_weights.detach().cpu().double()
    return LogZBlock(
        log_px=result.log_px.detach().cpu().double(),
        stderr=result.stderr.detach().cpu().double(),
        ess=result.ess.detach().cpu().double(),
        elbo=(result.elbo if elbo is None else elbo).detach().cpu().double(),
        khat=psis_khat(weights),
        estimator=(name,) * n,
        draws=torch.full((n,), weights.shape[0], dtype=torch.long),
        seconds={name: seconds},
        log_weights=weights if keep else None,
    )
