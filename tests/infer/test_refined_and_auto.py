"""Refined and defensive importance sampling, and the escalating estimator, on Pyro programs:
against PPCA's closed form and the quadrature oracle of a VAE with a 2-D latent."""

import math
import subprocess
import sys
from types import SimpleNamespace

import pyro
import pytest
import torch

from pyro_vae.arviz_compat import psis_khat
from pyro_vae.errors import ConfigError, UnsupportedDataError
from pyro_vae.infer import escalate, estimate, importance_log_likelihood, predictive, sbc
from pyro_vae.infer.escalate import (
    STAGES,
    _Flags,
    _more_draws,
    _Stage,
    _State,
    auto_log_likelihood,
)
from pyro_vae.infer.estimator import psis_khat as khat_of
from pyro_vae.infer.refine import (
    MAX_WIDEN,
    MIN_WIDEN,
    refine_proposals,
    refined_log_likelihood,
)
from pyro_vae.models import ProbabilisticPCA
from tests.infer.quadrature import trained_2d_vae, trained_2d_vae_quadrature


def _mean_and_se(t):
    return float(t.mean()), float(t.std() / math.sqrt(t.numel()))


def _wrong(ppca):
    return lambda x: ppca.wrong_guide(x, shift=1.0, inflate=1.2)


def test_refining_a_wrong_guide_on_ppca_makes_the_weights_nearly_constant():
    # the posterior is Gaussian: the refined full-covariance proposal can match it exactly
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(20)
    exact = ppca.log_px(x)
    before = importance_log_likelihood(ppca.model, _wrong(ppca), x, num_samples=500)
    after = refined_log_likelihood(ppca.model, _wrong(ppca), x, num_samples=500, widen=1.0)
    assert float(before.ess.mean()) < 200
    assert float(after.ess.mean()) > 450  # of 500
    torch.testing.assert_close(after.log_px, exact, atol=0.01, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [{"widen": 1.1}, {"widen": 1.0, "defensive_weight": 0.5, "defensive_widen": 1.5}],
    ids=["widened", "defensive"],
)
def test_refined_iwae_agrees_with_quadrature_within_its_error_bar(settings):
    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    r = refined_log_likelihood(vae.model, vae.guide, x, num_samples=4000, **settings)
    err = r.log_px - exact
    assert bool((err.abs() < 4 * r.stderr + 0.005).all()), err.tolist()
    guide = importance_log_likelihood(vae.model, vae.guide, x, num_samples=4000)
    assert float(r.ess.mean()) > float(guide.ess.mean())  # a better proposal than the guide


@pytest.mark.parametrize("defensive_weight", [0.0, 0.5])
def test_refined_small_k_bound_stays_below_log_px_in_expectation(defensive_weight):
    # L_K <= log p(x) in expectation for any proposal whose exact density is used: averaged over
    # 60 repeats and 20 datapoints, the refined L_3 sits below the quadrature answer
    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    repeats = x.repeat(60, 1)
    r = refined_log_likelihood(
        vae.model,
        vae.guide,
        repeats,
        num_samples=3,
        widen=1.0,
        defensive_weight=defensive_weight,
        max_steps=200,
    )
    gap, se = _mean_and_se(r.log_px - exact.repeat(60))
    assert gap < 2 * se  # not above log p(x)
    assert gap > -0.1  # and, refined, close to it even at K = 3


def test_auto_escalates_only_the_flagged_datapoints_and_says_which_method():
    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    r = auto_log_likelihood(
        vae.model,
        vae.guide,
        x,
        khat=khat_of,
        num_samples=200,
        stderr_tolerance=0.03,
        smc={"num_particles": 64, "num_replicates": 8},
    )
    first = importance_log_likelihood(vae.model, vae.guide, x, num_samples=200)
    counts = r.counts(STAGES)
    assert set(counts) == set(STAGES) and sum(counts.values()) == x.shape[0]
    assert counts["iwae"] < x.shape[0]  # the guide's K=200 error bars exceed 0.03 somewhere
    assert set(r.estimator) <= set(STAGES)
    # reliable datapoints meet the tolerance; every escalated estimate is right
    assert bool((r.stderr[r.extras["reliable"]] <= 0.03).all())
    err = r.log_px - exact
    assert bool((err.abs() < 4 * r.stderr + 0.02).all()), err.tolist()
    assert bool(torch.isnan(r.khat[r.where("smc")]).all())
    assert bool(torch.isfinite(r.khat[~r.where("smc")]).all())
    assert r.elbo.shape == first.elbo.shape


def test_auto_with_no_time_left_keeps_the_refined_estimates_flagged():
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(10)
    r = auto_log_likelihood(
        ppca.model,
        _wrong(ppca),
        x,
        khat=khat_of,
        num_samples=100,
        stderr_tolerance=1e-6,  # nothing passes it: everything escalates
        max_seconds=1e-9,  # ... but SMC gets no time
    )
    assert r.counts(STAGES) == {"iwae": 0, "refined": 10, "smc": 0}
    assert not r.extras["reliable"].any() and "smc" in r.seconds


def test_auto_takes_the_library_psis_khat_by_default():
    """No k-hat function to write: the default is the library's PSIS k-hat, so the same seed
    gives the same result as passing it (transposed log weights and all) by hand."""
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5)
    x = ppca.sample_data(6)
    settings = {"num_samples": 50, "stderr_tolerance": 0.02, "smc": {"num_particles": 16}}
    pyro.set_rng_seed(3)
    by_default = auto_log_likelihood(ppca.model, _wrong(ppca), x, **settings)
    pyro.set_rng_seed(3)
    by_hand = auto_log_likelihood(
        ppca.model,
        _wrong(ppca),
        x,
        khat=lambda lw: torch.from_numpy(psis_khat(lw.T.numpy())),
        **settings,
    )
    torch.testing.assert_close(by_default.khat, by_hand.khat, equal_nan=True)
    torch.testing.assert_close(by_default.log_px, by_hand.log_px)
    assert bool(torch.isfinite(by_default.khat[~by_default.where("smc")]).all())


def test_the_library_psis_khat_reads_log_weights_as_k_by_n():
    log_weights = torch.randn(100, 3, dtype=torch.float64)
    log_weights[:, 1] = 0.0  # equal weights: no tail, k-hat 0
    log_weights[:, 2] = 3.0 * torch.randn(100, dtype=torch.float64) ** 2  # a heavy tail
    khat = escalate.psis_khat(log_weights)
    assert khat.shape == (3,) and khat.dtype == torch.float64
    torch.testing.assert_close(khat, torch.from_numpy(psis_khat(log_weights.T.numpy())))
    assert khat[1] == 0.0 and khat[2] > 0.7
    assert torch.isnan(escalate.psis_khat(log_weights[:20])).all()  # too few weights for a tail


def test_the_workflow_checks_are_exported_with_the_estimators():
    import pyro_vae.infer as infer

    for name in ("predictive_check", "PredictiveCheck", "simulation_based_calibration"):
        assert name in infer.__all__
    assert infer.predictive_check is predictive.predictive_check
    assert infer.simulation_based_calibration is sbc.simulation_based_calibration
    assert infer.SBCResult is sbc.SBCResult


def test_the_estimators_psis_constants_are_arviz_compats():
    from pyro_vae import arviz_compat
    from pyro_vae.infer import estimator

    assert estimator.KHAT_THRESHOLD == arviz_compat.KHAT_THRESHOLD
    assert estimator.PSIS_MIN_SAMPLES == arviz_compat.PSIS_MIN_SAMPLES


def test_importing_infer_leaves_arviz_unimported():
    code = "import sys, pyro_vae.infer; print(sorted(m for m in sys.modules if 'arviz' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_refined_refuses_unsupported_data():
    import pyro
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(UnsupportedDataError):
        refined_log_likelihood(model, guide, torch.full((4, 1), 0.5), num_samples=5)
    with pytest.raises(ValueError, match="defensive_weight"):
        refined_log_likelihood(model, guide, torch.ones(4, 1), defensive_weight=1.0)


def test_auto_needs_enough_samples_for_k_hat():
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    with pytest.raises(ValueError, match="at least 21"):
        auto_log_likelihood(
            ppca.model, _wrong(ppca), ppca.sample_data(3), khat=khat_of, num_samples=20
        )


def test_refined_proposals_score_any_subset_of_their_datapoints_across_blocks():
    # refined for the exact (Gaussian) posterior, the weights are nearly constant: each row's
    # estimate is its own exact log p(x), whichever rows are asked for and in whichever block
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(12)
    exact = ppca.log_px(x)
    refined = refine_proposals(ppca.model, _wrong(ppca), x, widen=1.0, batch_size=5)
    assert refined.blocks == ((0, 5), (5, 10), (10, 12))
    rows = torch.tensor([1, 4, 5, 11])
    r = refined.log_likelihood(300, rows=rows, keep_log_weights=True)
    assert r.log_weights.shape == (300, 4)
    torch.testing.assert_close(r.log_px, exact[rows], atol=0.01, rtol=0)
    whole = refined.log_likelihood(300)
    torch.testing.assert_close(whole.log_px, exact, atol=0.01, rtol=0)
    for bad in (torch.tensor([4, 1]), torch.tensor([12]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="rows"):
            refined.log_likelihood(10, rows=bad)


def test_refine_settings_are_checked_and_unknown_ones_refused():
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(3)
    with pytest.raises(TypeError, match="widenn"):
        refine_proposals(ppca.model, _wrong(ppca), x, widenn=1.0)
    with pytest.raises(ValueError, match="init_samples"):
        refined_log_likelihood(ppca.model, _wrong(ppca), x, init_samples=1)


@pytest.mark.parametrize("widen", [1e-300, 0.5, MIN_WIDEN, 10.5, 3e38])
def test_widen_outside_its_range_is_one_config_error_before_any_work(widen):
    """A proposal narrowed to a point (1e-300 underflowed its scale to 0) or widened past float32
    ended in a traceback from deep inside; now every method that refines refuses it first, the
    way ``pyro-vae evaluate`` calls it too (a ConfigError is one error line there). In float32,
    as a trained VAE is."""
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5, dtype=torch.float32)
    x = ppca.sample_data(3)
    match = "widen must be above 1/sqrt" if widen <= MIN_WIDEN else "widen must be at most 10"
    with pytest.raises(ConfigError, match=match):
        refined_log_likelihood(ppca.model, _wrong(ppca), x, num_samples=30, widen=widen)

    def no_stage_one(log_weights):
        raise AssertionError("auto ran its first stage before checking its refine settings")

    with pytest.raises(ConfigError, match=match):
        auto_log_likelihood(ppca.model, _wrong(ppca), x, khat=no_stage_one, refine={"widen": widen})
    for method in ("refined", "auto"):
        with pytest.raises(ConfigError, match=match):
            estimate(ppca.model, _wrong(ppca), x, method, widen=widen, refine_steps=10)


def test_widen_at_the_ends_of_its_range_is_accepted():
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5, dtype=torch.float32)
    x = ppca.sample_data(3)
    for widen in (math.nextafter(MIN_WIDEN, 1.0), MAX_WIDEN):
        r = refined_log_likelihood(ppca.model, _wrong(ppca), x, num_samples=30, widen=widen)
        assert torch.isfinite(r.log_px).all()


def test_more_draws_round_up_to_k_times_a_power_of_two_or_a_multiple_within_the_cap():
    k_now = torch.tensor([1000, 1000, 1000, 2000, 8000, 1000, 1000])
    ratio = torch.tensor([1.5, 3.0, 1.0001, 5.0, 100.0, 2.1, math.nan])
    powers = [2000, 4000, 2000, 16000, 16000, 4000, 16000]
    assert _more_draws(k_now, ratio, 1000, 16000).tolist() == powers
    multiples = [2000, 3000, 2000, 10000, 16000, 3000, 16000]
    assert _more_draws(k_now, ratio, 1000, 16000, powers_of_two=False).tolist() == multiples


def test_auto_spends_more_draws_where_only_the_error_bar_is_too_wide():
    # a proposal 1.2 times as wide as the exact posterior: light tails (k-hat fine) but an
    # error bar at K = 100 (about 0.05) above a tolerance of 0.03, which more draws meet
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(10)
    exact = ppca.log_px(x)
    settings = {"khat": khat_of, "num_samples": 100, "stderr_tolerance": 0.03}
    refine = {"widen": 1.2}
    r = auto_log_likelihood(ppca.model, _wrong(ppca), x, refine=refine, **settings)
    assert r.counts(STAGES) == {"iwae": 0, "refined": 10, "smc": 0}
    assert bool(r.extras["reliable"].all()) and bool((r.stderr <= 0.03).all())
    assert bool((r.draws > 100).all()) and bool((r.draws <= 1600).all())
    err = r.log_px - exact
    assert bool((err.abs() < 4 * r.stderr + 0.005).all()), err.tolist()
    # with no more draws allowed, the same datapoints go on to SMC instead
    r = auto_log_likelihood(
        ppca.model,
        _wrong(ppca),
        x,
        refine=refine,
        max_samples=100,
        smc={"num_particles": 8, "num_replicates": 4},
        **settings,
    )
    assert r.counts(STAGES)["smc"] > 0
    # SMC's particles: 8 per sweep, the sweeps a multiple of the pilot's 4, at most 16 times it
    sweeps = r.draws[r.where("smc")]
    assert bool((sweeps % 32 == 0).all()) and bool(((sweeps >= 32) & (sweeps <= 512)).all())
    assert bool((r.draws[r.where("refined")] == 100).all())
    with pytest.raises(ValueError, match="max_samples"):
        auto_log_likelihood(ppca.model, _wrong(ppca), x, max_samples=99, **settings)


def test_auto_decides_on_pilot_draws_and_estimates_from_fresh_ones():
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(8)
    seen = []

    def recording_khat(log_weights):
        seen.append(log_weights.shape[0])
        return torch.zeros(log_weights.shape[1], dtype=log_weights.dtype)

    r = auto_log_likelihood(
        ppca.model, _wrong(ppca), x, khat=recording_khat, num_samples=300, stderr_tolerance=10.0
    )
    assert r.counts(STAGES)["iwae"] == 8 and bool((r.draws == 300).all())
    assert seen == [300, 300]  # the pilot's (K by default), then the estimate's
    seen.clear()
    r = auto_log_likelihood(
        ppca.model,
        _wrong(ppca),
        x,
        khat=recording_khat,
        num_samples=300,
        pilot_samples=50,
        stderr_tolerance=10.0,
    )
    assert seen == [50, 300] and bool((r.draws == 300).all())


def test_auto_estimates_where_its_check_passed_are_not_biased_by_that_check():
    """A datapoint kept at stage 1 holds an ordinary L_K: its mean over repeats equals plain
    IWAE's mean, whereas keeping the draws that passed the check (the rule before pilots) sits
    well below it. K = 30 draws of a wrong guide on PPCA, about half the repeats passing."""
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5)
    torch.manual_seed(1)
    x = ppca.sample_data(1).repeat(4000, 1)
    exact = ppca.log_px(x)
    guide = lambda x: ppca.wrong_guide(x, shift=0.5, inflate=1.0)  # noqa: E731
    pyro.set_rng_seed(0)
    plain = importance_log_likelihood(ppca.model, guide, x, num_samples=30)
    # stage 1 keeps a datapoint where its pilot's error bar, with the margin, is within the
    # tolerance: about half of them here
    tolerance = float(plain.stderr.median()) * math.sqrt(escalate.MORE_DRAWS_MARGIN)
    # the old rule: keep the draws whose own error bar passed
    passed = plain.stderr <= tolerance / math.sqrt(escalate.MORE_DRAWS_MARGIN)
    old_gap, old_se = _mean_and_se((plain.log_px - exact)[passed])
    plain_gap, plain_se = _mean_and_se(plain.log_px - exact)
    assert old_gap < plain_gap - 3 * math.hypot(old_se, plain_se)  # the test can tell
    r = auto_log_likelihood(
        ppca.model,
        guide,
        x,
        khat=lambda lw: torch.zeros(lw.shape[1], dtype=lw.dtype),
        num_samples=30,
        pilot_samples=30,
        stderr_tolerance=tolerance,
        refine={"max_steps": 20},
        max_seconds=1e-9,  # no AIS: only stage 1's datapoints are looked at
    )
    kept = r.where("iwae")
    assert 1000 < int(kept.sum()) < 3000
    gap, se = _mean_and_se((r.log_px - exact)[kept])
    assert abs(gap - plain_gap) < 3 * math.hypot(se, plain_se), (gap, plain_gap, old_gap)


def test_auto_refuses_a_pilot_too_small_for_k_hat():
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5)
    x = ppca.sample_data(3)
    with pytest.raises(ValueError, match="pilot_samples must be at least 21"):
        auto_log_likelihood(ppca.model, _wrong(ppca), x, num_samples=100, pilot_samples=20)
    with pytest.raises(ConfigError) as e:
        escalate.Auto.Settings(pilot_samples=20)
    assert e.value.option == "estimator.pilot_samples"
    assert escalate.Auto.Settings(pilot_samples=21).pilot_samples == 21


def test_a_stage_routes_by_the_draws_needed_and_draws_twice_as_many_within_the_cap():
    # pilots of 100 draws with error bars 0.01 .. 0.08 against a tolerance of 0.02: they need
    # (s / 0.02)^2 * 100 draws (25, 100, 400, 900, 1600) and get twice that, rounded up to a
    # multiple of 100, at most 1600; a datapoint needing more than the cap goes on
    stderr = torch.tensor([0.01, 0.02, 0.04, 0.06, 0.08, 0.09], dtype=torch.float64)
    n = stderr.numel()

    def result(k, rows):
        m = rows.numel()
        zeros = torch.zeros(m, dtype=torch.float64)
        return SimpleNamespace(
            log_px=zeros, stderr=zeros, ess=zeros + k, log_weights=torch.zeros(k, m)
        )

    asked = {}

    def draws(k, rows):
        for row in rows.tolist():
            asked[row] = k
        return result(k, rows)

    state = _State.empty(n, torch.zeros(n, dtype=torch.float64))
    stage = _Stage(state, lambda lw: torch.zeros(lw.shape[1]), _Flags(0.7, 0.02), 100, 100, 1600)
    pilot = SimpleNamespace(
        log_px=torch.zeros(n), stderr=stderr, ess=torch.zeros(n), log_weights=torch.zeros(100, n)
    )
    rows = torch.arange(n)
    sent_on = stage.finish(rows, pilot, torch.zeros(n), "refined", draws, more_draws=True)
    assert asked == {0: 100, 1: 200, 2: 800, 3: 1600, 4: 1600}
    assert sent_on.tolist() == [5]  # needs 2025 draws, above the cap of 1600
    # a stage without more draws keeps K and estimates only where twice the need fits in K
    asked.clear()
    state = _State.empty(n, torch.zeros(n, dtype=torch.float64))
    stage = _Stage(state, lambda lw: torch.zeros(lw.shape[1]), _Flags(0.7, 0.02), 100, 100, 1600)
    sent_on = stage.finish(rows, pilot, torch.zeros(n), "iwae", draws, more_draws=False)
    assert asked == {0: 100} and sent_on.tolist() == [1, 2, 3, 4, 5]


def test_the_smc_stage_sizes_its_estimate_by_a_pilot_round_and_estimates_from_fresh_sweeps(
    monkeypatch,
):
    """A pilot round of 4 sweeps with error bars 0.01 .. 0.1 against a tolerance of 0.02: the
    estimate takes twice the sweeps the error bar asks for, (s / 0.02)^2 * 4 * 2, a multiple of
    4 and at most 64; the estimates kept are the fresh rounds', never the pilot's."""
    from pyro_vae.infer.smc import SMCResult

    pilot_se = torch.tensor([0.01, 0.02, 0.03, 0.05, 0.1], dtype=torch.float64)
    calls = []

    def fake_smc(refined, local, num_particles, num_replicates):
        calls.append((local.tolist(), num_replicates))
        m = local.numel()
        first = len(calls) == 1
        return SMCResult(
            log_px=torch.full((m,), -1.0 if first else float(num_replicates), dtype=torch.float64),
            stderr=pilot_se[local] if first else torch.full((m,), 0.01, dtype=torch.float64),
            ess=torch.ones(m, dtype=torch.float64),
            acceptance=torch.ones(m, dtype=torch.float64),
            levels=torch.ones(m, dtype=torch.long),
            log_z=torch.zeros(num_replicates, m, dtype=torch.float64),
            num_particles=num_particles,
        )

    monkeypatch.setattr(escalate, "refined_smc", fake_smc)
    n = pilot_se.numel()
    local = torch.arange(n)
    part = torch.arange(10, 10 + n)
    state = _State.empty(10 + n, torch.zeros(10 + n, dtype=torch.float64))
    smc = {"num_particles": 8, "num_replicates": 4}
    escalate._smc_stage(state, _Flags(0.7, 0.02), None, local, part, smc)
    assert calls[0] == ([0, 1, 2, 3, 4], 4)  # the pilot round, on every row
    # needs 1, 4, 9, 25, 100 sweeps; twice that: 2, 8, 18, 50, 200 -> 4, 8, 20, 52, 64 (cap)
    assert sorted(calls[1:], key=lambda c: c[1]) == [
        ([0], 4),
        ([1], 8),
        ([2], 20),
        ([3], 52),
        ([4], 64),
    ]
    assert state.log_px[part].tolist() == [4.0, 8.0, 20.0, 52.0, 64.0]  # the fresh rounds'
    assert state.draws[part].tolist() == [32, 64, 160, 416, 512]
    assert not bool(state.flagged[part].any())  # each fresh round met the tolerance
    assert set(state.stage[10:]) == {"smc"}


def test_stage_one_is_screened_first_and_skipped_only_where_it_would_keep_too_few():
    """Blocks of 128 rows or more: with PPCA's exact guide the screen keeps stage 1 (every
    datapoint kept there, each row with the guide's ELBO); with a wrong guide no screened row
    would be kept, so the block starts at refinement and the ELBO comes from the guide's own
    draws. Both within the error bars of the closed form."""
    ppca = ProbabilisticPCA(d=2, D=6, s2=0.5)
    pyro.set_rng_seed(11)
    x = ppca.sample_data(130)
    exact = ppca.log_px(x)
    settings = {"khat": khat_of, "num_samples": 50, "refine": {"max_steps": 50}}
    settings["smc"] = {"num_particles": 8, "num_replicates": 4}
    kept = auto_log_likelihood(ppca.model, ppca.exact_guide, x, **settings)
    assert kept.counts(STAGES)["iwae"] == 130
    torch.testing.assert_close(kept.elbo, exact, atol=1e-6, rtol=0)  # the exact guide's ELBO
    skipped = auto_log_likelihood(ppca.model, _wrong(ppca), x, **settings)
    assert skipped.counts(STAGES)["iwae"] == 0 and torch.isfinite(skipped.elbo).all()
    assert bool((skipped.elbo < exact).all())  # a wrong guide's ELBO, below log p(x)
    for r in (kept, skipped):
        err = r.log_px - exact
        assert bool((err.abs() < 4 * r.stderr + 0.01).all()), err
