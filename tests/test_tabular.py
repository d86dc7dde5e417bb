"""Tabular (real-valued, not image) data through the command line (issue 28, items 18 and 19):
checks with statistics of features, samples as an array, figures without warnings, and advice
that fits real-valued data."""

import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data.datasets import load_dataset
from pyro_vae.infer.predictive import (
    IMAGE_STATISTICS,
    feature_statistics,
    predictive_check,
    statistics_for,
)
from tests.helpers import cli_error

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]
NUM_FEATURES = 6


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small standardised table, as docs/data.md describes one (values in about [-4, 4])."""
    x = np.random.default_rng(0).normal(size=(200, NUM_FEATURES)).astype(np.float32)
    x[:, 0] = 1.5 * x[:, 0] + 0.5 * x[:, 1]
    x = (x - x.mean(0)) / x.std(0)
    path = tmp_path_factory.mktemp("data") / "table.npy"
    np.save(path, x)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, table):
    out = tmp_path_factory.mktemp("runs") / "t"
    argv = ["--dataset", str(table), "--likelihood", "gaussian", "--binarize", "none"]
    assert main(["train", *TINY, *argv, "--eval-samples", "21", "--out", str(out)]) == 0
    return out


# item 19: check chooses its statistics by the kind of data, and says which
def test_check_of_tabular_data_uses_statistics_of_its_features(capsys, run_dir, table):
    argv = ["check", str(run_dir), "--predictive", "posterior", "--num-draws", "10"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "posterior predictive check on 40 test datapoints" in out
    assert f"statistics for tabular data (not images): for each of its {NUM_FEATURES}" in out
    summary = json.loads((run_dir / "checks" / "predictive-posterior.json").read_text())
    assert summary["data_kind"] == "tabular"
    features = range(NUM_FEATURES)
    expected = {f"value_{j}" for j in features} | {f"sqdev_{j}" for j in features} | {"log_lik"}
    assert set(summary["statistics"]) == expected  # no mean_intensity, on_pixels, ...
    test = load_dataset(str(table)).splits["test"].double()
    for j in features:  # the features' means and variances, observed
        stats = summary["statistics"]
        assert stats[f"value_{j}"]["observed_mean"] == pytest.approx(test[:, j].mean().item())
        variance = test[:, j].var(unbiased=False).item()
        assert stats[f"sqdev_{j}"]["observed_mean"] == pytest.approx(variance, rel=1e-5)
    assert not (run_dir / "checks" / "predictive-posterior-replicates.png").exists()


def test_statistics_follow_the_data_kind_and_feature_statistics_are_exact():
    x = torch.tensor([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0], [4.0, 2.0, 5.0]])
    assert statistics_for(x, (8, 8)) is IMAGE_STATISTICS
    stats = {s.name: s for s in statistics_for(x, None)}
    assert set(stats) == {"value_0", "value_1", "value_2", "sqdev_0", "sqdev_1", "sqdev_2"}
    assert torch.equal(stats["value_1"].fn(x), torch.tensor([1.0, 3.0, 2.0]))
    assert torch.equal(stats["sqdev_0"].fn(x), torch.tensor([4.0, 0.0, 4.0]))  # about mean 2
    assert [s.name for s in feature_statistics(x, max_features=1)] == ["value_0", "sqdev_0"]
    x_rep = torch.stack([x + 1.0, x - 1.0])  # (S, N, D) replicates, as predictive_check has them
    assert torch.equal(stats["sqdev_1"].fn(x_rep)[0], torch.tensor([0.0, 4.0, 1.0]))


def test_predictive_check_takes_statistics_and_an_image_shape():
    """``statistics=`` and ``image_shape=`` of ``predictive_check``, as docs/checks.md shows:
    without the image shape, total variation runs across the ends of an image's rows."""
    import pyro
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(0.5 * torch.ones(x.shape[1])).to_event(1), obs=x)

    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # a 2x2 image: rows [1, 0] and [1, 0]
    flat = predictive_check(model, None, x, kind="prior", num_draws=4)
    shaped = predictive_check(model, None, x, kind="prior", num_draws=4, image_shape=(2, 2))
    assert flat.observed["total_variation"].item() == 1.0  # 1-0, 0-1, 1-0 along the flat row
    assert shaped.observed["total_variation"].item() == 0.5  # vertical 0, 0; horizontal 1, 1
    mine = feature_statistics(x, max_features=2)
    named = predictive_check(model, None, x, kind="prior", num_draws=4, statistics=mine)
    assert named.names == ("value_0", "value_1", "sqdev_0", "sqdev_1")


# item 19: sample writes the draws of data that are not images to an array
def test_sample_of_tabular_data_writes_the_draws_as_an_array(capsys, run_dir, tmp_path):
    assert main(["sample", str(run_dir), "--num", "5", "--out", str(tmp_path / "s")]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"wrote {tmp_path / 's.npy'}: 5 draws x ~ p(x|z) of 6 values")
    assert "the data are not images" in said
    drawn = np.load(tmp_path / "s.npy")
    assert drawn.shape == (5, NUM_FEATURES) and np.isfinite(drawn).all()
    assert main(["sample", str(run_dir), "--num", "5", "--out", str(tmp_path / "s")]) == 0
    assert np.array_equal(np.load(tmp_path / "s.npy"), drawn)  # seeded by the run's seed
    err = cli_error(capsys, "sample", str(run_dir), "--out", str(tmp_path / "s.png"))
    assert "not images, so its draws are written as an .npy array" in err


# item 19: plot draws tabular data without matplotlib's warning (warnings are errors here)
def test_plot_of_tabular_data_warns_nothing(capsys, run_dir, tmp_path):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "p")]) == 0
    names = {p.name for p in (tmp_path / "p").iterdir()}
    assert {"training.png", "latent.png", "gap-test-K21-fp32.png"} <= names
    assert "samples.png" not in names  # no image grids of tabular data


# item 18: advice that fits real-valued data
def _train_error(capsys, table, tmp_path, *argv):
    argv = [*TINY, "--dataset", str(table), *argv, "--out", str(tmp_path / "r")]
    return cli_error(capsys, "train", *argv)


def test_real_valued_data_under_a_bernoulli_are_advised_a_real_valued_likelihood(
    capsys, table, tmp_path
):
    err = _train_error(capsys, table, tmp_path, "--binarize", "none")
    assert "Bernoulli likelihood needs binary data" in err
    assert "neither probabilities nor pixel intensities" in err and "binarise" not in err
    assert err.endswith(
        "(--likelihood gaussian-learned, gaussian or laplace, with --binarize none)"
    )
    err = _train_error(capsys, table, tmp_path)  # binarised by default
    assert "for real-valued data, score them as they are (--binarize none)" in err
    assert "--likelihood gaussian-learned, gaussian or laplace" in err
    err = _train_error(capsys, table, tmp_path, "--dequantize", "uniform", "--binarize", "none")
    assert "continuous already: score them as they are (--dequantize none, --binarize none)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "binarize, levels, fix, not_fix",
    [
        ("dynamic", None, "score them as they are: data.binarize none", "data.dequantize uniform"),
        ("static", 17, "data.dequantize uniform with data.binarize none", None),
        ("none", 256, "Dequantise them, data.dequantize uniform", None),
    ],
    ids=["continuous-binarised", "levels-binarised", "levels"],
)
def test_a_density_of_discrete_values_is_refused_with_the_fix_for_the_data(
    binarize, levels, fix, not_fix
):
    from pyro_vae.data.transforms import check_density_data
    from pyro_vae.errors import DataError

    with pytest.raises(DataError, match="is a density") as caught:
        check_density_data("gaussian", False, "wine", binarize, "none", levels)
    assert fix in str(caught.value)
    if not_fix:
        assert not_fix not in str(caught.value)
    check_density_data("gaussian", False, "wine", "none", "none", None)  # continuous, as stored
    check_density_data("gaussian", False, "digits", "none", "uniform", 17)  # dequantised
    check_density_data("bernoulli", True, "digits", "dynamic", "none", 17)  # discrete


def test_a_gaussian_on_binarised_real_valued_data_is_advised_to_score_them_as_they_are(
    capsys, table, tmp_path
):
    err = _train_error(capsys, table, tmp_path, "--likelihood", "gaussian")  # binarised: default
    assert "gaussian likelihood is a density, and table data are binarised" in err
    assert "These data are continuous, so score them as they are: --binarize none" in err
    assert "--dequantize uniform" not in err


def test_a_fixed_gaussian_scale_far_below_the_datas_spread_is_noted(capsys, table, tmp_path):
    argv = ["train", *TINY, "--no-eval", "--dataset", str(table), "--binarize", "none"]
    assert main([*argv, "--likelihood", "gaussian", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "the gaussian likelihood's fixed scale (--gaussian-scale 0.1) is small" in out
    assert "--likelihood gaussian-learned learns the scale" in out
    scaled = [*argv, "--likelihood", "gaussian", "--gaussian-scale", "0.5"]
    assert main([*scaled, "--out", str(tmp_path / "g2")]) == 0
    assert "fixed scale" not in capsys.readouterr().out
    assert main([*argv, "--likelihood", "gaussian-learned", "--out", str(tmp_path / "l")]) == 0
    assert "fixed scale" not in capsys.readouterr().out
