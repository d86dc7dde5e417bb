"""Annealed importance sampling (AIS) of log p(x), per datapoint, for Pyro programs.

For each datapoint x, chains move through the distributions of the geometric path

.. math:: f_\\beta(z) = f_0(z)^{1 - \\beta}\\, p(x, z)^{\\beta}, \\quad
          0 = \\beta_0 < \\beta_1 < \\dots < \\beta_T = 1,

from a normalised start f_0 (the guide q(z|x), or the prior p(z)) to the unnormalised posterior
p(x, z). A chain starts at z_0 ~ f_0, and at each level t it adds
``(beta_t - beta_{t-1}) * (log p(x, z) - log f_0(z))`` at its current state to its log weight and
then moves by an HMC transition that leaves f_{beta_t} invariant. Each chain's weight w has
E[w] = p(x) (Neal 2001), so ``log mean_c w_c`` over C chains is a stochastic lower bound of
log p(x), like the IWAE bound L_K, and far tighter for the same compute on real data (Wu, Burda,
Salakhutdinov & Grosse 2017).

Run in reverse from an exact posterior sample (on data simulated from the model), the same path
gives a stochastic UPPER bound (:func:`reverse_ais_log_likelihood`; Grosse, Ghahramani & Adams
2015), which is what the bidirectional sandwich of :mod:`pyro_vae.infer.bdmc` uses.

Step sizes without bias
-----------------------
HMC needs a step size that suits each datapoint's posterior, and one global scalar (as in the
research code of Wu et al.) is too large for sharp posteriors and too small for broad ones. Adapting
it inside the estimating run from its own chains' acceptances would make the kernel at level t
depend on the chains' past, which breaks the argument that E[w] = p(x). So the step sizes are
tuned in a separate, shorter PILOT run (its own chains, its own draws) that adapts each datapoint's
log step size toward a target acceptance rate (a constant-gain update in log space, driven by the
acceptance averaged over the datapoint's chains) and records it along the path; the
estimating run then uses that schedule, frozen, with fresh chains. Given the pilot, the
estimating run is plain AIS with fixed kernels, so its weights are unbiased. The pilot's own
weights are discarded. The momentum's (diagonal) mass matrix is fixed per datapoint in the same
spirit, from draws of the guide that are not part of any chain.

Everything runs on ``C x B`` chains at once (C chains for each of B datapoints), in blocks of
datapoints so that memory stays bounded.

References
----------
Neal (2001), "Annealed importance sampling", Statistics and Computing.
Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based generative
models", ICLR.
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543.
Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.infer.estimator import Estimator, LogZBlock, without_khat
from pyro_vae.infer.estimator import Settings as EstimatorSettings
from pyro_vae.infer.importance import LogWeightAccumulator, guide_elbo
from pyro_vae.infer.latent import LatentSpace, check_data
from pyro_vae.infer.nonfinite import raise_if_not_finite
from pyro_vae.infer.passes import plan_blocks
from pyro_vae.infer.traces import guess_max_plate_nesting
from pyro_vae.options import option
from pyro_vae.progress import progress_bar

# The defaults of the settings a user chooses (AIS.Settings; Wu et al. 2017 use 16 chains).
NUM_CHAINS, NUM_STEPS, NUM_LEAPFROG = 16, 500, 5
START_DISTRIBUTIONS = ("guide", "prior")
SCHEDULES = ("sigmoid", "linear")
MASS_MATRICES = ("guide", "identity")
_MASS_DRAWS = 64  # guide draws per datapoint that set the diagonal mass matrix
_ADAPT_GAIN = 0.5  # log step size moves by gain * (acceptance - target) per pilot level
_SMOOTH_LEVELS = 5  # the pilot's log step sizes are averaged over this many levels


@dataclass(frozen=True)
class AISResult:
    """Per-datapoint results of AIS, each of shape ``(N,)`` (float64).

    Attributes
    ----------
    log_px : Tensor
        ``log mean_c w_c`` over the chains: a stochastic lower bound of log p(x) (forward AIS), or
        ``-log mean_c w_c`` of the reverse weights: a stochastic upper bound (reverse AIS).
    stderr : Tensor
        Delta-method standard error of ``log_px`` over the chains, ``sqrt((C/ess - 1)/(C - 1))``
        (NaN for one chain).
    ess : Tensor
        Effective sample size of the chains' normalised weights, in [1, C] (0 when every weight
        is zero). With few chains (C = 16) it, and ``stderr``, are rough: chains that all miss
        the same mode look consistent; reverse chains share their start, so their spread
        understates the error of the upper bound.
    acceptance : Tensor
        HMC acceptance rate, averaged over levels and chains, of the estimating run.
    step_size : Tensor
        Geometric mean over levels of the step size used.
    num_chains, num_steps : int
        C and the number of intermediate distributions T.
    log_weights : Tensor or None
        The chains' log weights ``(C, N)``, when kept.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_chains: int
    num_steps: int
    log_weights: torch.Tensor | None = None

    @staticmethod
    def concat(parts: list[AISResult]) -> AISResult:
        """Join results on consecutive blocks of datapoints."""
        if len(parts) == 1:
            return parts[0]
        weights = [p.log_weights for p in parts]
        return AISResult(
            log_px=torch.cat([p.log_px for p in parts]),
            stderr=torch.cat([p.stderr for p in parts]),
            ess=torch.cat([p.ess for p in parts]),
            acceptance=torch.cat([p.acceptance for p in parts]),
            step_size=torch.cat([p.step_size for p in parts]),
            num_chains=parts[0].num_chains,
            num_steps=parts[0].num_steps,
            log_weights=None if weights[0] is None else torch.cat(weights, dim=1),
        )


def annealing_schedule(
    num_steps: int, kind: str = "sigmoid", *, sharpness: float = 4.0
) -> torch.Tensor:
    """Inverse temperatures ``beta_0 = 0 < ... < beta_T = 1``, shape ``(T + 1,)``, float64.

    ``"linear"`` spaces them evenly; ``"sigmoid"`` (Wu et al. 2017) takes
    ``sigmoid(sharpness * (2 t / T - 1))``, rescaled to [0, 1]: dense near both ends, where the
    distributions change fastest.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    s = torch.sigmoid(sharpness * (2.0 * t - 1.0))
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


@dataclass
class _State:
    """Chains at u ``(C, N, D)``: ``log_f0`` (start density in u-space) and ``delta`` =
    log p(x, z) - log f0(z), with their gradients; log f_beta = log_f0 + beta * delta."""

    u: torch.Tensor
    log_f0: torch.Tensor
    delta: torch.Tensor
    grad_f0: torch.Tensor
    grad_delta: torch.Tensor

    def log_f(self, beta: float) -> torch.Tensor:
        return self.log_f0 + beta * self.delta

    def grad(self, beta: float) -> torch.Tensor:
        return self.grad_f0 + beta * self.grad_delta

    def where(self, keep_new: torch.Tensor, new: _State) -> _State:
        m = keep_new
        m3 = m.unsqueeze(-1)
        return _State(
            torch.where(m3, new.u, self.u),
            torch.where(m, new.log_f0, self.log_f0),
            torch.where(m, new.delta, self.delta),
            torch.where(m3, new.grad_f0, self.grad_f0),
            torch.where(m3, new.grad_delta, self.grad_delta),
        )


class _Path:
    """The geometric path of one block of datapoints in u-space."""

    def __init__(self, space: LatentSpace, start: str):
        self.space, self.start = space, start

    def state(self, u: torch.Tensor) -> _State:
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            joint = self.space.joint(u, guide=self.start == "guide")
            if self.start == "guide":
                log_f0 = joint.log_guide + joint.log_det
                delta = joint.log_prior + joint.log_lik - joint.log_guide
            else:
                log_f0 = joint.log_prior + joint.log_det
                delta = joint.log_lik
            grad_f0, grad_delta = _grads(log_f0, delta, u)
        return _State(u.detach(), log_f0.detach(), delta.detach(), grad_f0, grad_delta)

    def initial(self, num_chains: int) -> torch.Tensor:
        if self.start == "guide":
            return self.space.sample_guide(num_chains)
        return self.space.sample_prior(num_chains)


def _grads(log_f0, delta, u):
    """Gradients of two per-(chain, datapoint) terms w.r.t. u; non-finite entries become 0 (the
    move they would drive is rejected by the MH test, whose densities stay non-finite)."""
    g0 = torch.autograd.grad(log_f0.sum(), u, retain_graph=True, allow_unused=True)[0]
    g1 = torch.autograd.grad(delta.sum(), u, allow_unused=True)[0]
    g0 = torch.zeros_like(u) if g0 is None else torch.nan_to_num(g0, 0.0, 0.0, 0.0)
    g1 = torch.zeros_like(u) if g1 is None else torch.nan_to_num(g1, 0.0, 0.0, 0.0)
    return g0, g1


def _hmc(path, state, beta, step_size, inv_mass, num_leapfrog):
    """One HMC transition leaving f_beta invariant, for every chain at once.

    ``step_size`` ``(N,)`` and ``inv_mass`` ``(N, D)`` are per datapoint. Returns the new state
    and the acceptance probabilities ``(C, N)``.
    """
    eps = step_size.to(state.u.dtype).unsqueeze(-1)  # (N, 1)
    p = torch.randn_like(state.u) * inv_mass.rsqrt()
    kinetic0 = 0.5 * (p * p * inv_mass).sum(-1)
    u = state.u
    p = p + 0.5 * eps * state.grad(beta)
    new = state
    for step in range(num_leapfrog):
        u = u + eps * inv_mass * p
        new = path.state(u)
        if step < num_leapfrog - 1:
            p = p + eps * new.grad(beta)
    p = p + 0.5 * eps * new.grad(beta)
    kinetic1 = 0.5 * (p * p * inv_mass).sum(-1)
    log_accept = new.log_f(beta) - kinetic1 - state.log_f(beta) + kinetic0
    log_accept = torch.where(torch.isnan(log_accept), -math.inf, log_accept)
    log_accept = torch.clamp(log_accept, max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    return state.where(accept, new), log_accept.exp()


@dataclass(frozen=True)
class StepSizeSchedule:
    """A frozen per-datapoint step-size schedule along the path, tuned by a pilot run.

    ``log_step_size`` has shape ``(L, N)``: level ``l`` of the pilot's ``L`` levels, in the same
    schedule shape; a run with T levels uses the pilot's level at the same fraction of the path.
    """

    log_step_size: torch.Tensor

    def at(self, level: int, num_steps: int) -> torch.Tensor:
        """Step sizes ``(N,)`` for transition ``level`` (1..T) of a run with ``num_steps`` T."""
        pilot_levels = self.log_step_size.shape[0]
        j = min(pilot_levels, max(1, round(level * pilot_levels / num_steps))) - 1
        return self.log_step_size[j].exp()

    @staticmethod
    def constant(step_size: torch.Tensor) -> StepSizeSchedule:
        return StepSizeSchedule(step_size.log().unsqueeze(0))


def _anneal(path, u, betas, steps, inv_mass, num_leapfrog, bar, *, adapt=None):
    """Run chains from ``u`` along ``betas`` (ascending: forward AIS; descending: reverse).

    Returns the log weights ``(C, N)`` (float64), mean acceptance ``(N,)``, mean log step size
    ``(N,)`` and, with ``adapt = (target, bounds, log_eps0)``, the adapted log step sizes per
    level ``(T, N)``.
    """
    state = path.state(u)
    num_steps = betas.shape[0] - 1
    forward = bool(betas[-1] > betas[0])
    log_w = torch.zeros(state.delta.shape, dtype=torch.float64, device=u.device)
    acceptance = torch.zeros(state.delta.shape[1], dtype=torch.float64, device=u.device)
    mean_log_eps = torch.zeros_like(acceptance)
    transitions = 0
    history = []
    log_eps = None if adapt is None else adapt[2].clone()
    for t in range(1, num_steps + 1):
        b_prev, b = float(betas[t - 1]), float(betas[t])
        log_w = log_w + (b - b_prev) * state.delta.double()
        # Forward, the chain moves at each level but the last (the weight is complete); in
        # reverse, at each level but beta = 0 (nothing follows it).
        last = t == num_steps
        if not last or adapt is not None:
            level = t if forward else num_steps - t
            eps = log_eps.exp() if adapt is not None else steps.at(max(level, 1), num_steps)
            state, accept_prob = _hmc(path, state, b, eps, inv_mass, num_leapfrog)
            rate = accept_prob.double().mean(0)
            acceptance += rate
            mean_log_eps += eps.double().log()
            transitions += 1
            if adapt is not None:
                target, (low, high), _ = adapt
                log_eps = (log_eps + _ADAPT_GAIN * (rate.to(log_eps.dtype) - target)).clamp(
                    math.log(low), math.log(high)
                )
                history.append(log_eps)
        bar.update()
    transitions = max(transitions, 1)
    tuned = torch.stack(history) if history else None
    return log_w, acceptance / transitions, mean_log_eps / transitions, tuned


def _smooth(log_eps: torch.Tensor, window: int = _SMOOTH_LEVELS) -> torch.Tensor:
    """Moving average over levels ``(L, N)`` (a centred window, shorter at the ends)."""
    if log_eps.shape[0] <= 2 or window <= 1:
        return log_eps
    kernel = torch.ones(1, 1, window, dtype=log_eps.dtype, device=log_eps.device)
    series = log_eps.T.unsqueeze(1)  # (N, 1, L)
    pad = window // 2
    ones = torch.ones_like(series)
    total = torch.nn.functional.conv1d(series, kernel, padding=pad)
    count = torch.nn.functional.conv1d(ones, kernel, padding=pad)
    return (total / count).squeeze(1).T[: log_eps.shape[0]]


def _inverse_mass(space: LatentSpace, kind: str) -> torch.Tensor:
    """Diagonal inverse mass ``(N, D)``: the guide's variance in u-space, regularised toward
    1e-3 as in Stan's adaptation (``n / (n + 5) var + 5e-3 / (n + 5)``), or ones."""
    if kind == "identity":
        return torch.ones(space.num_data, space.dim, dtype=space.dtype, device=space.x.device)
    if kind != "guide":
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES}, got {kind!r}")
    draws = space.sample_guide(_MASS_DRAWS)
    var = draws.var(0)
    n = _MASS_DRAWS
    var = n / (n + 5.0) * var + 1e-3 * 5.0 / (n + 5.0)
    return torch.where(torch.isfinite(var), var, torch.ones_like(var))


def _check_settings(num_chains, num_steps, num_leapfrog, start, mass_matrix, target_accept):
    if num_chains < 1:
        raise ValueError(f"num_chains must be at least 1, got {num_chains}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if num_leapfrog < 1:
        raise ValueError(f"num_leapfrog must be at least 1, got {num_leapfrog}")
    if start not in START_DISTRIBUTIONS:
        raise ValueError(f"start must be one of {START_DISTRIBUTIONS}, got {start!r}")
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES}, got {mass_matrix!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")


@dataclass(frozen=True)
class _Settings:
    num_chains: int
    num_steps: int
    num_leapfrog: int
    schedule: str
    start: str
    mass_matrix: str
    pilot_steps: int
    target_accept: float
    step_size_bounds: tuple[float, float]
    initial_step_size: float | None


def _tune(path, space, settings, inv_mass, bar) -> StepSizeSchedule:
    """The pilot run: fresh chains along a ``pilot_steps``-level path, each datapoint's log step
    size adapted toward ``target_accept``; its weights are discarded."""
    s = settings
    init = s.initial_step_size if s.initial_step_size is not None else 0.5 * space.dim**-0.25
    low, high = s.step_size_bounds
    init = min(max(init, low), high)
    log_eps0 = torch.full((space.num_data,), math.log(init), dtype=torch.float64)
    log_eps0 = log_eps0.to(space.x.device)
    if s.pilot_steps == 0:
        return StepSizeSchedule.constant(log_eps0.exp())
    betas = annealing_schedule(s.pilot_steps, s.schedule)
    u = path.initial(s.num_chains)
    adapt = (s.target_accept, s.step_size_bounds, log_eps0)
    _, _, _, tuned = _anneal(path, u, betas, None, inv_mass, s.num_leapfrog, bar, adapt=adapt)
    return StepSizeSchedule(_smooth(tuned))


def _run(model, guide, x, settings, batch_size, max_plate_nesting, keep, progress, start_at=None):
    """Forward AIS (``start_at`` None) or reverse AIS from the latents ``start_at`` (a callable
    giving a block's exact posterior draws in u-space), block by block."""
    s = settings
    if x.shape[0] < 1:
        raise ValueError("x holds no datapoints")
    blocks = plan_blocks(x, s.num_chains, batch_size)
    betas = annealing_schedule(s.num_steps, s.schedule)
    per_block = s.pilot_steps + s.num_steps
    desc = "AIS" if start_at is None else "reverse AIS"
    bar = progress_bar(total=len(blocks) * per_block, desc=desc, unit="level", progress=progress)
    parts = []
    with bar:
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, guide, x[: blocks[0][1]])
        for first, stop in blocks:
            xb = x[first:stop]
            check_data(model, guide, xb, max_plate_nesting, (first, x.shape[0]))
            space = LatentSpace(model, guide, xb, max_plate_nesting=max_plate_nesting)
            path = _Path(space, s.start)
            inv_mass = _inverse_mass(space, s.mass_matrix)
            steps = _tune(path, space, s, inv_mass, bar)
            if start_at is None:
                u, run_betas = path.initial(s.num_chains), betas
            else:
                u = start_at(space, first, stop).expand(s.num_chains, -1, -1).contiguous()
                run_betas = betas.flip(0)
            log_w, acceptance, mean_log_eps, _ = _anneal(
                path, u, run_betas, steps, inv_mass, s.num_leapfrog, bar
            )
            accumulator = LogWeightAccumulator()
            accumulator.update(log_w)  # forward: log w; reverse: log w_rev, E[w_rev] = 1/p(x)
            r = accumulator.result()
            log_px = r.log_px if start_at is None else -r.log_px
            parts.append(
                AISResult(
                    log_px=log_px,
                    stderr=r.stderr,
                    ess=r.ess,
                    acceptance=acceptance,
                    step_size=mean_log_eps.exp(),
                    num_chains=s.num_chains,
                    num_steps=s.num_steps,
                    log_weights=log_w if keep else None,
                )
            )
    result = AISResult.concat(parts)
    raise_if_not_finite(
        result.log_px,
        x,
        model=model,
        guide=guide,
        max_plate_nesting=max_plate_nesting,
        what="the AIS estimate of log p(x)",
    )
    return result


def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_chains: int = NUM_CHAINS,
    num_steps: int = NUM_STEPS,
    num_leapfrog: int = NUM_LEAPFROG,
    schedule: str = "sigmoid",
    start: str = "guide",
    mass_matrix: str = "guide",
    pilot_steps: int = 100,
    target_accept: float = 0.65,
    step_size_bounds: tuple[float, float] = (1e-4, 1.0),
    initial_step_size: float | None = None,
    batch_size: int | None = None,
    max_plate_nesting: int | None = None,
    keep_log_weights: bool = False,
    progress: bool | str | None = False,
) -> AISResult:
    """Annealed importance sampling estimate of log p(x) for every datapoint of ``x``.

    ``model(x)`` and ``guide(x)`` follow :func:`~pyro_vae.infer.importance_log_likelihood`'s
    convention (every sample site in one plate over the rows of ``x``). For each
    datapoint, ``num_chains`` chains anneal from ``start`` to p(z|x) through ``num_steps``
    distributions (see the module docstring); the estimate is

    .. math:: \\hat{L}(x) = \\log \\frac{1}{C} \\sum_{c=1}^C w_c, \\qquad
              \\log w_c = \\sum_{t=1}^T (\\beta_t - \\beta_{t-1})
              \\left[\\log p(x, z_c^{(t-1)}) - \\log f_0(z_c^{(t-1)})\\right],

    with E[w_c] = p(x): a stochastic lower bound of log p(x), whose bias vanishes as T grows.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(x)`` and ``guide(x)``.
    x : Tensor
        The data, first dimension indexing datapoints.
    num_chains : int
        C, independent chains per datapoint (Wu et al. 2017: 16).
    num_steps : int
        T, intermediate distributions (Wu et al.: 10,000; a prototype on Fashion-MNIST from the
        guide agreed with refined importance sampling at 500).
    num_leapfrog : int
        Leapfrog steps per HMC transition (Wu et al.: 10).
    schedule : {"sigmoid", "linear"}
        Spacing of the inverse temperatures (:func:`annealing_schedule`).
    start : {"guide", "prior"}
        f_0: the guide q(z|x) (close to the posterior, so fewer levels are needed) or the
        prior p(z) (Cremer et al. 2018; independent of the guide's quality).
    mass_matrix : {"guide", "identity"}
        Diagonal mass matrix of HMC's momentum: the inverse of the guide's variance per latent
        coordinate and datapoint (from 64 extra guide draws), so one step size suits every
        coordinate; or the identity.
    pilot_steps : int
        Levels of the pilot run that tunes each datapoint's step size along the path (0: no
        pilot; ``initial_step_size`` is used throughout).
    target_accept : float
        Acceptance rate the pilot adapts toward (Wu et al.: 0.65).
    step_size_bounds : (float, float)
        Limits of the step size (Wu et al.: 1e-4 to 0.5, without a mass matrix).
    initial_step_size : float, optional
        The pilot's starting step size; default ``0.5 D^(-1/4)`` for D latent coordinates.
    batch_size : int, optional
        Datapoints per block (all C chains of each block run together); by default as many as
        fit the estimator's pass budget (:func:`~pyro_vae.infer.passes.pass_values`).
    max_plate_nesting : int, optional
        Found from one trace when not given.
    keep_log_weights : bool
        Also return the chains' log weights ``(C, N)``.
    progress : bool, str or None
        Progress over levels (see :mod:`pyro_vae.progress`).

    Returns
    -------
    AISResult
        Per-datapoint ``log_px``, ``stderr``, ``ess``, ``acceptance`` and ``step_size``.

    Raises
    ------
    UnsupportedDataError
        When observed values lie outside their site's support (every block is checked).
    NonFiniteEstimate
        When an estimate is NaN or +inf.
    """
    settings = _settings(**locals())
    return _run(
        model, guide, x, settings, batch_size, max_plate_nesting, keep_log_weights, progress
    )


def reverse_ais_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    latents: dict[str, torch.Tensor],
    *,
    num_chains: int = NUM_CHAINS,
    num_steps: int = NUM_STEPS,
    num_leapfrog: int = NUM_LEAPFROG,
    schedule: str = "sigmoid",
    start: str = "guide",
    mass_matrix: str = "guide",
    pilot_steps: int = 100,
    target_accept: float = 0.65,
    step_size_bounds: tuple[float, float] = (1e-4, 1.0),
    initial_step_size: float | None = None,
    batch_size: int | None = None,
    max_plate_nesting: int | None = None,
    keep_log_weights: bool = False,
    progress: bool | str | None = False,
) -> AISResult:
    """Reverse AIS from exact posterior draws: a stochastic UPPER bound of log p(x).

    ``latents`` hold, for each latent site of the model, one exact draw from p(z | x_n) for every
    row of ``x``, laid out as :func:`~pyro_vae.infer.latent.simulate` returns them with the data
    it simulates (one batch dimension per plate of the model, then the event dimensions). All C
    chains of a datapoint start from its draw and anneal from p(z|x) back to f_0, adding
    ``(beta_{t-1} - beta_t) * (log p(x, z) - log f_0(z))`` at each level. The reverse weight
    w_rev has E[w_rev] = 1 / p(x), so ``-log mean_c w_rev,c`` >= log p(x) in expectation
    (Grosse, Ghahramani & Adams 2015). Only data whose latents are known exactly (simulated from
    the model) have such draws. Parameters as in :func:`ais_log_likelihood`; the step sizes
    come from a forward pilot run, independent of the reverse chains.
    """
    params = dict(locals())
    params.pop("latents")
    settings = _settings(**params)

    def start_at(space: LatentSpace, first: int, stop: int) -> torch.Tensor:
        values = latent_rows(latents, space, first, stop, x.shape[0])
        return space.unconstrain({k: v.unsqueeze(0) for k, v in values.items()}).detach()

    return _run(
        model,
        guide,
        x,
        settings,
        batch_size,
        max_plate_nesting,
        keep_log_weights,
        progress,
        start_at=start_at,
    )


def latent_rows(
    latents: dict[str, torch.Tensor], space: LatentSpace, first: int, stop: int, num_rows: int
) -> dict[str, torch.Tensor]:
    """Rows ``first:stop`` of ``latents`` laid out as
    :func:`~pyro_vae.infer.latent.simulate` returns them for ``num_rows`` datapoints (each
    site's data axis found in ``space``), in the same layout."""
    values = {}
    for site in space.sites:
        v = latents[site.name].movedim(site.data_axis - 1, 0)
        if v.shape[0] != num_rows:
            raise ValueError(
                f"latents['{site.name}'] of shape {tuple(latents[site.name].shape)} holds "
                f"{v.shape[0]} datapoints along its data axis, x holds {num_rows}"
            )
        values[site.name] = v[first:stop].movedim(0, site.data_axis - 1)
    return values


def _settings(**kw) -> _Settings:
    _check_settings(
        kw["num_chains"],
        kw["num_steps"],
        kw["num_leapfrog"],
        kw["start"],
        kw["mass_matrix"],
        kw["target_accept"],
    )
    if kw["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kw['schedule']!r}")
    if kw["pilot_steps"] < 0:
        raise ValueError(f"pilot_steps must be at least 0, got {kw['pilot_steps']}")
    if kw["initial_step_size"] is not None and not kw["initial_step_size"] > 0:
        raise ValueError(f"initial_step_size must be positive, got {kw['initial_step_size']}")
    low, high = kw["step_size_bounds"]
    if not 0.0 < low <= high:
        raise ValueError(f"step_size_bounds must satisfy 0 < low <= high, got {(low, high)}")
    return _Settings(
        num_chains=kw["num_chains"],
        num_steps=kw["num_steps"],
        num_leapfrog=kw["num_leapfrog"],
        schedule=kw["schedule"],
        start=kw["start"],
        mass_matrix=kw["mass_matrix"],
        pilot_steps=kw["pilot_steps"],
        target_accept=kw["target_accept"],
        step_size_bounds=(float(low), float(high)),
        initial_step_size=kw["initial_step_size"],
    )


class AIS(Estimator):
    """Annealed importance sampling from the guide (:func:`ais_log_likelihood`), every chain
    of the block's rows at once."""

    name = "ais"
    label = "annealed importance sampling"
    has_khat = False
    summary_keys = ("acceptance_mean",)

    @dataclass(frozen=True)
    class Settings(EstimatorSettings):
        ais_steps: int = option(
            NUM_STEPS,
            "AIS: intermediate distributions",
            low=1,
            high=1_000_000,
            metavar="T",
            why="each is an HMC transition of every chain: a million already take hours",
        )
        ais_chains: int = option(
            NUM_CHAINS,
            "AIS: chains per datapoint",
            low=1,
            high=100_000,
            metavar="C",
            why="every chain holds its own latent state, activations and gradients in memory",
        )
        ais_leapfrog: int = option(
            NUM_LEAPFROG,
            "AIS: leapfrog steps per HMC transition",
            low=1,
            high=1000,
            metavar="L",
            why="each is a gradient of every chain at every one of the T distributions",
        )

        def ais(self) -> dict:
            """The keywords of :func:`ais_log_likelihood` these choose."""
            return {
                "num_steps": self.ais_steps,
                "num_chains": self.ais_chains,
                "num_leapfrog": self.ais_leapfrog,
            }

    def run_block(self, model, guide, x, settings, context) -> LogZBlock:
        start = time.perf_counter()
        r = ais_log_likelihood(
            model,
            guide,
            x,
            batch_size=x.shape[0],
            max_plate_nesting=context.max_plate_nesting,
            **settings.ais(),
        )
        elbo = guide_elbo(model, guide, x, context.max_plate_nesting)
        return block_of(r, self.name, elbo, time.perf_counter() - start)

    def draws_per_point(self, settings) -> int:
        return settings.ais_chains

    def setting_name(self, draws, recorded) -> str:
        return f"ais-T{recorded.get('ais_steps')}-C{draws}"

    def describe(self, draws, recorded) -> str:
        chains = f"{draws} chain" + ("" if draws == 1 else "s")
        return f"AIS with {chains} x {recorded.get('ais_steps')} distributions"

    def summary(self, block, settings) -> dict:
        return {"acceptance_mean": float(block.extras["acceptance"].mean())}

    def summary_lines(self, summary, num_datapoints, draws) -> list[str]:
        return [f"  HMC       {summary['acceptance_mean']:10.2f} mean acceptance rate"]

    def khat_note(self, draws) -> str:
        chains = f"{draws} chain" + ("" if draws == 1 else "s")
        return f"AIS has no importance weights for PSIS; its error bar is over its {chains}"

    def caveat(self, summary, frac_khat_above) -> str | None:
        return None  # no importance weights: its error bars are over its chains


def block_of(r: AISResult, name: str, elbo: torch.Tensor, seconds: float) -> LogZBlock:
    """The :class:`~pyro_vae.infer.estimator.LogZBlock` of an AIS estimate."""
    return without_khat(r, name, elbo, seconds, r.num_chains, {"acceptance": r.acceptance})
