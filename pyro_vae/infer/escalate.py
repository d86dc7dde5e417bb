"""An estimate of log p(x) that spends compute only where the diagnostics say it must.

Importance sampling from the amortised guide is cheap and, for most datapoints of a simple model,
good enough; where it is not, its own diagnostics say so: a Pareto k-hat above 0.7 (Vehtari et
al. 2024: the weights' tail is too heavy for the estimate to converge at a usable rate) or a Monte
Carlo error bar above a tolerance. :func:`auto_log_likelihood` escalates datapoint by datapoint:

1. IWAE from the guide for every datapoint, where it pays: the guide's pilot first screens 32
   evenly spaced datapoints of a block (of 128 or more), and where fewer than a fifth of them
   would keep the guide's estimate, the whole block goes straight to stage 2 (on Fashion-MNIST
   none would, and the guide's pilot was an eighth of auto's time);
2. for the datapoints stage 1 flags, importance sampling from a proposal refined for each of
   them (:func:`~pyro_vae.infer.refine.refine_proposals`); where the refined proposal's k-hat is
   fine but K draws would leave the error bar above the tolerance, as many fresh draws as the
   error bar says it takes (it shrinks as 1/sqrt(K); times 2, rounded up to K times a power
   of two), at most ``max_samples``: far cheaper than SMC for the same error bar. A datapoint
   goes on only where its k-hat is too high or even ``max_samples`` draws would leave the error
   bar above the tolerance;
3. for those still flagged, tempered SMC (:func:`~pyro_vae.infer.smc.refined_smc`) started from
   the proposal stage 2 refined for the datapoint, with a pilot round of sweeps whose error bar
   says how many fresh sweeps the estimate takes (times 2, at most 16 times the pilot's), until
   every datapoint is done or the time budget is spent. (Until issue 30's third session this
   stage was AIS from the guide: about 7 s a Fashion-MNIST point, against about 0.3 s for one
   round of SMC, whose error bars were also narrower.)

**The draws that decide are not the draws that estimate.** Each importance stage first draws a
pilot (K draws, ``pilot_samples``) from its proposal; the pilot's k-hat and error bar
decide whether the stage makes the datapoint's estimate, and from how many draws; the estimate
then comes from fresh draws, and the pilot's are discarded. An estimate kept because a check
passed on its own draws is biased low: the check passes most often when no large weight was
drawn, and an earlier version of this function, which kept stage 1's draws where they passed,
sat 0.005-0.007 nats below the exact mean of 2-D digits VAEs and 0.011 below that of a two-level
model, lower than plain IWAE (measured against quadrature; docs/numbers.md). With the pilot the
estimate of a datapoint whose pilot passed is an ordinary L_K, a stochastic lower bound of
log p(x), whatever the pilot drew.

The estimate's own draws are checked too, and the result is reported (``extras["reliable"]``:
k-hat and error bar at those draws), but never acted on: sending a datapoint whose estimate
failed on to the next stage would again keep only estimates that passed their own check. The
pilot asks for twice the draws its error bar says the tolerance takes, so that the
estimate's own error bar usually meets it as well (an error bar from heavy-tailed weights is
itself noisy: with 1.2 times, 10% and 27% of the estimates on 256 Fashion-MNIST test points of
the ELBO- and IWAE-trained models ended above the tolerance; with 2 times, 4% and 13%, for 3%
less and 24% more time). The pilot is as large as the estimate by default: k-hat from 100 draws
misjudged k-hat at 1000 often enough that, on 256 Fashion-MNIST test points, 7% of them went on
to the last stage (against 0.4% with pilots of 1000 draws) and 27% of the estimates failed their
own check (against 10%), for a longer run in all (45 s against 38 s).

Each datapoint reports the estimate of the last stage it reached, with that stage's error bar,
and which stage it was (a datapoint that no stage estimated, because the time budget ran out
before SMC reached it, keeps the last pilot's estimate, flagged). SMC has too few replicates for
k-hat; an SMC datapoint counts as reliable when its error bar over its replicates is within the
tolerance, a rough check with 8 replicates (replicates that all miss the same mode agree with
each other).

References
----------
Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance sampling", JMLR.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.errors import ConfigError, PyroVAEError, library_name
from pyro_vae.infer.estimator import (
    PSIS_MIN_SAMPLES,
    Estimator,
    LogZBlock,
    importance_samples,
    psis_khat,
)
from pyro_vae.infer.importance import IWAE, guide_elbo, importance_log_likelihood
from pyro_vae.infer.refine import Refined, RefineSettings, refine_proposals
from pyro_vae.infer.smc import NUM_REPLICATES, SMC, refined_smc
from pyro_vae.options import option

KHAT_THRESHOLD = 0.7
MAX_SAMPLES_FACTOR = 16  # auto_log_likelihood(max_samples=None): at most 16 K draws per datapoint
MORE_DRAWS_MARGIN = 2.0  # draws asked for: this times what the pilot's error bar says it takes
MORE_DRAWS_WEIGHTS = 2**24  # log weights kept at once by a stage's draws (128 MB of float64)
# auto's refinement stops sooner than refined's (windows of 10 steps, not 25: median 100 steps
# against 250), since its pilot asks for the draws a wider error bar takes. On 256 Fashion-MNIST
# test points (ELBO model of docs/results.md) the refined proposals' mean moved by 0.001 nats,
# k-hat > 0.7 went from 0.0% to 0.4%, the median error bar at K = 1000 from 0.043 to 0.049, the
# refinement took 6.0 s against 15.6 and the draws the tolerance asks for rose from 1434 to 2062
# per point (3.0 s per 1000 draws of the 256 points): about 12 s for the stage against 20.
# Fewer particles (4 or 2), patience 1 or a larger step size cost more draws than they save.
AUTO_REFINE = {"check_every": 10}
# The stages, in order: each an estimator of the table.
STAGES = (IWAE.name, Refined.name, SMC.name)
# Datapoints per block of the SMC stage (the time budget is checked between blocks).
SMC_BLOCK = 16
# Stage 1 screens a block first: its pilot on SCREEN_ROWS evenly spaced rows, and the rest only
# where at least SCREEN_KEEPS of those would keep the guide's estimate. A datapoint stage 1
# keeps costs 2 K draws (pilot and estimate); one it sends on costs its K pilot draws on top of
# stage 2's refinement, pilot and estimate (about 5 K on Fashion-MNIST), so the pilot pays where
# more than about a quarter of the datapoints pass it (the threshold is a fifth, to lean toward
# running it). On Fashion-MNIST none does (12 of 102 s
# per 1000 test points went to the guide's pilot); on the quick start's digits two thirds do.
SCREEN_ROWS = 32
SCREEN_KEEPS = 0.2


@dataclass(frozen=True)
class _Flags:
    """Which estimates auto escalates: k-hat above ``threshold`` (NaN included: too few finite
    weights) or an error bar above ``tolerance`` (or not finite)."""

    threshold: float
    tolerance: float

    def __call__(self, khat: torch.Tensor | None, stderr: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(stderr) | (stderr > self.tolerance)
        if khat is not None:
            bad |= ~(khat <= self.threshold)
        return bad


def auto_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    khat: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_samples: int = 1000,
    pilot_samples: int | None = None,
    max_samples: int | None = None,
    khat_threshold: float = KHAT_THRESHOLD,
    stderr_tolerance: float = 0.05,
    refine: dict | None = None,
    smc: dict | None = None,
    max_seconds: float | None = None,
    max_plate_nesting: int | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    progress: bool | str | None = False,
) -> LogZBlock:
    """log p(x) per datapoint, escalating from IWAE to refined IWAE to SMC where diagnostics ask.

    Parameters
    ----------
    model, guide : callable
        Pyro programs as for :func:`~pyro_vae.infer.importance_log_likelihood`.
    x : Tensor
        The data.
    khat : callable, optional
        Pareto k-hat per datapoint from log weights ``(K, N)``, returning ``(N,)``. By default
        the library's PSIS k-hat (:func:`~pyro_vae.infer.estimator.psis_khat`, through ArviZ).
    num_samples : int
        K, the importance samples of a datapoint's estimate by the guide or a refined proposal.
    pilot_samples : int, optional
        Draws of each stage's pilot, which decides whether the stage's estimate is made (and
        from how many draws) and is then discarded (default K: smaller pilots misjudge k-hat,
        see the module's docstring).
    max_samples : int, optional
        The most fresh draws from a refined proposal for a datapoint whose pilot k-hat is fine
        but whose error bar at K draws would be above ``stderr_tolerance`` (default
        ``16 * num_samples``; set it to ``num_samples`` to send such datapoints to SMC).
    khat_threshold : float
        k-hat above this flags a datapoint (0.7, Vehtari et al. 2024).
    stderr_tolerance : float
        An error bar above this (in nats) flags a datapoint.
    refine, smc : dict, optional
        Settings passed to :func:`~pyro_vae.infer.refine.refine_proposals` (over
        :data:`AUTO_REFINE`) and :func:`~pyro_vae.infer.smc.smc_log_normalizer` (``batch_size``:
        datapoints per SMC block, default :data:`SMC_BLOCK`).
    max_seconds : float, optional
        A soft wall-time budget: checked before each block of datapoints of the SMC stage, so a
        block begun in time runs to its end, and stages 1 and 2 always run. The datapoints SMC
        does not reach keep their stage-2 estimate, flagged unreliable.
    max_plate_nesting : int, optional
        Found from one trace when not given.
    chunk_size, batch_size : int, optional
        Particles and datapoints per vectorised pass of the guide's draws
        (:func:`~pyro_vae.infer.importance_log_likelihood`'s; planned from the data's shape when
        not given).
    progress : bool, str or None
        Progress of each stage (see :mod:`pyro_vae.progress`).

    Returns
    -------
    LogZBlock
        Each datapoint's estimate from the last stage it reached (``estimator`` names the
        stage), the guide's ELBO from stage 1's pilot (or from 100 guide draws where the screen
        skipped stage 1), and ``extras["reliable"]``: whether the
        final estimate passed its diagnostic (k-hat and error bar at its own draws, or the error
        bar for SMC).
    """
    if not 0.0 < khat_threshold:
        raise ValueError(f"khat_threshold must be positive, got {khat_threshold}")
    if not stderr_tolerance > 0.0:
        raise ValueError(f"stderr_tolerance must be positive, got {stderr_tolerance}")
    if num_samples < PSIS_MIN_SAMPLES:
        raise ValueError(
            f"num_samples must be at least {PSIS_MIN_SAMPLES} for k-hat to tell which datapoints "
            f"to escalate, got {num_samples}"
        )
    pilot = num_samples if pilot_samples is None else pilot_samples
    if not PSIS_MIN_SAMPLES <= pilot:
        raise ValueError(
            f"pilot_samples must be at least {PSIS_MIN_SAMPLES} for k-hat, got {pilot_samples}"
        )
    max_samples = MAX_SAMPLES_FACTOR * num_samples if max_samples is None else max_samples
    if max_samples < num_samples:
        raise ValueError(
            f"max_samples must be at least num_samples ({num_samples}), got {max_samples}"
        )
    khat = psis_khat if khat is None else khat
    flag = _Flags(khat_threshold, stderr_tolerance)
    refine, smc = {**AUTO_REFINE, **(refine or {})}, dict(smc or {})
    RefineSettings(**refine)  # checked before stage 1, not after it
    start = time.perf_counter()
    seconds = {}
    common = {"max_plate_nesting": max_plate_nesting, "progress": progress}

    def guide_draws(k: int, rows: torch.Tensor):
        return importance_log_likelihood(
            model,
            guide,
            x if rows.numel() == x.shape[0] else x[rows.to(x.device)],
            num_samples=k,
            keep_log_weights=True,
            chunk_size=chunk_size,
            batch_size=batch_size,
            **common,
        )

    n = x.shape[0]
    screened = _screen_rows(n)
    first = guide_draws(pilot, screened)
    state = _State.empty(n, first.log_px)
    stage = _Stage(state, khat, flag, num_samples, pilot, max_samples)
    kh = khat(first.log_weights)
    if screened.numel() < n and stage.keeps(first, kh).double().mean() < SCREEN_KEEPS:
        # stage 1 would keep too few datapoints to pay for its pilot: all go on to stage 2,
        # the screened ones included (their estimates will come from other draws)
        rows = torch.arange(n)
        elbo = guide_elbo(model, guide, x, max_plate_nesting)
    else:
        rest = _others(n, screened)
        elbo = torch.empty(n, dtype=first.elbo.dtype, device=first.elbo.device)
        elbo[screened.to(elbo.device)] = first.elbo
        parts = [(screened, first, kh)]
        if rest.numel():
            p = guide_draws(pilot, rest)
            elbo[rest.to(elbo.device)] = p.elbo
            parts.append((rest, p, khat(p.log_weights)))
        on = []
        for part, p, k in parts:

            def draws(k_: int, sel: torch.Tensor, part=part):
                return guide_draws(k_, part[sel.to(part.device)])

            on.append(stage.finish(part, p, k, IWAE.name, draws, more_draws=False))
        rows = torch.cat(on).sort().values
    seconds[IWAE.name] = time.perf_counter() - start
    if rows.numel():
        t = time.perf_counter()
        refined_rows = rows
        with _rows_of(rows):
            refined = refine_proposals(model, guide, x[rows.to(x.device)], **common, **refine)

            def refined_draws(k: int, local: torch.Tensor):
                return refined.log_likelihood(k, rows=local, keep_log_weights=True)

            rows = stage.run(rows, Refined.name, refined_draws, more_draws=True)
        seconds[Refined.name] = time.perf_counter() - t
    if rows.numel():
        t = time.perf_counter()
        block = smc.pop("batch_size", None) or SMC_BLOCK
        for first_row in range(0, rows.numel(), block):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
            part = rows[first_row : first_row + block]
            with _rows_of(part):  # SMC starts from the proposals refined in stage 2
                local = torch.searchsorted(refined_rows.cpu(), part.cpu())
                _smc_stage(state, flag, refined, local, part, smc)
        seconds[SMC.name] = time.perf_counter() - t
    return state.block(elbo, seconds)


def _smc_stage(state: _State, flag: _Flags, refined, local, part, smc: dict) -> None:
    """SMC for the rows ``part`` (``local``: their positions among the ``refined`` rows). A
    pilot round of R sweeps (``num_replicates``) decides how many sweeps the estimate takes: as
    many as its error bar says the tolerance takes (it shrinks as 1/sqrt(R)), times
    :data:`MORE_DRAWS_MARGIN`, a multiple of R, at most :data:`MAX_SAMPLES_FACTOR` R; the
    estimate then comes from that many fresh sweeps, and the pilot's are discarded."""
    reps = smc.get("num_replicates", NUM_REPLICATES)
    pilot = refined_smc(refined, local, **smc)
    state.update(part, pilot, math.nan, pilot.num_particles * reps, SMC.name)
    state.flagged[part] = True
    needed = (pilot.stderr.cpu().double() / flag.tolerance) ** 2 * reps
    now = torch.full(needed.shape, reps, dtype=torch.long)
    ratio = needed * MORE_DRAWS_MARGIN / reps
    sweeps = _more_draws(now, ratio, reps, MAX_SAMPLES_FACTOR * reps, powers_of_two=False)
    for r in torch.unique(sweeps).tolist():
        sel = (sweeps == r).nonzero().flatten()
        est = refined_smc(refined, local[sel], **{**smc, "num_replicates": int(r)})
        at = part[sel.to(part.device)]
        state.update(at, est, math.nan, est.num_particles * int(r), SMC.name)
        state.flagged[at] = flag(None, est.stderr.to(state.log_px))


@dataclass
class _Stage:
    """One stage of :func:`auto_log_likelihood` on some rows: a pilot of ``pilot`` draws from
    the stage's proposal decides, for each row, whether the stage makes its estimate and from
    how many draws; the estimate is then made from fresh draws, independent of the pilot's, and
    checked at its own draws (reported in ``flagged``, never acted on). Rows the pilot flags go
    on to the next stage.

    ``draws(k, local)`` scores rows ``local`` (positions within the stage's rows) with k fresh
    draws each and returns an ImportanceResult with its log weights.
    """

    state: _State
    khat: Callable
    flag: _Flags
    num_samples: int
    pilot: int
    max_samples: int

    def run(self, rows: torch.Tensor, name: str, draws, *, more_draws: bool) -> torch.Tensor:
        local = torch.arange(rows.numel())
        p = draws(self.pilot, local)
        return self.finish(rows, p, self.khat(p.log_weights), name, draws, more_draws=more_draws)

    def finish(self, rows, p, khat, name: str, draws, *, more_draws: bool) -> torch.Tensor:
        """The stage after its pilot ``p`` (k-hat ``khat``) on ``rows``; returns the rows the
        pilot sends on."""
        state, flag = self.state, self.flag
        khat = khat.to(state.log_px)
        # the pilot's estimate stands (flagged) until a stage replaces it
        state.update(rows, p, khat, self.pilot, name)
        state.flagged[rows] = True
        # the error bar shrinks as 1/sqrt(K): the draws the tolerance asks for, by the pilot,
        # and, with a margin, the draws drawn, so that the estimate's own error bar is likely to
        # meet it too
        k_final, go = self._routes(p, khat, more_draws)
        for k, sel in _by_draws(k_final, torch.arange(rows.numel())[go]):
            r = draws(k, sel)
            at = rows[sel.to(rows.device)]
            state.update(at, r, self.khat(r.log_weights), k, name)
            # reported, never acted on: acting on it would select estimates by their own draws
            state.flagged[at] = flag(state.khat[at], state.stderr[at])
        return rows[~go]

    def keeps(self, p, khat) -> torch.Tensor:
        """Which rows a pilot ``p`` (k-hat ``khat``) of a stage without more draws (stage 1)
        would keep: ``(N,)`` bool."""
        return self._routes(p, khat.to(self.state.log_px), more_draws=False)[1]

    def _routes(self, p, khat, more_draws: bool):
        """The draws of each row's estimate and whether the stage makes it (``go``)."""
        flag = self.flag
        needed = (p.stderr.cpu().double() / flag.tolerance) ** 2 * self.pilot
        wanted = needed * MORE_DRAWS_MARGIN
        k_final = torch.full((p.stderr.shape[0],), self.num_samples, dtype=torch.long)
        if more_draws:  # the stage estimates where the tolerance is in reach within the cap
            k_final = _more_draws(
                k_final, wanted / self.num_samples, self.num_samples, self.max_samples
            )
        fine = (khat.cpu() <= flag.threshold) & torch.isfinite(p.stderr.cpu())
        return k_final, fine & ((needed if more_draws else wanted) <= k_final)


def _screen_rows(n: int) -> torch.Tensor:
    """The rows stage 1's pilot screens first: :data:`SCREEN_ROWS` evenly spaced rows of a
    block of at least four times as many, or every row."""
    if n < 4 * SCREEN_ROWS:
        return torch.arange(n)
    return torch.linspace(0, n - 1, SCREEN_ROWS).round().long().unique()


def _others(n: int, rows: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    return torch.arange(n)[keep]


@contextlib.contextmanager
def _rows_of(rows: torch.Tensor):
    """An error of a stage run on ``x[rows]`` names its datapoints as rows of ``x``."""
    try:
        yield
    except PyroVAEError as e:
        if isinstance(getattr(e, "datapoints", None), list):
            e.datapoints = [int(rows[d]) for d in e.datapoints]
            e.template = f"{e.template} (datapoints counted in the block: {e.datapoints[:5]})"
            e.args = (e.render(library_name),)
        raise


@dataclass
class _State:
    """Each datapoint's estimate so far, as :func:`auto_log_likelihood`'s stages go."""

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    draws: torch.Tensor
    flagged: torch.Tensor
    stage: list[str]

    @classmethod
    def empty(cls, n: int, like: torch.Tensor) -> _State:
        """No estimate yet for ``n`` datapoints (every one flagged), in ``like``'s dtype and
        device: stage 1's pilot fills it."""
        nan = torch.full((n,), math.nan, dtype=like.dtype, device=like.device)
        return cls(
            log_px=nan.clone(),
            stderr=nan.clone(),
            ess=nan.clone(),
            khat=nan.clone(),
            draws=torch.zeros(n, dtype=torch.long, device=like.device),
            flagged=torch.ones(n, dtype=torch.bool, device=like.device),
            stage=[IWAE.name] * n,
        )

    def update(self, at: torch.Tensor, r, khat, draws: int, stage: str) -> None:
        """The estimates ``r`` (and ``khat``) of the datapoints ``at``, by ``stage``."""
        self.log_px[at] = r.log_px.to(self.log_px)
        self.stderr[at] = r.stderr.to(self.log_px)
        self.ess[at] = r.ess.to(self.log_px)
        self.khat[at] = khat if isinstance(khat, float) else khat.to(self.log_px)
        self.draws[at] = draws
        for row in at.tolist():
            self.stage[row] = stage

    def block(self, elbo: torch.Tensor, seconds: dict[str, float]) -> LogZBlock:
        return LogZBlock(
            log_px=self.log_px.cpu().double(),
            stderr=self.stderr.cpu().double(),
            ess=self.ess.cpu().double(),
            elbo=elbo.cpu().double(),
            khat=self.khat.cpu().double(),
            estimator=tuple(self.stage),
            draws=self.draws.cpu(),
            seconds=seconds,
            extras={"reliable": (~self.flagged).cpu()},
        )


class Auto(Estimator):
    """IWAE for every datapoint, escalated to refined proposals and then SMC where k-hat or the
    error bar flags it (:func:`auto_log_likelihood`), each stage on the whole block at once."""

    name = "auto"
    label = "iwae, then refined, then smc for the datapoints k-hat or the error bar flags"
    block_rows = 256
    stages = STAGES
    summary_keys = (
        "num_per_method",
        "frac_unreliable",
        "num_unreliable",
        "num_more_draws",
        "seconds_per_method",
        "stages",
    )

    @dataclass(frozen=True)
    class Settings(SMC.Settings, Refined.Settings):
        max_seconds: float | None = option(
            None,
            "soft time budget of auto: no new block of its SMC stage starts once it is spent "
            "(default none)",
            metavar="SECONDS",
        )
        stderr_tolerance: float = option(
            0.05,
            "error bar in nats above which auto escalates a datapoint",
            positive=True,
            metavar="NATS",
        )
        pilot_samples: int | None = option(
            None,
            "auto: draws of each importance stage's pilot, which decides whether that stage "
            "estimates a datapoint and is then discarded (default {estimator.num_samples})",
            metavar="K",
            low=PSIS_MIN_SAMPLES,
            high=100_000_000,
            why="the pilot's log weights are kept in memory for k-hat, 8 bytes each",
        )
        max_samples: int | None = option(
            None,
            "auto: the most fresh draws from a refined proposal whose k-hat is fine but whose "
            "error bar is above the tolerance, before SMC (default 16 times "
            "{estimator.num_samples})",
            metavar="K",
            low=1,
            high=100_000_000,
            why="the log weights of each datapoint's draws are kept in memory, 8 bytes each",
        )

        def check(self) -> None:
            super().check()
            if self.num_samples < PSIS_MIN_SAMPLES:
                raise ConfigError(
                    f"must be at least {PSIS_MIN_SAMPLES} for {{estimator.method}} auto, whose "
                    f"k-hat needs that many importance samples, got {self.num_samples}",
                    option="estimator.num_samples",
                )
            if self.max_samples is not None and self.max_samples < self.num_samples:
                raise ConfigError(
                    f"must be at least {{estimator.num_samples}} ({self.num_samples}), "
                    f"got {self.max_samples}",
                    option="estimator.max_samples",
                )
            if self.max_seconds is not None and not self.max_seconds > 0:
                raise ConfigError(
                    f"must be positive, got {self.max_seconds}", option="estimator.max_seconds"
                )

    def run_block(self, model, guide, x, settings, context) -> LogZBlock:
        left = None
        if settings.max_seconds is not None:
            left = max(0.0, settings.max_seconds - (time.perf_counter() - context.started))
        n = x.shape[0]
        return auto_log_likelihood(
            model,
            guide,
            x,
            num_samples=settings.num_samples,
            pilot_samples=settings.pilot_samples,
            max_samples=settings.max_samples,
            stderr_tolerance=settings.stderr_tolerance,
            refine={**settings.refine(), "batch_size": n},
            smc=settings.smc(),
            max_seconds=left,
            max_plate_nesting=context.max_plate_nesting,
            batch_size=n,
        )

    def describe(self, draws, recorded) -> str:
        return f"auto (IWAE, then refined, then SMC where flagged), {importance_samples(draws)}"

    def summary(self, block, settings) -> dict:
        counts = block.counts(STAGES)
        reliable = block.extras["reliable"]
        refined = block.where(Refined.name)
        return {
            "num_per_method": counts,
            "frac_unreliable": float((~reliable).double().mean()),
            "num_unreliable": int((~reliable).sum()),
            "num_more_draws": int((refined & (block.draws > settings.num_samples)).sum()),
            "seconds_per_method": {k: round(v, 3) for k, v in block.seconds.items()},
            "stages": list(STAGES),
        }

    def summary_lines(self, summary, num_datapoints, draws) -> list[str]:
        counts = summary.get("num_per_method")
        if not counts:
            return []
        more_draws = summary.get("num_more_draws") or 0  # evaluations before more draws: none
        more = f" ({more_draws} with more than {draws} draws)"
        text = ", ".join(
            f"{n} {m}" + (more if m == Refined.name and more_draws else "")
            for m, n in counts.items()
        )
        share = summary.get("frac_unreliable") or 0.0
        flagged = summary.get("num_unreliable", round(share * num_datapoints))
        return [
            f"  methods   {text}; {flagged} of {num_datapoints} still flagged ({100 * share:.2f}%)"
        ]

    def caveat(self, summary, frac_khat_above) -> str | None:
        share = summary.get("frac_unreliable") or 0.0
        if share > 0:
            return (
                f"{100 * share:.1f}% of its datapoints are still flagged after escalation "
                "(k-hat or error bar; a larger {estimator.max_seconds} lets SMC reach them)"
            )
        return None


def _more_draws(
    k_now, ratio, num_samples: int, max_samples: int, *, powers_of_two: bool = True
) -> torch.Tensor:
    """Draws for the next round: ``k_now * ratio`` rounded up to ``num_samples`` times a power
    of two (few distinct sizes, each one vectorised call), or to a multiple of ``num_samples``
    (``powers_of_two=False``), at most ``max_samples``.

    Importance draws round to powers of two: the rounding adds to the margin, and on 1000
    Fashion-MNIST test points rounding to multiples of K drew 22% fewer draws but left 31 and
    114 refined estimates above the tolerance at their own draws, against 24 and 82. SMC's
    sweeps round to multiples of the pilot's: there the sweeps are most of the stage's time."""
    wanted = k_now.double() * ratio.clamp(min=1.0)
    wanted = torch.where(torch.isnan(wanted), math.inf, wanted)
    times = (wanted / num_samples).clamp(min=1.0, max=max_samples / num_samples)
    times = torch.pow(2.0, torch.log2(times).ceil()) if powers_of_two else times.ceil()
    k = (num_samples * times).clamp(max=max_samples).long()
    return torch.maximum(k_now, k)


def _by_draws(k_now: torch.Tensor, pending: torch.Tensor):
    """``(k, rows)`` for each distinct number of draws among the ``pending`` rows, in parts of
    at most :data:`MORE_DRAWS_WEIGHTS` log weights (``k * len(rows)``, kept for k-hat)."""
    for k in torch.unique(k_now[pending]).tolist():
        rows = pending[k_now[pending] == k]
        step = max(1, MORE_DRAWS_WEIGHTS // int(k))
        for first in range(0, rows.numel(), step):
            yield int(k), rows[first : first + step]
