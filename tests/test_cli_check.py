"""pyro-vae check: predictive checks and SBC of a trained run, kept in RUN_DIR/checks/."""

import json

import numpy as np
import pytest

from pyro_vae import arviz_compat
from pyro_vae.cli import main
from tests.helpers import cli_error

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "3", "--no-eval", "--no-progress"]
SMALL = ["--num-datapoints", "40", "--num-draws", "20", "--no-progress"]
SMALL_SBC = ["--num-simulations", "60", "--sbc-draws", "19", "--sbc-proposals", "50"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_check_without_options_runs_the_posterior_predictive_check_and_sbc(capsys, run_dir):
    assert main(["check", str(run_dir), *SMALL, *SMALL_SBC]) == 0
    out = capsys.readouterr().out
    assert "posterior predictive check on 40 test images, 20 replicates of each" in out
    assert "SBC of q(z|x) on 60 simulations from the model, ranks among 19 draws" in out
    checks = run_dir / "checks"
    summary = json.loads((checks / "predictive-posterior.json").read_text())
    assert summary["kind"] == "posterior" and summary["num_datapoints"] == 40
    stats = summary["statistics"]
    assert set(stats) == {"mean_intensity", "on_pixels", "total_variation", "log_lik"}
    for st in stats.values():
        assert 0.0 <= st["p_value"] <= 1.0
        assert st["extreme"] == (min(st["p_value"], 1 - st["p_value"]) < 0.005)
    assert summary["extreme"] == sorted(n for n, st in stats.items() if st["extreme"])
    idata = arviz_compat.load_netcdf(checks / "predictive-posterior.nc")
    rep = idata.posterior_predictive["mean_intensity"].values
    assert rep.shape == (1, 20, 40)
    obs = idata.observed_data["mean_intensity"].values
    assert obs.mean() == pytest.approx(stats["mean_intensity"]["observed_mean"])
    assert idata.posterior_predictive["on_pixels"].values.dtype == np.int64
    assert idata.log_likelihood["log_lik"].values.shape == (1, 20, 40)
    for name in ("checks", "pixels", "replicates"):
        assert (checks / f"predictive-posterior-{name}.png").stat().st_size > 10_000
    sbc = json.loads((checks / "sbc.json").read_text())
    assert sbc["coordinates"] == ["z[0]", "z[1]", "z[2]"]
    assert set(sbc["calibration"]) == {"q", "resampled"}
    assert len(sbc["calibration"]["q"]["verdict"]) == 3
    ranks = np.load(checks / "sbc.npz")
    assert ranks["ranks_q"].shape == (60, 3) and ranks["ranks_q"].max() <= 19
    assert ranks["ess"].shape == (60,)
    assert (ranks["ess"] >= 1 - 1e-9).all() and (ranks["ess"] <= 50 + 1e-6).all()
    assert ranks["ess"].min() < ranks["ess"].max()  # weights differ between simulations
    # the summary and its data carry one id: they were written as one unit
    assert str(ranks["check_id"]) == sbc["check_id"]
    assert idata.attrs["check_id"] == summary["check_id"]
    assert sbc["calibration"]["q"]["coverage_nominal"] == {"50": 0.5, "90": 0.9}
    assert (checks / "sbc-ecdf.png").stat().st_size > 10_000
    for name in ("predictive-posterior.json", "predictive-posterior.nc", "sbc.json", "sbc.npz"):
        assert str(checks / name) in out


def test_the_prior_predictive_check_alone(capsys, run_dir):
    assert main(["check", str(run_dir), "--predictive", "prior", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "prior predictive check" in out and "SBC" not in out
    summary = json.loads((run_dir / "checks" / "predictive-prior.json").read_text())
    assert "log_lik" not in summary["statistics"]  # z from the prior is not the image's
    idata = arviz_compat.load_netcdf(run_dir / "checks" / "predictive-prior.nc")
    assert "prior_predictive" in idata.groups() and "log_likelihood" not in idata.groups()


def test_the_predictive_check_reads_the_split_it_is_given(capsys, run_dir):
    argv = ["check", str(run_dir), "--predictive", "posterior", "--split", "val"]
    assert main([*argv, "--num-draws", "5", "--no-progress"]) == 0
    summary = json.loads((run_dir / "checks" / "predictive-posterior.json").read_text())
    assert summary["split"] == "val" and summary["num_datapoints"] == 180  # all of val
    assert "posterior predictive check on 180 val images" in capsys.readouterr().out
    assert "--split must be train, val or test, got 'dev'" in cli_error(
        capsys, *argv[:4], "--split", "dev"
    )


def test_checks_are_repeatable(capsys, run_dir):
    argv = ["check", str(run_dir), "--sbc", "--predictive", "posterior", *SMALL, *SMALL_SBC]

    def kept():
        ranks = np.load(run_dir / "checks" / "sbc.npz")
        idata = arviz_compat.load_netcdf(run_dir / "checks" / "predictive-posterior.nc")
        return ranks["ranks_q"], ranks["ranks_resampled"], idata.posterior_predictive

    assert main(argv) == 0
    first = kept()
    assert main(argv) == 0
    again = kept()
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[1])
    assert again[2].equals(first[2])


def test_sbc_flags_without_sbc_are_refused_before_any_work(capsys, run_dir):
    message = cli_error(capsys, "check", str(run_dir), "--predictive", "prior", "--sbc-draws", "29")
    assert "--sbc-draws set SBC, which --predictive alone does not run: add --sbc" in message
    checks = run_dir / "checks"

    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in checks.glob("*")} if checks.exists() else {}

    before = stamps()
    message = cli_error(capsys, "check", str(run_dir), "--sbc-draws", "9")
    assert "--sbc-draws must be at least 19" in message
    after = stamps()
    assert after == before  # the posterior predictive check did not run first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--predictive", "likelihood"], "invalid choice: 'likelihood'"),
        (["--num-draws", "1"], "--num-draws must be at least 2, got 1"),
        (["--num-datapoints", "0"], "--num-datapoints must be at least 1"),
        (["--sbc", "--num-simulations", "5"], "--num-simulations must be at least 20"),
        (["--sbc", "--sbc-draws", "9"], "--sbc-draws must be at least 19"),
        (["--sbc", "--sbc-proposals", "-1"], "--sbc-proposals must be at least 0"),
    ],
)
def test_bad_options_are_one_error_line(capsys, run_dir, args, message):
    assert message in cli_error(capsys, "check", str(run_dir), *args)


def test_a_missing_run_is_one_error_line(capsys, tmp_path):
    assert "run directory not found" in cli_error(capsys, "check", str(tmp_path / "nope"))


def test_a_two_layer_run_is_checked_through_both_latents(capsys, tmp_path):
    out = tmp_path / "two"
    argv = ["train", *TINY, "--top-latent-dim", "2", "--top-hidden", "16", "--out", str(out)]
    assert main(argv) == 0
    assert main(["check", str(out), *SMALL, *SMALL_SBC]) == 0
    sbc = json.loads((out / "checks" / "sbc.json").read_text())
    assert sbc["coordinates"] == ["z2[0]", "z2[1]", "z[0]", "z[1]", "z[2]"]


# issue 28, item 4: a check of one datapoint
def test_one_datapoint_is_checked(capsys, run_dir):
    argv = ["check", str(run_dir), "--predictive", "posterior", "--num-datapoints", "1"]
    assert main([*argv, "--num-draws", "5", "--no-progress"]) == 0
    assert "posterior predictive check on 1 test image, 5 replicates" in capsys.readouterr().out
    summary = json.loads((run_dir / "checks" / "predictive-posterior.json").read_text())
    assert summary["num_datapoints"] == 1
    assert (run_dir / "checks" / "predictive-posterior-checks.png").stat().st_size > 10_000


def _stamps(run_dir):
    checks = run_dir / "checks"
    return {p.name: p.stat().st_mtime_ns for p in checks.glob("*")} if checks.exists() else {}


# issue 28, item 8: the split, and ceilings of the sizes, refused before any work
@pytest.mark.parametrize(
    "args, message",
    [
        (["--sbc", "--split", "bogus"], "--split must be train, val or test, got 'bogus'"),
        (["--split", "Test"], "--split must be train, val or test"),
        (["--num-datapoints", str(10**23)], "--num-datapoints must be at most 10,000,000"),
        (["--num-draws", str(2**31)], "--num-draws must be at most 1,000,000"),
        (["--sbc", "--num-simulations", str(10**8)], "--num-simulations must be at most"),
        (["--sbc", "--sbc-draws", str(2**31)], "--sbc-draws must be at most 1,000,000"),
        (["--sbc", "--sbc-proposals", str(10**23)], "--sbc-proposals must be at most 16,777,216"),
    ],
    ids=["split-sbc", "split", "datapoints", "draws", "simulations", "sbc-draws", "proposals"],
)
def test_a_bad_split_or_a_size_past_its_ceiling_is_refused(capsys, run_dir, args, message):
    before = _stamps(run_dir)
    assert message in cli_error(capsys, "check", str(run_dir), *args)
    assert _stamps(run_dir) == before


@pytest.mark.parametrize(
    "args, lower",
    [
        (["--predictive", "posterior", *SMALL], "lower --num-draws or --num-datapoints"),
        (["--sbc", *SMALL_SBC], "lower --num-simulations, --sbc-draws or --sbc-proposals"),
        ([*SMALL, *SMALL_SBC], "lower --num-simulations, --sbc-draws or --sbc-proposals"),
    ],
    ids=["predictive", "sbc", "both"],
)
def test_a_check_that_cannot_fit_in_memory_is_refused_before_any_work(
    capsys, run_dir, monkeypatch, args, lower
):
    from pyro_vae.jobs import checks

    monkeypatch.setattr(checks, "free_memory_bytes", lambda device: 10**6)
    before = _stamps(run_dir)
    err = cli_error(capsys, "check", str(run_dir), *args)
    assert "GB, more than the 0.001 GB of free memory" in err and lower in err
    assert _stamps(run_dir) == before
