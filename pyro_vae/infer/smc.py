"""Tempered sequential Monte Carlo (SMC) of log Z per datapoint, from a refined proposal.

For datapoint n with an unnormalised log target gamma_n over unconstrained latents u (the
``log_target(u, rows)`` convention of :mod:`pyro_vae.infer.refine`) and a Gaussian start r_n
(a refined proposal), the particles move through the tempered distributions

.. math:: \\pi_\\beta(u) \\propto r_n(u)^{1 - \\beta} \\gamma_n(u)^{\\beta},
          \\qquad 0 = \\beta_0 < \\beta_1 < \\dots < \\beta_T = 1.

At level t each particle's weight is multiplied by ``(gamma / r)^(beta_t - beta_{t-1})`` at its
current state, the level's increment of log Z is the log of the mean of those multipliers, the
particles are resampled in proportion to them (systematic resampling) and each then takes HMC
moves that leave pi_{beta_t} invariant. Because every level resamples, the product of the
increments, Z-hat, is an unbiased estimate of Z_n (Del Moral 2004; Chopin & Papaspiliopoulos
2020, ch. 16), and log Z-hat a stochastic lower bound of log Z_n, like an IWAE bound.

Started from a refined proposal rather than the guide or the prior, the path is short: the
proposal already sits on the posterior, so a few levels bridge what importance sampling from it
could not (a weight tail too heavy for PSIS, or an error bar that would need more than a cap of
draws).

Adaptive, yet unbiased
----------------------
The temperatures are chosen for each datapoint by bisection on the conditional effective sample
size (Zhou, Johansen & Aston 2016; BlackJAX's adaptive tempered SMC), and each level's HMC step
size is adapted toward a target acceptance rate. Choosing either from the same particles whose
weights make the estimate would make Z-hat biased. So, as :mod:`pyro_vae.infer.ais` does for its
step sizes, a PILOT sweep (its own particles, its own draws) adapts both and records them; the
estimating sweeps then run with that schedule and those step sizes frozen, and their Z-hat are
unbiased given the pilot. The pilot's estimate is discarded.

The error bar
-------------
The estimate is the mean of ``num_replicates`` independent estimating sweeps (each of
``num_particles`` particles), ``log mean_r Z-hat_r``; its error bar is the delta-method standard
error of that mean over the replicates, as AIS's is over its chains
(:class:`~pyro_vae.infer.importance.LogWeightAccumulator`). Independent replicates need no
assumption about the particle genealogy (the Lee & Whiteley 2018 estimator needs the whole
ancestry and is only consistent), and they are what the unbiasedness argument gives for free.
With R replicates the error bar is itself uncertain by about 1/sqrt(2(R-1)) of its value.

Coordinates
-----------
Everything runs in the start's whitened coordinates v = L_n^{-1}(u - m_n), where r_n is
N(0, I): the same step size then suits every coordinate and datapoint about as well as the
refined proposal fits, and HMC's identity mass matrix is the proposal's covariance in u.

References
----------
Del Moral, Doucet & Jasra (2006), "Sequential Monte Carlo samplers", JRSS B 68(3).
Zhou, Johansen & Aston (2016), "Toward automatic model comparison: an adaptive sequential Monte
Carlo approach", JCGS 25(3).
Chopin & Papaspiliopoulos (2020), "An Introduction to Sequential Monte Carlo", Springer.
Lee & Whiteley (2018), "Variance estimation in the particle filter", Biometrika 105(3).
Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.errors import NonFiniteEstimate
from pyro_vae.infer.estimator import Estimator, LogZBlock, without_khat
from pyro_vae.infer.importance import ImportanceResult, LogWeightAccumulator, guide_elbo
from pyro_vae.infer.nonfinite import not_finite
from pyro_vae.infer.passes import plan_blocks
from pyro_vae.infer.refine import (
    DefensiveMixture,
    GaussianProposal,
    RefinedProposals,
    RefineOptions,
    refine_proposals,
)
from pyro_vae.options import option

LogTarget = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

NUM_PARTICLES = 64
NUM_REPLICATES = 8
NUM_LEAPFROG = 5
# Each level keeps this share of the particles effective. On 12 Fashion-MNIST test points whose
# refined proposals failed k-hat or the error bar (IWAE-trained model of docs/results.md), with
# 64 particles x 8 replicates: 0.5 gave 2.5 levels, 0.16 s a point and error bars of median
# 0.085 nats; 0.8 gave 4 levels, 0.31 s and 0.055 (0.9: 6 levels, 0.9 s, 0.068).
TARGET_CESS = 0.8
TARGET_ACCEPT = 0.65
MAX_LEVELS = 100  # the pilot jumps to beta = 1 at this level, whatever the CESS says
_ADAPT_GAIN = 1.0  # the pilot's log step size moves by gain * (acceptance - target) per move
_STEP_BOUNDS = (1e-3, 2.0)  # step sizes in whitened coordinates
_BISECTIONS = 50


@dataclass(frozen=True)
class Schedule:
    """A pilot's frozen schedule for N datapoints over T levels: ``betas`` ``(T + 1, N)`` from 0
    to 1 (a datapoint that reached 1 early stays there), and ``log_step`` ``(T, N)``, the HMC
    step size of each level's moves (whitened coordinates)."""

    betas: torch.Tensor
    log_step: torch.Tensor

    @property
    def num_levels(self) -> int:
        return self.log_step.shape[0]

    def levels(self) -> torch.Tensor:
        """Levels each datapoint uses before its beta reaches 1: ``(N,)``."""
        return (self.betas[1:] > self.betas[:-1]).sum(0)


@dataclass(frozen=True)
class SMCResult:
    """Per-datapoint SMC estimates: ``log_px`` (log of the mean Z-hat over the replicates),
    ``stderr`` (its error bar over them), ``ess`` (of the replicates' Z-hat), ``acceptance``
    (mean HMC acceptance of the estimating sweeps), ``levels`` (the datapoint's levels), and the
    replicates' ``log_z`` ``(R, N)``; all float64 but ``levels``."""

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    acceptance: torch.Tensor
    levels: torch.Tensor
    log_z: torch.Tensor
    num_particles: int

    @property
    def num_replicates(self) -> int:
        return self.log_z.shape[0]

    def importance_result(self) -> ImportanceResult:
        """The replicates' log Z-hat as an :class:`ImportanceResult` of R weights."""
        acc = LogWeightAccumulator()
        acc.update(self.log_z)
        return acc.result(self.log_z)

    @staticmethod
    def concat(parts: list[SMCResult]) -> SMCResult:
        """Results of consecutive datapoints joined in order (the same settings)."""
        if len(parts) == 1:
            return parts[0]
        return SMCResult(
            *(torch.cat([getattr(p, k) for p in parts]) for k in _PER_POINT),
            log_z=torch.cat([p.log_z for p in parts], dim=1),
            num_particles=parts[0].num_particles,
        )

    def block(self, name: str, elbo: torch.Tensor, seconds: float) -> LogZBlock:
        """The :class:`~pyro_vae.infer.estimator.LogZBlock` of these estimates (``draws``: the
        particles of all sweeps; ``extras``: ``acceptance`` and ``levels``)."""
        extras = {"acceptance": self.acceptance, "levels": self.levels}
        draws = self.num_particles * self.num_replicates
        return without_khat(self, name, elbo, seconds, draws, extras)


_PER_POINT = ("log_px", "stderr", "ess", "acceptance", "levels")


class _Whitened:
    """log(gamma / r) and its gradient at whitened points v ``(S, N, D)`` of a Gaussian start
    (loc ``(N, D)``, scale_tril ``(N, D, D)``)."""

    def __init__(self, log_target: LogTarget, loc: torch.Tensor, scale_tril: torch.Tensor):
        self.log_target = log_target
        self.loc, self.tril = loc.detach(), scale_tril.detach()
        d = loc.shape[-1]
        # log r(u) = log N(v; 0, I) - log |det L|
        self.log_det = self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        self.const = 0.5 * d * math.log(2 * math.pi)

    def __call__(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            u = self.loc + (self.tril @ v.permute(1, 2, 0)).permute(2, 0, 1)
            log_r = -0.5 * (v * v).sum(-1) - self.const - self.log_det
            delta = self.log_target(u, None) - log_r
            (grad,) = torch.autograd.grad(delta.sum(), v)
        delta = delta.detach()
        grad = torch.nan_to_num(grad, 0.0, 0.0, 0.0)
        return delta, grad  # NaN and +inf kept: a move there is rejected, a weight raises


@dataclass
class _Particles:
    """R x P particles of N datapoints: ``v`` ``(R, P, N, D)``, ``delta`` ``(R, P, N)`` and its
    gradient ``grad`` ``(R, P, N, D)``."""

    v: torch.Tensor
    delta: torch.Tensor
    grad: torch.Tensor

    @classmethod
    def start(cls, f: _Whitened, r: int, p: int, n: int, d: int) -> _Particles:
        v = torch.randn((r * p, n, d), dtype=f.loc.dtype, device=f.loc.device)
        delta, grad = f(v)
        return cls(v.view(r, p, n, d), delta.view(r, p, n), grad.view(r, p, n, d))

    def resampled(self, log_w: torch.Tensor) -> _Particles:
        """Systematic resampling within each (replicate, datapoint) by log weights ``(R, P,
        N)``."""
        r, p, n = log_w.shape
        w = torch.softmax(log_w.double(), dim=1).permute(0, 2, 1)  # (R, N, P)
        cum = w.cumsum(-1)
        cum = cum / cum[..., -1:]
        offset = torch.rand((r, n, 1), dtype=cum.dtype, device=cum.device)
        points = (offset + torch.arange(p, dtype=cum.dtype, device=cum.device)) / p
        # intervals [cum[i-1], cum[i]): a zero-weight particle's is empty, never hit
        idx = torch.searchsorted(cum.contiguous(), points, right=True).clamp(max=p - 1)
        idx = idx.permute(0, 2, 1)  # (R, P, N)
        d = self.v.shape[-1]
        idx_d = idx.unsqueeze(-1).expand(r, p, n, d)
        return _Particles(
            self.v.gather(1, idx_d), self.delta.gather(1, idx), self.grad.gather(1, idx_d)
        )


def _hmc(f: _Whitened, ps: _Particles, beta: torch.Tensor, step: torch.Tensor, leapfrog: int):
    """One HMC move of every particle leaving pi_beta invariant (log pi_beta(v) =
    -|v|^2 / 2 + beta * delta(v) + const); ``beta`` ``(R, N)``, ``step`` ``(N,)``. Returns the
    moved particles and the acceptance probabilities ``(R, P, N)``."""
    r, p, n, d = ps.v.shape
    b = beta.unsqueeze(1)  # (R, 1, N)
    e = step.to(ps.v.dtype).view(1, 1, n, 1)
    mom = torch.randn_like(ps.v)
    h0 = 0.5 * (ps.v * ps.v).sum(-1) - b * ps.delta + 0.5 * (mom * mom).sum(-1)
    q = ps.v
    mom = mom + 0.5 * e * (-q + b.unsqueeze(-1) * ps.grad)
    for i in range(leapfrog):
        q = q + e * mom
        delta, grad = f(q.reshape(r * p, n, d))
        delta, grad = delta.view(r, p, n), grad.view(r, p, n, d)
        g = -q + b.unsqueeze(-1) * grad
        mom = mom + (e if i < leapfrog - 1 else 0.5 * e) * g
    h1 = 0.5 * (q * q).sum(-1) - b * delta + 0.5 * (mom * mom).sum(-1)
    log_accept = (h0 - h1).double()
    # a proposal where the target is NaN or +inf is rejected (it is no state to move to)
    log_accept = torch.where(torch.isnan(delta) | (delta == math.inf), -math.inf, log_accept)
    log_accept = torch.where(torch.isnan(log_accept), -math.inf, log_accept).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    a3 = accept.unsqueeze(-1)
    moved = _Particles(
        torch.where(a3, q, ps.v),
        torch.where(accept, delta, ps.delta),
        torch.where(a3, grad, ps.grad),
    )
    return moved, log_accept.exp()


def _next_beta(delta: torch.Tensor, beta: torch.Tensor, target: float) -> torch.Tensor:
    """The next temperature of each (replicate, datapoint): the largest beta' <= 1 whose
    increments (beta' - beta) * delta (``delta`` ``(R, P, N)``, equally weighted particles) keep
    an effective sample size of ``target`` times P, by bisection."""
    p = delta.shape[1]
    d = delta.double()

    def ess_share(step):  # (R, N) -> (R, N)
        lw = step.unsqueeze(1) * d
        lw = torch.where(torch.isnan(lw), -math.inf, lw)
        log_s1 = torch.logsumexp(lw, 1)
        log_s2 = torch.logsumexp(2 * lw, 1)
        return torch.exp(2 * log_s1 - log_s2) / p

    room = (1.0 - beta).clamp(min=0.0)
    done = ess_share(room) >= target
    lo, hi = torch.zeros_like(room), room.clone()
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        ok = ess_share(mid) >= target
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    # where no particle has a finite weight (the ESS is undefined) the pilot's estimate is 0 in
    # any case: jump to 1 rather than creep for every datapoint of the block; where bisection
    # found no step at all, a sliver, so that the datapoint still advances
    hopeless = torch.isnan(ess_share(room))
    sliver = torch.minimum(room, torch.full_like(room, 1e-6))
    step = torch.where(done | hopeless, room, torch.where(lo > 0, lo, sliver))
    return torch.where(room > 0, (beta + step).clamp(max=1.0), beta)


def _increment(delta: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The level's log weights ``(R, P, N)`` and its increment of log Z ``(R, N)`` for
    temperature steps ``step`` ``(R, N)`` (zero: nothing added)."""
    lw = step.unsqueeze(1) * delta.double()
    lw = torch.where(step.unsqueeze(1) == 0, 0.0, lw)  # 0 * -inf: a finished datapoint
    # NaN and +inf stay: the estimate they make is refused (smc_log_normalizer)
    return lw, torch.logsumexp(lw, 1) - math.log(lw.shape[1])


def pilot_schedule(
    log_target: LogTarget,
    loc: torch.Tensor,
    scale_tril: torch.Tensor,
    *,
    num_particles: int = NUM_PARTICLES,
    num_leapfrog: int = NUM_LEAPFROG,
    num_moves: int = 1,
    target_cess: float = TARGET_CESS,
    target_accept: float = TARGET_ACCEPT,
    max_levels: int = MAX_LEVELS,
) -> Schedule:
    """The pilot sweep: one population of ``num_particles`` per datapoint, temperatures chosen
    by bisection on the effective sample size, step sizes adapted toward ``target_accept``;
    returns the schedule (its estimate is discarded)."""
    f = _Whitened(log_target, loc, scale_tril)
    n, d = loc.shape
    ps = _Particles.start(f, 1, num_particles, n, d)
    beta = torch.zeros((1, n), dtype=torch.float64, device=loc.device)
    log_step = torch.full((n,), math.log(min(1.0, d**-0.25)), dtype=torch.float64)
    log_step = log_step.to(loc.device)
    betas, steps = [beta[0]], []
    low, high = (math.log(b) for b in _STEP_BOUNDS)
    for level in range(max_levels):
        new = _next_beta(ps.delta, beta, target_cess)
        if level == max_levels - 1:
            new = torch.ones_like(beta)
        lw, _ = _increment(ps.delta, new - beta)
        ps, beta = ps.resampled(lw), new
        betas.append(beta[0])
        steps.append(log_step.clone())
        if bool((beta >= 1.0).all()):
            break
        for _ in range(num_moves):
            ps, accept = _hmc(f, ps, beta.to(ps.v.dtype), log_step.exp(), num_leapfrog)
            rate = accept.mean(1)[0]
            log_step = (log_step + _ADAPT_GAIN * (rate - target_accept)).clamp(low, high)
        steps[-1] = log_step.clone()  # the estimating sweeps move with the adapted size
    return Schedule(torch.stack(betas), torch.stack(steps))


def smc_sweeps(
    log_target: LogTarget,
    loc: torch.Tensor,
    scale_tril: torch.Tensor,
    schedule: Schedule,
    *,
    num_particles: int = NUM_PARTICLES,
    num_replicates: int = NUM_REPLICATES,
    num_leapfrog: int = NUM_LEAPFROG,
    num_moves: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_replicates`` independent estimating sweeps on a frozen ``schedule``: their log
    Z-hat ``(R, N)`` and the mean HMC acceptance ``(N,)``."""
    f = _Whitened(log_target, loc, scale_tril)
    n, d = loc.shape
    ps = _Particles.start(f, num_replicates, num_particles, n, d)
    log_z = torch.zeros((num_replicates, n), dtype=torch.float64, device=loc.device)
    accepted = torch.zeros(n, dtype=torch.float64, device=loc.device)
    moves = 0
    betas = schedule.betas.to(loc.device)
    for t in range(schedule.num_levels):
        step = (betas[t + 1] - betas[t]).expand(num_replicates, n)
        lw, inc = _increment(ps.delta, step)
        log_z = log_z + inc
        if t == schedule.num_levels - 1:
            break  # the weights are complete
        ps = ps.resampled(lw)
        beta = betas[t + 1].expand(num_replicates, n).to(ps.v.dtype)
        eps = schedule.log_step[t].exp().to(loc.device)
        for _ in range(num_moves):
            ps, accept = _hmc(f, ps, beta, eps, num_leapfrog)
            accepted += accept.mean((0, 1))
            moves += 1
    if moves == 0:  # no level moved its particles: no acceptance to report
        return log_z, torch.full_like(accepted, math.nan)
    return log_z, accepted / moves


def smc_log_normalizer(
    log_target: LogTarget,
    loc: torch.Tensor,
    scale_tril: torch.Tensor,
    *,
    num_particles: int = NUM_PARTICLES,
    num_replicates: int = NUM_REPLICATES,
    num_leapfrog: int = NUM_LEAPFROG,
    num_moves: int = 1,
    target_cess: float = TARGET_CESS,
    target_accept: float = TARGET_ACCEPT,
    max_levels: int = MAX_LEVELS,
) -> SMCResult:
    """log Z_n of every datapoint by tempered SMC from the Gaussian N(loc_n, L_n L_n^T): a
    pilot sweep sets the schedule, ``num_replicates`` estimating sweeps of ``num_particles``
    particles each make the estimate (see the module docstring).

    Parameters
    ----------
    log_target : callable
        ``log_target(u, rows)`` (called with ``rows=None``, u ``(S, N, D)``), differentiable.
    loc, scale_tril : Tensor
        The start, ``(N, D)`` and ``(N, D, D)`` (e.g. a refined
        :class:`~pyro_vae.infer.refine.GaussianProposal`'s).
    num_particles, num_replicates : int
        P particles per sweep and R independent estimating sweeps (R >= 2 for an error bar).
    num_leapfrog, num_moves : int
        Leapfrog steps per HMC move and moves per level.
    target_cess, target_accept : float
        The share of particles each level keeps effective, and the pilot's acceptance target.
    max_levels : int
        The most levels; the pilot jumps to beta = 1 at the last.
    """
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2, got {num_particles}")
    if num_replicates < 1:
        raise ValueError(f"num_replicates must be at least 1, got {num_replicates}")
    if num_leapfrog < 1 or num_moves < 1 or max_levels < 1:
        raise ValueError("num_leapfrog, num_moves and max_levels must be at least 1")
    if not 0.0 < target_cess < 1.0:
        raise ValueError(f"target_cess must lie in (0, 1), got {target_cess}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    moves = {"num_leapfrog": num_leapfrog, "num_moves": num_moves}
    schedule = pilot_schedule(
        log_target,
        loc,
        scale_tril,
        num_particles=num_particles,
        target_cess=target_cess,
        target_accept=target_accept,
        max_levels=max_levels,
        **moves,
    )
    log_z, acceptance = smc_sweeps(
        log_target,
        loc,
        scale_tril,
        schedule,
        num_particles=num_particles,
        num_replicates=num_replicates,
        **moves,
    )
    r = LogWeightAccumulator()
    r.update(log_z)
    res = r.result()
    bad = not_finite(res.log_px)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteEstimate(
            f"the SMC estimate is NaN or +inf for {len(rows)} datapoint(s) (first: {rows[:5]}): "
            "the target is NaN or +inf at some particles",
            datapoints=rows,
        )
    return SMCResult(
        log_px=res.log_px,
        stderr=res.stderr,
        ess=res.ess,
        acceptance=acceptance.cpu(),
        levels=schedule.levels().cpu(),
        log_z=log_z,
        num_particles=num_particles,
    )


def refined_smc(proposals: RefinedProposals, rows: torch.Tensor | None = None, **settings):
    """:func:`smc_log_normalizer` of the datapoints ``rows`` (increasing indices; all when
    None) of refined ``proposals``, each started from its refined proposal (the Gaussian part of
    a defensive mixture), in blocks whose particles fit the estimator's pass budget. Returns an
    :class:`SMCResult` in the order of ``rows``."""
    n = proposals.x.shape[0]
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows).flatten().long().cpu()
    p = settings.get("num_particles", NUM_PARTICLES)
    p *= settings.get("num_replicates", NUM_REPLICATES)
    parts = []
    for first, stop in plan_blocks(proposals.x[rows.to(proposals.x.device)], p, None):
        for space, proposal in proposals.of_rows(rows[first:stop]):
            start = _gaussian(proposal)
            parts.append(
                smc_log_normalizer(space.log_target, start.loc, start.scale_tril, **settings)
            )
    return SMCResult.concat(parts)


def _gaussian(proposal) -> GaussianProposal:
    while isinstance(proposal, DefensiveMixture):
        proposal = proposal.base
    if not isinstance(proposal, GaussianProposal):
        raise TypeError(f"SMC starts from a GaussianProposal, got {type(proposal).__name__}")
    return proposal.detach()


class SMC(Estimator):
    """Tempered SMC (:func:`smc_log_normalizer`) from a proposal refined for each datapoint
    (:func:`~pyro_vae.infer.refine.refine_proposals`), the block's rows refined together."""

    name = "smc"
    label = "tempered SMC from proposals refined per datapoint"
    has_khat = False
    block_rows = 256
    summary_keys = ("acceptance_mean", "levels_mean")

    @dataclass(frozen=True)
    class Settings(RefineOptions):
        smc_particles: int = option(
            NUM_PARTICLES,
            "SMC: particles of each replicate sweep",
            low=2,
            high=1_000_000,
            metavar="P",
            why="every particle holds its own latent state, activations and gradients in memory",
        )
        smc_replicates: int = option(
            NUM_REPLICATES,
            "SMC: independent sweeps per datapoint, whose spread gives the error bar",
            low=2,
            high=100_000,
            metavar="R",
            why="every sweep's particles are held in memory at once",
        )

        def smc(self) -> dict:
            """The keywords of :func:`smc_log_normalizer` these choose."""
            return {"num_particles": self.smc_particles, "num_replicates": self.smc_replicates}

    def run_block(self, model, guide, x, settings, context) -> LogZBlock:
        start = time.perf_counter()
        proposals = refine_proposals(
            model,
            guide,
            x,
            max_plate_nesting=context.max_plate_nesting,
            batch_size=x.shape[0],
            **settings.refine(),
        )
        r = refined_smc(proposals, **settings.smc())
        elbo = guide_elbo(model, guide, x, context.max_plate_nesting)
        return r.block(self.name, elbo, time.perf_counter() - start)

    def draws_per_point(self, settings) -> int:
        return settings.smc_particles * settings.smc_replicates

    def setting_name(self, draws, recorded) -> str:
        return f"smc-P{recorded.get('smc_particles')}-R{recorded.get('smc_replicates')}"

    def describe(self, draws, recorded) -> str:
        return (
            f"SMC with {recorded.get('smc_replicates')} sweeps x "
            f"{recorded.get('smc_particles')} particles from refined proposals"
        )

    def summary(self, block, settings) -> dict:
        return {
            "acceptance_mean": float(block.extras["acceptance"].mean()),
            "levels_mean": float(block.extras["levels"].mean()),
        }

    def summary_lines(self, summary, num_datapoints, draws) -> list[str]:
        return [
            f"  SMC       {summary['acceptance_mean']:10.2f} mean acceptance rate, "
            f"{summary['levels_mean']:.1f} levels on average"
        ]

    def khat_note(self, draws) -> str:
        return "SMC has no importance weights for PSIS; its error bar is over its replicates"

    def caveat(self, summary, frac_khat_above) -> str | None:
        return None  # no importance weights: its error bars are over its replicates
