import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.infer import LogWeightAccumulator, ais_log_likelihood, importance_log_likelihood
from pyro_vae.models.ppca import ProbabilisticPCA as PPCA


@pytest.fixture
def ppca():
    return PPCA(d=5, D=20, s2=0.5)


def test_exact_guide_recovers_exact_log_px_with_zero_variance(ppca):
    x = ppca.sample_data(40)
    r = importance_log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=64)
    exact = ppca.log_px(x)
    assert r.log_px.shape == (40,)
    torch.testing.assert_close(r.log_px, exact, rtol=0, atol=1e-9)
    # every weight equals p(x): the ELBO is exact too, ESS = K, zero error bar
    torch.testing.assert_close(r.elbo, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(r.ess, torch.full_like(r.ess, 64.0), rtol=1e-9, atol=0)
    assert r.stderr.max() < 1e-6


def test_bound_rises_monotonically_towards_exact_with_wrong_guide(ppca):
    x = ppca.sample_data(50)
    exact = ppca.log_px(x).mean().item()
    ks = (1, 10, 100, 1000)
    means = {k: 0.0 for k in ks}
    repeats = 4
    for rep in range(repeats):
        pyro.set_rng_seed(rep)
        for k in ks:
            r = importance_log_likelihood(ppca.model, ppca.wrong_guide, x, num_samples=k)
            means[k] += r.log_px.mean().item() / repeats
    values = [means[k] for k in ks]
    assert values == sorted(values), f"L_K not increasing in K: {means}"
    assert values[-1] <= exact + 0.05, f"L_1000={values[-1]} above exact {exact}"
    assert values[0] < exact - 1.0, "the wrong guide should leave a visible gap at K=1"
    assert exact - values[-1] < 0.1 * (exact - values[0]), f"L_1000 not close to exact: {means}"


def test_stderr_covers_the_error_of_log_px(ppca):
    """The delta-method error bar matches the spread of repeated estimates."""
    x = ppca.sample_data(20)
    runs = []
    for rep in range(30):
        pyro.set_rng_seed(100 + rep)
        runs.append(importance_log_likelihood(ppca.model, ppca.wrong_guide, x, num_samples=500))
    spread = torch.stack([r.log_px for r in runs]).std(0)
    stderr = torch.stack([r.stderr for r in runs]).mean(0)
    ratio = (stderr / spread).median().item()
    assert 0.6 < ratio < 1.6, f"stderr/observed spread = {ratio}"


def test_k1_log_px_equals_elbo_and_matches_pyro_trace_elbo(ppca):
    x = ppca.sample_data(30)
    pyro.set_rng_seed(7)
    r = importance_log_likelihood(ppca.model, ppca.wrong_guide, x, num_samples=1)
    torch.testing.assert_close(r.log_px, r.elbo, rtol=0, atol=1e-12)
    assert torch.isnan(r.stderr).all()
    assert (r.ess == 1).all()
    pyro.set_rng_seed(7)
    pyro_loss = Trace_ELBO().loss(ppca.model, ppca.wrong_guide, x)
    assert r.elbo.sum().item() == pytest.approx(-pyro_loss, abs=1e-8)


def test_chunked_equals_unchunked_for_a_fixed_seed(ppca):
    # 32 datapoints x 5 latent dims x chunk 8 = 1280 normal draws per chunk: a multiple of 16,
    # for which torch's CPU normal sampler yields the same stream chunked or not.
    x = ppca.sample_data(32)
    pyro.set_rng_seed(3)
    whole = importance_log_likelihood(ppca.model, ppca.wrong_guide, x, num_samples=64)
    pyro.set_rng_seed(3)
    chunked = importance_log_likelihood(
        ppca.model, ppca.wrong_guide, x, num_samples=64, chunk_size=8, keep_log_weights=True
    )
    for field in ("log_px", "elbo", "ess", "stderr"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field))
    assert chunked.log_weights.shape == (64, 32)


def test_accumulator_streams_exactly_like_logsumexp():
    lw = torch.randn(997, 13, dtype=torch.float64) * 30 - 500  # wide range, far from 0
    lw[:, 0] = -math.inf  # a datapoint with zero density
    lw[5, 0] = -3.0
    acc = LogWeightAccumulator()
    for chunk in lw.split(100):
        acc.update(chunk)
    r = acc.result()
    expected = torch.logsumexp(lw, 0) - math.log(997)
    torch.testing.assert_close(r.log_px, expected)
    w = torch.softmax(lw, 0)
    torch.testing.assert_close(r.ess, 1.0 / (w * w).sum(0))
    assert r.ess[0].item() == pytest.approx(1.0)


def test_sites_outside_the_data_plate_are_rejected():
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside pyro.plate"):
        importance_log_likelihood(model, guide, torch.zeros(3), num_samples=4)


def test_other_plates_inside_data_are_summed_per_datapoint():
    """A model with a nested pixel plate gives the same answer as its to_event form."""

    def model_plate(x):
        with pyro.plate("pixels", x.shape[1], dim=-1), pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def model_event(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    x = torch.randn(6, 4, dtype=torch.float64)
    a = importance_log_likelihood(model_plate, guide, x, num_samples=3)
    b = importance_log_likelihood(model_event, guide, x, num_samples=3)
    torch.testing.assert_close(a.log_px, b.log_px)
    torch.testing.assert_close(b.log_px, dist.Normal(0.0, 1.0).log_prob(x).sum(-1))


def test_blocks_of_datapoints_give_the_same_exact_answer(ppca):
    x = ppca.sample_data(23)
    r = importance_log_likelihood(
        ppca.model,
        ppca.exact_guide,
        x,
        num_samples=20,
        chunk_size=6,
        batch_size=5,
        keep_log_weights=True,
    )
    torch.testing.assert_close(r.log_px, ppca.log_px(x), rtol=0, atol=1e-9)
    assert r.log_weights.shape == (20, 23) and r.ess.shape == (23,)
    torch.testing.assert_close(r.log_weights, ppca.log_px(x).expand(20, 23), rtol=0, atol=1e-9)


def test_blocked_estimate_agrees_with_one_block(ppca):
    x = ppca.sample_data(40)
    pyro.set_rng_seed(0)
    one = importance_log_likelihood(ppca.model, ppca.wrong_guide, x, num_samples=2000)
    pyro.set_rng_seed(1)
    blocked = importance_log_likelihood(
        ppca.model, ppca.wrong_guide, x, num_samples=2000, chunk_size=300, batch_size=7
    )
    diff = (one.log_px - blocked.log_px).abs()
    assert (diff < 5 * torch.sqrt(one.stderr**2 + blocked.stderr**2) + 1e-3).all()


@pytest.mark.parametrize(
    "n, d, k, chunk, batch, expected",
    [
        (1000, 784, 5000, None, None, (64, 83)),  # many points, large K: blocks of points
        (359, 64, 1000, None, None, (182, 359)),  # small data: one block
        (10, 784, 5000, 50, None, (50, 10)),  # chunk alone: all points in each pass
        (10, 784, 5000, None, 2, (2674, 2)),  # batch alone: chunk fills the budget
        (3, 4, 1, None, None, (1, 3)),
    ],
)
def test_plan_passes(n, d, k, chunk, batch, expected):
    from pyro_vae.infer.passes import plan_passes

    assert plan_passes(torch.zeros(n, d), k, chunk, batch) == expected


def test_free_memory_is_read_on_cpu():
    from pyro_vae.memory import free_memory_bytes

    free = free_memory_bytes(torch.device("cpu"))
    assert free is None or 0 < free < 2**50


def test_pyro_validation_runs_on_each_blocks_first_pass(ppca, monkeypatch):
    from pyro.poutine.util import is_validation_enabled

    from pyro_vae.infer import importance

    seen = []
    original = importance.log_weights

    def recording(*args, **kwargs):
        seen.append(is_validation_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(importance, "log_weights", recording)
    x = ppca.sample_data(10)
    with pyro.validation_enabled(True):
        importance_log_likelihood(
            ppca.model, ppca.wrong_guide, x, num_samples=30, chunk_size=10, batch_size=5
        )
    assert seen == [True, False, False] * 2
    seen.clear()
    with pyro.validation_enabled(False):
        importance_log_likelihood(
            ppca.model, ppca.wrong_guide, x, num_samples=30, chunk_size=10, batch_size=5
        )
    assert seen == [False] * 6


def test_invalid_data_in_a_later_block_is_still_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(probs=0.5 * torch.ones(x.shape[1])).to_event(1), obs=x)

    def guide(x):
        pass

    x = torch.ones(6, 3)
    x[4, 1] = 0.5  # not binary, in the second block of 3
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support|within"):
        importance_log_likelihood(model, guide, x, num_samples=4, chunk_size=2, batch_size=3)


def _gaussian_programs(plate_name):
    """A conjugate model and a deliberately poor guide, their datapoints in ``plate_name``."""

    def model(x):
        with pyro.plate(plate_name, x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate(plate_name, x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 0.7))

    return model, guide


def test_the_data_plate_is_found_by_structure_not_by_its_name():
    x = torch.linspace(-2.0, 2.0, 7)
    results = {}
    for name in ("data", "rows"):
        model, guide = _gaussian_programs(name)
        pyro.set_rng_seed(3)
        results[name] = importance_log_likelihood(model, guide, x, num_samples=50)
    torch.testing.assert_close(results["rows"].log_px, results["data"].log_px, rtol=0, atol=0)
    ais = {}
    for name in ("data", "rows"):  # AIS and refined find it through the latent space
        model, guide = _gaussian_programs(name)
        pyro.set_rng_seed(3)
        ais[name] = ais_log_likelihood(model, guide, x, num_chains=4, num_steps=10)
    torch.testing.assert_close(ais["rows"].log_px, ais["data"].log_px, rtol=0, atol=0)
    exact = dist.Normal(0.0, math.sqrt(1.25)).log_prob(x).double()
    model, guide = _gaussian_programs("rows")
    big = importance_log_likelihood(model, guide, x, num_samples=20000)
    assert ((big.log_px - exact).abs() < 5 * big.stderr + 1e-3).all()


def test_the_iwae_objective_finds_a_subsampled_data_plate_by_structure():
    from pyro_vae.infer.iwae_elbo import IWAE_ELBO

    x = torch.linspace(-2.0, 2.0, 8)
    losses = {}
    for name in ("data", "rows"):

        def model(x, name=name):
            with pyro.plate(name, 80, subsample=torch.arange(8)):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 0.5), obs=x)

        def guide(x, name=name):
            with pyro.plate(name, 80, subsample=torch.arange(8)):
                pyro.sample("z", dist.Normal(0.5 * x, 0.7))

        pyro.set_rng_seed(0)
        losses[name] = IWAE_ELBO(num_particles=4, max_plate_nesting=1).loss(model, guide, x)
    assert losses["rows"] == losses["data"]  # both scaled by the plate's 80 / 8


def test_several_plates_around_every_site_need_one_named_data():
    def model(x):
        with pyro.plate("a", x.shape[0], dim=-2), pyro.plate("b", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"each of the plates \['a', 'b'\]: name the plate"):
        importance_log_likelihood(model, lambda x: None, torch.zeros(3, 2), num_samples=4)


def test_an_auxiliary_guide_site_outside_the_data_plate_does_not_decide_it():
    from pyro_vae.infer.latent import LatentSpace

    model, _ = _gaussian_programs("rows")

    def guide(x):
        pyro.sample("_aux", dist.Normal(0.0, 1.0))  # global, and not a latent of the model
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 0.7))

    space = LatentSpace(model, guide, torch.zeros(4))  # AIS and refined start here
    assert space.data_plate == "rows" and [s.name for s in space.sites] == ["z"]
    with pytest.raises(ValueError, match="'_aux' is outside pyro.plate\\('rows'\\)"):
        importance_log_likelihood(model, guide, torch.zeros(4), num_samples=4)
