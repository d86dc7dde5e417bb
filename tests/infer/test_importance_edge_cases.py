"""Edge cases of the importance-sampled estimator: zero weights, data outside a likelihood's
support, non-finite estimates, and progress reports (issue 10)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.errors import NonFiniteEstimate, UnsupportedDataError
from pyro_vae.infer import LogWeightAccumulator, importance_log_likelihood
from pyro_vae.models.ppca import ProbabilisticPCA as PPCA
from tests.helpers import binary_data, tiny_vae

INF = math.inf

# ---------------------------------------------------------------------------------------------
# zero weights (log w = -inf): chunked streaming equals the one-shot sums


def _edge_weights(k=12):
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(k, 7, generator=g, dtype=torch.float64) * 5 - 2e4
    lw[:5, 0] = -INF  # a first stretch of zero weights, then finite ones far below -745
    lw[::2, 1] = -INF  # zero and finite weights alternating
    lw[:, 2] = -INF  # every weight zero
    lw[-1, 3] = -INF  # one zero weight at the end
    lw[:, 4] = torch.randn(k, generator=g, dtype=torch.float64)  # ordinary weights near 0
    lw[:-1, 5] = -INF  # one finite weight, in the last row
    lw[0, 6] = -INF  # a zero weight first, the rest finite
    return lw


def _one_shot(lw):
    acc = LogWeightAccumulator()
    acc.update(lw)
    return acc.result()


def _assert_same(a, b):
    for field in ("log_px", "elbo", "ess", "stderr"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), msg=field)


@pytest.mark.parametrize("chunk", range(1, 13))
def test_accumulator_in_chunks_of_every_size_equals_one_shot_with_zero_weights(chunk):
    lw = _edge_weights()
    acc = LogWeightAccumulator()
    for part in lw.split(chunk):
        acc.update(part)
    chunked = acc.result()
    whole = _one_shot(lw)
    _assert_same(chunked, whole)
    torch.testing.assert_close(chunked.log_px, torch.logsumexp(lw, 0) - math.log(12))
    finite = torch.isfinite(lw).any(0)
    assert torch.isfinite(chunked.log_px[finite]).all()
    w = torch.softmax(lw[:, finite], 0)
    torch.testing.assert_close(chunked.ess[finite], 1.0 / (w * w).sum(0))


@pytest.mark.parametrize("k", [1, 2, 9])
def test_all_zero_weights_give_minus_inf_with_zero_ess_and_infinite_stderr(k):
    acc = LogWeightAccumulator()
    for _ in range(k):
        acc.update(torch.full((1, 3), -INF))
    r = acc.result()
    assert (r.log_px == -INF).all() and (r.elbo == -INF).all()
    assert (r.ess == 0).all(), r.ess
    assert (r.stderr == INF).all(), r.stderr


def _bounded_prior_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Uniform(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _guide_outside_prior(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5, 1.0))  # draws outside [0, 1] about 62% of the time


def test_bounded_prior_chunk_size_1_equals_unchunked_for_a_fixed_seed():
    # 16 datapoints x 1 latent = 16 normal draws per pass, for which torch's CPU sampler gives
    # the same stream chunked or not. log p(x|z) is about -2e4, far below exp's range.
    x = 100.0 + torch.randn(16)
    with pyro.validation_enabled(False):  # Pyro would refuse z outside the Uniform's support
        pyro.set_rng_seed(5)
        whole = importance_log_likelihood(
            _bounded_prior_model, _guide_outside_prior, x, num_samples=8, keep_log_weights=True
        )
        pyro.set_rng_seed(5)
        chunked = importance_log_likelihood(
            _bounded_prior_model, _guide_outside_prior, x, num_samples=8, chunk_size=1
        )
    lw = whole.log_weights
    assert ((lw[0] == -INF) & torch.isfinite(lw).any(0)).any(), "no first-chunk zero weight"
    assert lw[torch.isfinite(lw)].max() < -1e4
    _assert_same(chunked, whole)
    assert torch.isfinite(chunked.log_px[torch.isfinite(lw).any(0)]).all()
    assert not torch.isnan(chunked.ess).any()


def test_a_guide_entirely_outside_the_prior_gives_minus_inf_not_an_error():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(5.0, 0.1))

    with pyro.validation_enabled(False):
        r = importance_log_likelihood(
            _bounded_prior_model, guide, torch.zeros(4), num_samples=6, chunk_size=2
        )
    assert (r.log_px == -INF).all()
    assert (r.ess == 0).all() and (r.stderr == INF).all()


# ---------------------------------------------------------------------------------------------
# data outside the support of an observed site


def _grey_data(n=20, d=12):
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(1))
    x[0, 0], x[0, 1] = 0.0, 1.0  # the range is exactly [0, 1]
    return x


@pytest.mark.parametrize("validate", [True, False])
def test_grey_data_under_a_bernoulli_raise_unsupported_data_error(validate):
    vae = tiny_vae()
    x = _grey_data()
    with pyro.validation_enabled(validate), pytest.raises(UnsupportedDataError) as info:
        importance_log_likelihood(vae.model, vae.guide, x, num_samples=4)
    e = info.value
    message = str(e)
    assert (e.distribution, e.support, e.low, e.high) == ("Bernoulli", "binary", 0.0, 1.0)
    assert e.num_invalid == x.numel() - 2
    assert "'x'" in message and "Bernoulli" in message and "[0, 1]" in message
    assert str(x.numel() - 2) in message and "20 datapoints" in message
    assert "binarise" in message
    assert "--" not in message and "\n" not in message
    assert "tensor(" not in message


@pytest.mark.parametrize("validate", [True, False])
def test_unsupported_data_in_a_later_block_are_caught(validate):
    vae = tiny_vae()
    x = binary_data(20)
    x[13, 4] = 0.5
    with pyro.validation_enabled(validate), pytest.raises(UnsupportedDataError) as info:
        importance_log_likelihood(
            vae.model, vae.guide, x, num_samples=6, chunk_size=3, batch_size=4
        )
    assert info.value.num_invalid == 1
    assert "row 13" in str(info.value)


@pytest.mark.parametrize(
    "likelihood, value, support",
    [
        (lambda: dist.Beta(2.0, 2.0), 1.5, "unit_interval"),
        (lambda: dist.LogNormal(0.0, 1.0), -1.0, "positive"),
        (lambda: dist.Normal(0.0, 1.0), math.nan, "real"),
        (lambda: dist.Poisson(3.0), 2.5, "IntegerGreaterThan(lower_bound=0)"),
    ],
)
@pytest.mark.parametrize("validate", [True, False])
def test_support_of_each_observed_site_is_named(likelihood, value, support, validate):
    def model(x):
        with pyro.plate("pixels", x.shape[1], dim=-1), pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("obs", likelihood(), obs=x)

    x = torch.full((5, 3), 0.5 if support != "positive" else 1.0)
    if support.startswith("Integer"):
        x.fill_(2.0)
    x[3, 2] = value
    with pyro.validation_enabled(validate), pytest.raises(UnsupportedDataError) as info:
        importance_log_likelihood(model, lambda x: None, x, num_samples=2)
    assert info.value.support == support
    assert info.value.num_invalid == 1
    assert "'obs'" in str(info.value) and "row 3" in str(info.value)


def test_valid_data_pass_the_check_unchanged():
    """The support check draws no random numbers: the estimate equals one made by hand."""
    from pyro_vae.infer.traces import log_weights as _log_weights

    vae = tiny_vae()
    x = binary_data(10)
    pyro.set_rng_seed(2)
    r = importance_log_likelihood(
        vae.model, vae.guide, x, num_samples=6, chunk_size=3, max_plate_nesting=1
    )
    pyro.set_rng_seed(2)
    acc = LogWeightAccumulator()
    with torch.no_grad():
        for _ in range(2):
            acc.update(_log_weights(vae.model, vae.guide, x, 3, 1))
    _assert_same(r, acc.result())
    assert torch.isfinite(r.log_px).all()


# ---------------------------------------------------------------------------------------------
# NaN estimates are errors


@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("validate", [True, False])
def test_nan_from_unscaled_data_raises_non_finite_estimate(scale, validate):
    vae = tiny_vae(likelihood="gaussian-learned", guide="iaf")
    x = torch.randn(20, 12)
    x[[3, 11]] *= scale
    with pyro.validation_enabled(validate), pytest.raises(NonFiniteEstimate) as info:
        importance_log_likelihood(
            vae.model, vae.guide, x, num_samples=16, chunk_size=4, max_plate_nesting=1
        )
    e = info.value
    message = str(e)
    assert e.datapoints == [3, 11]
    assert e.cause == "data"
    assert e.data_abs_max == pytest.approx(float(x.abs().max()))
    assert "2 of 20 datapoints" in message and "rows 3, 11" in message
    assert "rescale" in message or "standardise" in message
    assert "--" not in message and "\n" not in message and "tensor(" not in message


class _NaNGuide:
    """The PPCA's wrong guide, with a NaN location for one row of x on one call (one pass)."""

    def __init__(self, ppca, row, on_call):
        self.ppca, self.row, self.on_call, self.calls = ppca, row, on_call, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls != self.on_call:
            return self.ppca.wrong_guide(x)
        with pyro.plate("data", x.shape[0]):
            loc = torch.zeros(x.shape[0], self.ppca.d, dtype=x.dtype)
            loc[self.row] = math.nan
            return pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


@pytest.mark.parametrize(
    "on_call, row, expected, validate",
    [
        (2, 1, [1], True),  # the second pass of the first block, which Pyro does not validate
        (3, 4, [4], True),  # the last pass of the first block
        (5, 2, [7], True),  # the second pass of the second block: its row 2 is row 7 of x
        (6, 0, [5], False),
        (4, 0, [5], False),  # the first pass of the second block, unvalidated
    ],
)
def test_nan_in_a_later_pass_or_block_raises_non_finite_estimate(on_call, row, expected, validate):
    ppca = PPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(10)
    guide = _NaNGuide(ppca, row, on_call)
    with pyro.validation_enabled(validate), pytest.raises(NonFiniteEstimate) as info:
        importance_log_likelihood(
            ppca.model, guide, x, num_samples=30, chunk_size=10, batch_size=5, max_plate_nesting=1
        )
    e = info.value
    assert guide.calls >= 6  # every pass ran: one check at the end, no sync per pass
    assert e.datapoints == expected
    assert e.cause == "model"
    assert f"row {expected[0]}" in str(e)
    assert "--" not in str(e) and "tensor(" not in str(e)


@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("validate", [True, False])
def test_nan_rows_are_found_in_every_block_and_their_site_named(batch_size, validate):
    """A guide that gives NaN for some rows on every pass; with validation on, Pyro's raw error on
    a block's first pass becomes the same NonFiniteEstimate."""
    ppca = PPCA(d=5, D=20, s2=0.5)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = torch.zeros(x.shape[0], ppca.d, dtype=x.dtype)
            loc[x[:, 0] > 100] = math.nan  # the same rows on every pass
            return pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    x = ppca.sample_data(12)
    x[[2, 7], 0] = 200.0
    with pyro.validation_enabled(validate), pytest.raises(NonFiniteEstimate) as info:
        importance_log_likelihood(
            ppca.model, guide, x, num_samples=8, chunk_size=4, batch_size=batch_size
        )
    e = info.value
    assert e.datapoints == [2, 7]
    assert e.site == "guide site 'z'"
    assert e.cause == "model"  # max |x| = 200 is below the threshold for unscaled data
    assert "guide site 'z'" in str(e) and "rows 2, 7" in str(e)


# ---------------------------------------------------------------------------------------------
# progress reports


def test_progress_goes_through_progress_bar(monkeypatch):
    from pyro_vae import progress as progress_module
    from pyro_vae.infer import importance

    calls = []

    def recording(total, desc, unit, progress, **kwargs):
        calls.append((total, desc, unit, progress))
        return progress_module.progress_bar(total, desc, unit, "off")

    monkeypatch.setattr(importance, "progress_bar", recording)
    ppca = PPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(10)
    importance_log_likelihood(
        ppca.model,
        ppca.exact_guide,
        x,
        num_samples=30,
        chunk_size=10,
        batch_size=5,
        progress="lines",
    )
    assert calls == [(6, "log p(x)", "pass", "lines")]


@pytest.mark.parametrize("progress", [True, False, None, "bar", "lines", "off"])
def test_every_progress_mode_is_accepted(progress, capsys):
    ppca = PPCA(d=5, D=20, s2=0.5)
    x = ppca.sample_data(6)
    r = importance_log_likelihood(
        ppca.model, ppca.exact_guide, x, num_samples=4, chunk_size=2, progress=progress
    )
    torch.testing.assert_close(r.log_px, ppca.log_px(x), rtol=0, atol=1e-9)
    if progress in (False, None, "off"):
        assert capsys.readouterr().err == ""


def test_an_unknown_progress_mode_is_refused():
    ppca = PPCA(d=5, D=20, s2=0.5)
    with pytest.raises(ValueError, match="progress"):
        importance_log_likelihood(
            ppca.model, ppca.exact_guide, ppca.sample_data(3), num_samples=2, progress="loud"
        )
