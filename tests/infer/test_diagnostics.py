import math
import subprocess
import sys

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import arviz_compat
from pyro_vae.infer.diagnostics import active_units, bounds_vs_k, guide_means, kl_per_dimension
from pyro_vae.models import IAFEncoder, StandardNormal


def test_bounds_vs_k_from_one_pass():
    lw = torch.randn(1000, 5, dtype=torch.float64)
    b = bounds_vs_k(lw, [1, 10, 1000, 5000])
    assert set(b) == {1, 10, 1000}  # K above the draws available is skipped
    torch.testing.assert_close(b[1], lw.mean(0))  # L_1 is the mean log weight (the ELBO)
    torch.testing.assert_close(b[1000], torch.logsumexp(lw, 0) - math.log(1000))
    by_hand = torch.stack([torch.logsumexp(blk, 0) - math.log(10) for blk in lw.split(10)]).mean(0)
    torch.testing.assert_close(b[10], by_hand)
    assert (b[1] <= b[10]).all() and (b[10] <= b[1000] + 0.05).all()


def test_khat_separates_light_from_heavy_tails():
    rng = np.random.default_rng(0)
    light = rng.normal(0, 0.1, (20, 2000))  # nearly equal weights
    heavy = rng.standard_cauchy((20, 2000))  # log weights with Cauchy tails: weights explode
    k_light = arviz_compat.psis_khat(light)
    k_heavy = arviz_compat.psis_khat(heavy)
    assert k_light.shape == (20,)
    assert (k_light < 0.5).all()
    assert (k_heavy > arviz_compat.KHAT_THRESHOLD).mean() > 0.9


def test_khat_of_equal_weights_is_not_an_error():
    k = arviz_compat.psis_khat(np.zeros((3, 100)))
    assert k.shape == (3,) and (k == 0).all()


def test_arviz_daily_refactor_warning_does_not_break_warnings_as_errors(tmp_path):
    code = (
        "import warnings; warnings.simplefilter('error');"
        "from pyro_vae import arviz_compat as a; import numpy as np;"
        "a.psis_khat(np.random.default_rng(0).standard_normal((2, 50)))"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no daily stamp yet
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env | {k: v for k, v in __import__("os").environ.items() if k not in env},
    )
    assert r.returncode == 0, r.stderr


def test_active_units_count_dimensions_whose_mean_moves_with_x():
    means = torch.stack([torch.randn(500), torch.full((500,), 0.3), 0.05 * torch.randn(500)], 1)
    count, variances = active_units(means)
    assert count == 1 and variances.shape == (3,)


def test_kl_per_dimension_matches_closed_form_and_sums_to_the_kl():
    loc, scale = torch.randn(50, 4), torch.rand(50, 4) + 0.2
    q = dist.Normal(loc, scale).to_event(1)
    per_dim = kl_per_dimension(q, StandardNormal(4))
    total = torch.distributions.kl_divergence(q, StandardNormal(4)().expand([50])).mean()
    torch.testing.assert_close(per_dim.sum(), total)
    assert kl_per_dimension(q, object()) is None


def test_guide_means_fall_back_to_samples_for_flows():
    q = IAFEncoder(data_dim=6, latent_dim=2, hidden=(8,))(torch.rand(5, 6))
    assert guide_means(q, num_samples=16).shape == (5, 2)
    normal = dist.Normal(torch.ones(3, 2), 1.0).to_event(1)
    torch.testing.assert_close(guide_means(normal), torch.ones(3, 2))


@pytest.mark.parametrize("n", [1, 7])
def test_inference_data_round_trip(tmp_path, n):
    per = {"log_px": np.arange(n, dtype=float), "elbo": -np.arange(n, dtype=float)}
    stats = {"khat": np.full(n, 0.2), "ess": np.full(n, 10.0)}
    idata = arviz_compat.to_inference_data(
        per, stats, {"dataset": "d", "num_samples": 5, "levels": None}
    )
    path = tmp_path / "e.nc"
    arviz_compat.save_netcdf(idata, path)
    back = arviz_compat.load_netcdf(path)
    np.testing.assert_array_equal(back.log_likelihood["log_px"].values[0, 0], per["log_px"])
    np.testing.assert_array_equal(back.sample_stats["khat"].values[0, 0], stats["khat"])
    assert back.attrs["dataset"] == "d" and back.attrs["num_samples"] == 5
