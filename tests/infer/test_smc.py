"""Tempered SMC from a Gaussian start: exact on targets whose normaliser is known (Gaussians,
a two-component mixture, PPCA, the 2-D digits VAE's quadrature), unbiased for Z, its frozen
schedule and its resampling."""

import math

import pyro
import pytest
import torch

from pyro_vae.errors import NonFiniteEstimate
from pyro_vae.infer import estimate
from pyro_vae.infer.smc import (
    Schedule,
    _Particles,
    pilot_schedule,
    smc_log_normalizer,
    smc_sweeps,
)
from pyro_vae.models import ProbabilisticPCA
from tests.infer.quadrature import trained_2d_vae, trained_2d_vae_quadrature


def _gaussians(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = 0.3 * torch.randn(n, d, d, generator=g, dtype=torch.float64) + torch.eye(d)
    cov = a @ a.transpose(-1, -2)
    log_z = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mu, cov)

    def log_target(u, rows):
        return log_z + target.log_prob(u)

    return mu, torch.linalg.cholesky(cov), log_z, log_target


def _poor_start(mu, tril, shift=0.5, scale=0.7, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, d = mu.shape
    return mu + shift * torch.randn(n, d, generator=g, dtype=mu.dtype), scale * tril


def test_started_at_the_posterior_smc_is_exact_in_one_level():
    mu, tril, log_z, log_target = _gaussians()
    torch.manual_seed(0)
    r = smc_log_normalizer(log_target, mu, tril, num_particles=16, num_replicates=4)
    torch.testing.assert_close(r.log_px, log_z, atol=1e-9, rtol=0)
    assert bool((r.stderr < 1e-9).all()) and bool((r.levels == 1).all())


def test_from_a_poor_start_smc_beats_importance_sampling_with_as_many_draws():
    """A start shifted off the posterior and too narrow: SMC's estimates lie within their
    error bars of log Z, and closer to it than importance sampling from the same start with
    the same number of draws."""
    mu, tril, log_z, log_target = _gaussians(n=8)
    loc, scale = _poor_start(mu, tril)
    torch.manual_seed(0)
    r = smc_log_normalizer(log_target, loc, scale, num_particles=64, num_replicates=16)
    err = r.log_px - log_z
    assert bool((err.abs() < 4 * r.stderr + 0.01).all()), (err, r.stderr)
    start = torch.distributions.MultivariateNormal(loc, scale_tril=scale)
    is_errs = []
    for seed in range(5):  # importance sampling's errors, from draws SMC's did not move
        torch.manual_seed(100 + seed)
        u = start.sample((64 * 16,))
        lw = log_target(u, None) - start.log_prob(u)
        is_errs.append(torch.logsumexp(lw, 0) - math.log(lw.shape[0]) - log_z)
    is_err = torch.stack(is_errs)
    assert float(err.abs().mean()) < 0.5 * float(is_err.abs().mean()), (err, is_err)
    assert bool((r.levels > 1).all())  # the schedule bridged the gap in several levels


def test_z_hat_is_unbiased_and_log_z_hat_a_lower_bound():
    """E[Z-hat] = Z for the frozen schedule: over 400 independent small sweeps the mean of
    Z-hat / Z is 1 within its error, and the mean log Z-hat sits below log Z."""
    mu, tril, log_z, log_target = _gaussians(n=4, d=3, seed=2)
    loc, scale = _poor_start(mu, tril, shift=0.4, scale=0.8, seed=3)
    torch.manual_seed(1)
    schedule = pilot_schedule(log_target, loc, scale, num_particles=32)
    log_hat, _ = smc_sweeps(log_target, loc, scale, schedule, num_particles=8, num_replicates=400)
    ratio = (log_hat - log_z).exp()  # (400, 4)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(ratio.shape[0])
    assert bool(((mean - 1).abs() < 4 * se).all()), (mean, se)
    assert bool(((log_hat - log_z).mean(0) < 0).all())
    assert float(se.max()) < 0.05  # the check has teeth


def test_a_two_mode_target_within_the_starts_reach_is_estimated():
    """gamma = Z (0.6 N(a, 0.3^2 I) + 0.4 N(b, 0.3^2 I)) in 2-D: from a Gaussian covering both
    modes, SMC's estimate is within its error bar of log Z. (Importance sampling from this start
    passes too; a mode the start does not reach is missed by both: docs/numbers.md.)"""
    d = 2
    a, b = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.5])
    b = b.double()
    log_z = torch.tensor([1.5], dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(
        torch.stack([a, b]), 0.09 * torch.eye(d, dtype=torch.float64)
    )
    log_mix = torch.tensor([0.6, 0.4], dtype=torch.float64).log()

    def log_target(u, rows):  # u (S, 1, 2)
        return log_z + torch.logsumexp(comps.log_prob(u.unsqueeze(-2)) + log_mix, -1)

    loc = torch.tensor([[-0.2, 0.2]], dtype=torch.float64)
    tril = torch.eye(d, dtype=torch.float64).unsqueeze(0)
    torch.manual_seed(2)
    r = smc_log_normalizer(log_target, loc, tril, num_particles=128, num_replicates=16)
    err = float(r.log_px[0] - log_z[0])
    assert abs(err) < 4 * float(r.stderr[0]) + 0.01 and float(r.stderr[0]) < 0.05, err


def test_the_schedule_runs_from_zero_to_one_and_a_poorer_start_needs_more_levels():
    mu, tril, _, log_target = _gaussians()
    torch.manual_seed(3)
    near = pilot_schedule(log_target, *_poor_start(mu, tril, shift=0.1, scale=0.95))
    far = pilot_schedule(log_target, *_poor_start(mu, tril, shift=1.0, scale=0.5))
    for s in (near, far):
        assert isinstance(s, Schedule)
        assert bool((s.betas[0] == 0).all()) and bool((s.betas[-1] == 1).all())
        assert bool((s.betas[1:] >= s.betas[:-1]).all())
        assert s.log_step.shape == (s.num_levels, mu.shape[0])
    assert float(far.levels().double().mean()) > float(near.levels().double().mean())


def test_systematic_resampling_gives_each_particle_floor_or_ceil_of_its_share():
    torch.manual_seed(4)
    r, p, n, d = 3, 10, 5, 2
    ps = _Particles(
        torch.arange(r * p * n * d, dtype=torch.float64).view(r, p, n, d),
        torch.arange(r * p * n, dtype=torch.float64).view(r, p, n),
        torch.zeros(r, p, n, d, dtype=torch.float64),
    )
    log_w = torch.randn(r, p, n, dtype=torch.float64)
    out = ps.resampled(log_w)
    share = torch.softmax(log_w, 1) * p
    for i in range(r):
        for j in range(n):
            picked = (out.delta[i, :, j] - ps.delta[i, 0, j]) / n  # particle indices
            counts = torch.bincount(picked.round().long(), minlength=p).double()
            assert bool((counts >= share[i, :, j].floor()).all())
            assert bool((counts <= share[i, :, j].ceil()).all())
            assert int(counts.sum()) == p
    # the latent states travel with their deltas
    assert torch.equal(out.v[..., 0], out.delta * d)


def test_smc_on_ppca_and_the_2d_vae_matches_the_exact_log_px():
    """Through the estimator table: PPCA's closed form (a wrong guide, so refinement and SMC
    have work to do) and the 2-D digits VAE's quadrature, within the error bars."""
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    pyro.set_rng_seed(5)
    x = ppca.sample_data(12)
    guide = lambda x: ppca.wrong_guide(x, shift=1.0, inflate=1.2)  # noqa: E731
    r = estimate(ppca.model, guide, x, "smc", seed=0, refine_steps=200)
    err = r.log_px - ppca.log_px(x)
    assert bool((err.abs() < 4 * r.stderr + 0.01).all()), err
    assert r.estimator == ("smc",) * 12 and bool(torch.isnan(r.khat).all())
    assert bool((r.draws == 64 * 8).all())

    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    r = estimate(vae.model, vae.guide, x, "smc", seed=1)
    err = r.log_px - exact
    assert bool((err.abs() < 4 * r.stderr + 0.01).all()), err
    assert float(err.mean()) < 2 * float(err.std() / math.sqrt(err.numel()))  # not above


def test_resampling_gives_each_particle_its_expected_share_and_none_to_a_zero_weight():
    torch.manual_seed(6)
    p, calls = 8, 20000
    log_w = torch.randn(1, p, 1, dtype=torch.float64)
    log_w[0, 3, 0] = -math.inf
    ps = _Particles(
        torch.zeros(calls, p, 1, 1, dtype=torch.float64),
        torch.arange(p, dtype=torch.float64).view(1, p, 1).expand(calls, p, 1).contiguous(),
        torch.zeros(calls, p, 1, 1, dtype=torch.float64),
    )
    picked = ps.resampled(log_w.expand(calls, p, 1)).delta.long().flatten()
    counts = torch.bincount(picked, minlength=p).double() / calls  # mean offspring per call
    expected = torch.softmax(log_w.flatten(), 0) * p
    assert counts[3] == 0
    # systematic resampling: each count is floor or ceil of P w, so its variance is <= 1/4
    assert bool(((counts - expected).abs() < 4 * 0.5 / math.sqrt(calls)).all()), (counts, expected)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_target_nan_or_plus_inf_at_some_particles_is_refused_not_estimated(bad):
    d = 2
    loc, tril = torch.zeros(2, d, dtype=torch.float64), torch.eye(d).expand(2, d, d).double()
    normal = torch.distributions.Normal(0.0, 1.0)

    def log_target(u, rows):
        lp = normal.log_prob(u).sum(-1)
        lp[:, 1] = torch.where(u[:, 1, 0] > 1.5, bad, lp[:, 1])  # datapoint 1 only
        return lp

    torch.manual_seed(7)
    with pytest.raises(NonFiniteEstimate, match="NaN or \\+inf for 1 datapoint") as e:
        smc_log_normalizer(log_target, loc, tril, num_particles=64, num_replicates=4)
    assert e.value.datapoints == [1]


def test_a_target_zero_on_a_region_gives_its_mass():
    """A half-plane truncated N(0, I): Z = 1/2; -inf is a zero weight, not an error."""
    d = 2
    loc, tril = torch.zeros(1, d, dtype=torch.float64), torch.eye(d).expand(1, d, d).double()
    normal = torch.distributions.Normal(0.0, 1.0)

    def log_target(u, rows):
        lp = normal.log_prob(u).sum(-1)
        return torch.where(u[..., 0] > 0, lp, -math.inf)

    torch.manual_seed(8)
    r = smc_log_normalizer(log_target, loc, tril, num_particles=256, num_replicates=8)
    assert abs(float(r.log_px[0]) + math.log(2)) < 4 * float(r.stderr[0]) + 0.01


def test_a_datapoint_without_a_finite_particle_does_not_hold_the_block_at_max_levels():
    """Datapoint 1's target is zero at every draw: the pilot jumps it to beta = 1 rather than
    creeping, so the block's schedule stays as short as datapoint 0 needs."""
    mu, tril, _, log_target = _gaussians(n=2, d=2)

    def zero_for_one(u, rows):
        lp = log_target(u, rows)
        return torch.stack([lp[:, 0], torch.full_like(lp[:, 1], -math.inf)], 1)

    torch.manual_seed(9)
    schedule = pilot_schedule(zero_for_one, *_poor_start(mu, tril))
    assert schedule.num_levels < 20 and int(schedule.levels()[1]) == 1
