"""The command line: an end-to-end run in a subprocess, and every kind of bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from tests.helpers import cli_command, cli_env, cli_error, evaluation_file

TINY = ["--epochs", "1", "--hidden", "32", "--latent-dim", "2", "--eval-samples", "25"]


def run_cli(*args, cwd=None):
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=300,
    )


def test_train_evaluate_sample_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("train", *TINY, "--out", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert "log p(x)" in r.stdout and "ELBO" in r.stdout and "gap" in r.stdout
    for name in ("config.json", "metrics.csv", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert evaluation_file(run_dir, 25).is_file()
    assert json.loads((run_dir / "config.json").read_text())["model"]["latent_dim"] == 2

    r = run_cli("evaluate", str(run_dir), "--num-samples", "30", "--chunk-size", "7")
    assert r.returncode == 0, r.stderr
    ev = json.loads(evaluation_file(run_dir, 30).read_text())
    assert evaluation_file(run_dir, 25).is_file()  # the evaluation after training is kept
    required = {"log_px", "log_px_stderr", "elbo", "gap", "ess_mean", "num_samples"}
    required |= {"num_datapoints", "dataset", "split", "binarize"}
    assert required <= set(ev)
    assert ev["num_samples"] == 30 and ev["dataset"] == "digits" and ev["split"] == "test"
    assert ev["log_px"] >= ev["elbo"] and 1 <= ev["ess_mean"] <= 30
    assert set(ev["bounds_vs_k"]) == {"1", "5", "30"}  # BOUND_KS up to K, and K itself
    assert ev["bounds_vs_k"]["1"] == pytest.approx(ev["elbo"])
    assert ev["bounds_vs_k"]["30"] == pytest.approx(ev["log_px"])
    assert 0 <= ev["num_khat_above_threshold"] <= ev["num_datapoints"]
    assert 0 <= ev["active_units"] <= ev["latent_dim"] == 2
    assert len(ev["kl_per_dim"]) == 2
    from pyro_vae import arviz_compat

    idata = arviz_compat.load_netcdf(evaluation_file(run_dir, 30, suffix=".nc"))
    log_px = idata.log_likelihood["log_px"].values[0, 0]
    assert log_px.shape == (359,) and log_px.mean() == pytest.approx(ev["log_px"])
    assert idata.sample_stats["khat"].values.shape == (1, 1, 359)
    assert idata.attrs["dataset"] == "digits" and idata.attrs["num_samples"] == 30

    png = tmp_path / "grid.png"
    r = run_cli("sample", str(run_dir), "--num", "16", "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_in_a_subprocess_is_one_line_without_traceback(tmp_path):
    r = run_cli("evaluate", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("pyro-vae: error:")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--out", str(run_dir), "--no-eval", "--no-progress"]) == 0
    return run_dir


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "cifar"], "unknown dataset"),
        (["train", "--frobnicate"], "unrecognized arguments"),
        (["train", "--likelihood", "poisson"], "unknown --likelihood 'poisson'"),
        (["train", "--elbo", "renyi"], "unknown --elbo"),
        (["train", "--precision", "fp16"], "unknown --precision 'fp16'; choose one of fp32, bf16"),
        (["train", "--hidden", "a,b"], "512,512"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--binarize", "sometimes"], "--binarize"),
        (["train", "--resume"], "--out"),
        (["bogus-command"], "invalid choice"),
        (["evaluate", "/nonexistent/run"], "not found"),
        (["sample", "/nonexistent/run"], "not found"),
    ],
)
def test_bad_options(capsys, argv, message):
    assert message in cli_error(capsys, *argv)


def test_non_binary_data_for_bernoulli(capsys, tmp_path):
    np.savez(tmp_path / "grey.npz", x=np.random.default_rng(0).random((40, 6)))
    err = cli_error(capsys, "train", "--dataset", str(tmp_path / "grey.npz"), "--binarize", "none")
    assert "binary" in err and "--binarize dynamic" in err


def test_nan_in_data(capsys, tmp_path):
    x = np.random.default_rng(0).random((40, 6))
    x[3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    assert "NaN" in cli_error(capsys, "train", "--dataset", str(tmp_path / "nan.npz"))


def test_wrong_shape(capsys, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10))
    assert "expected (N, D)" in cli_error(capsys, "train", "--dataset", str(tmp_path / "flat.npy"))


def test_values_outside_0_1_cannot_be_binarised(capsys, tmp_path):
    np.savez(tmp_path / "big.npz", x=np.full((40, 6), 3.0))
    assert "[0, 1]" in cli_error(capsys, "train", "--dataset", str(tmp_path / "big.npz"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu(capsys, tmp_path):
    assert "CUDA" in cli_error(capsys, "train", "--device", "cuda", "--out", str(tmp_path / "c"))


def test_existing_run_is_not_overwritten(capsys, trained_run):
    assert "--resume" in cli_error(capsys, "train", *TINY, "--out", str(trained_run))


def test_corrupt_checkpoint(capsys, trained_run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((trained_run / "config.json").read_text())
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert "corrupt" in cli_error(capsys, "evaluate", str(bad))


def test_checkpoint_of_another_config(capsys, trained_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((trained_run / "config.json").read_text())
    config["model"]["latent_dim"] = 7
    (other / "config.json").write_text(json.dumps(config))
    (other / "checkpoint.pt").write_bytes((trained_run / "checkpoint.pt").read_bytes())
    assert "another config" in cli_error(capsys, "evaluate", str(other))


def test_broken_config_json(capsys, trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "checkpoint.pt").write_bytes((trained_run / "checkpoint.pt").read_bytes())
    assert "JSON" in cli_error(capsys, "evaluate", str(broken))


def test_resume_continues_and_refuses_changes(capsys, trained_run):
    assert "latent_dim" in cli_error(
        capsys, "train", "--out", str(trained_run), "--resume", "--latent-dim", "9"
    )
    code = main(["train", "--out", str(trained_run), "--resume", "--epochs", "2", "--no-eval"])
    assert code == 0
    rows = (trained_run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("2,")


def test_evaluate_checkpoint_of_a_run_without_early_stopping(capsys, trained_run, tmp_path):
    trained_run = shutil.copytree(trained_run, tmp_path / "r")  # evaluated here: not the shared one
    err = cli_error(capsys, "evaluate", str(trained_run), "--checkpoint", "best")
    assert "no best epoch's checkpoint" in err and "--patience" in err
    assert "invalid choice" in cli_error(capsys, "evaluate", str(trained_run), "--checkpoint", "x")
    argv = ["evaluate", str(trained_run), "--num-samples", "7", "--no-progress"]
    assert main([*argv, "--checkpoint", "last"]) == 0  # its only checkpoint: the usual setting
    assert "test-K7-fp32.json" in capsys.readouterr().out
    assert not list((trained_run / "evaluations").glob("*-last.json"))


def test_evaluate_bad_numbers(capsys, trained_run):
    assert "--num-samples" in cli_error(capsys, "evaluate", str(trained_run), "--num-samples", "0")
    assert "unknown split" in cli_error(capsys, "evaluate", str(trained_run), "--split", "dev")


@pytest.mark.slow
def test_quick_start_default_job(tmp_path):
    """The README's main job, with its defaults: trains, evaluates, and learns something."""
    r = run_cli("train", "--out", str(tmp_path / "default"))
    assert r.returncode == 0, r.stderr
    ev = json.loads(evaluation_file(tmp_path / "default", 1000).read_text())
    assert ev["num_samples"] == 1000 and ev["epochs_trained"] == 100
    assert ev["log_px"] >= ev["elbo"] > -30.0  # an untrained model scores about -44 nats
    assert ev["ess_mean"] > 100


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--likelihood", "gaussian"], "--dequantize uniform"),
        (["--likelihood", "beta", "--binarize", "none"], "is a density"),
        (["--likelihood", "continuous-bernoulli", "--binarize", "static"], "is a density"),
        (["--dequantize", "uniform"], "not both"),
        (
            [
                "--likelihood",
                "discretized-logistic",
                "--binarize",
                "none",
                "--dequantize",
                "uniform",
            ],
            "quantised values",
        ),
        (["--likelihood", "bernoulli", "--binarize", "none"], "--binarize dynamic"),
        (["--prior", "flow", "--latent-dim", "1"], "latent_dim >= 2"),
        (["--prior", "hierarchical"], "unknown --prior"),
        (["--guide", "nf"], "unknown --guide"),
    ],
)
def test_wrong_data_for_a_likelihood_is_refused_with_the_fix(capsys, tmp_path, argv, message):
    err = cli_error(capsys, "train", *TINY, "--out", str(tmp_path / "x"), *argv)
    assert message in err


def test_dequantize_needs_quantised_data(capsys, tmp_path):
    np.savez(tmp_path / "real.npz", x=np.random.default_rng(0).random((40, 6)))
    err = cli_error(
        capsys,
        "train",
        "--dataset",
        str(tmp_path / "real.npz"),
        "--binarize",
        "none",
        "--dequantize",
        "uniform",
        "--likelihood",
        "gaussian",
    )
    assert "quantised" in err
    err = cli_error(
        capsys,
        "train",
        "--dataset",
        str(tmp_path / "real.npz"),
        "--binarize",
        "none",
        "--likelihood",
        "discretized-logistic",
    )
    assert "quantised" in err


def test_uint8_user_images_are_8_bit_data(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=images)
    run_dir = tmp_path / "r"
    code = main(
        [
            "train",
            "--dataset",
            str(tmp_path / "img.npz"),
            "--binarize",
            "none",
            "--likelihood",
            "discretized-logistic",
            *TINY,
            "--out",
            str(run_dir),
        ]
    )
    assert code == 0
    ev = json.loads(evaluation_file(run_dir, 25).read_text())
    assert ev["levels"] == 256
    assert ev["bits_per_dim"] == pytest.approx(-ev["log_px"] / (16 * np.log(2)))
    assert ev["bits_per_dim"] > 0  # a probability of discrete data is at most 1


def test_dequantised_density_reports_bits_per_dim_of_the_levels(tmp_path):
    run_dir = tmp_path / "deq"
    code = main(
        [
            "train",
            *TINY,
            "--binarize",
            "none",
            "--dequantize",
            "uniform",
            "--likelihood",
            "gaussian-learned",
            "--out",
            str(run_dir),
        ]
    )
    assert code == 0
    ev = json.loads(evaluation_file(run_dir, 25).read_text())
    assert ev["dequantize"] == "uniform" and ev["levels"] == 17
    expected = -(ev["log_px"] - 64 * np.log(17)) / (64 * np.log(2))
    assert ev["bits_per_dim"] == pytest.approx(expected)
    assert ev["bits_per_dim"] > 0  # it bounds a probability of the levels


def test_iwae_objective_is_recorded(tmp_path):
    run_dir = tmp_path / "iwae"
    assert (
        main(["train", *TINY, "--elbo", "iwae", "--num-particles", "5", "--out", str(run_dir)]) == 0
    )
    ev = json.loads(evaluation_file(run_dir, 25).read_text())
    assert ev["objective"] == "iwae"
    assert json.loads((run_dir / "config.json").read_text())["train"]["num_particles"] == 5


def test_compare_ranks_runs_with_paired_differences(capsys, tmp_path):
    from pyro_vae import arviz_compat

    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"s{seed}"
        assert main(["train", *TINY, "--seed", str(seed), "--out", str(run_dir), "--no-eval"]) == 0
        assert main(["evaluate", str(run_dir), "--num-samples", "20"]) == 0
        runs.append(run_dir)
    capsys.readouterr()
    md, csv_path = tmp_path / "c.md", tmp_path / "c.csv"
    assert main(["compare", *map(str, runs), "--markdown", str(md), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "diff to best" in out and md.read_text().startswith("| rank |")
    rows = list(__import__("csv").DictReader(csv_path.read_text().splitlines()))
    assert float(rows[0]["log_px"]) >= float(rows[1]["log_px"])
    assert float(rows[0]["diff"]) == 0.0
    idata = {r: arviz_compat.load_netcdf(evaluation_file(r, 20, suffix=".nc")) for r in runs}
    lp = {r: d.log_likelihood["log_px"].values[0, 0] for r, d in idata.items()}
    se = {r: d.sample_stats["stderr"].values[0, 0] for r, d in idata.items()}
    best, other = Path(rows[0]["run"]), Path(rows[1]["run"])
    d = lp[other] - lp[best]
    assert float(rows[1]["diff"]) == pytest.approx(d.mean())
    monte_carlo = ((se[other] ** 2 + se[best] ** 2).sum()) / 359**2
    expected_se = np.sqrt(d.var(ddof=1) / 359 + monte_carlo)
    assert float(rows[1]["diff_se"]) == pytest.approx(expected_se, rel=1e-6)

    # another K for one run: kept beside the first, which compare still finds in common
    assert main(["evaluate", str(runs[1]), "--num-samples", "10"]) == 0
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--csv", str(csv_path)]) == 0
    again = list(__import__("csv").DictReader(csv_path.read_text().splitlines()))
    assert again == rows
    err = cli_error(capsys, "compare", *map(str, runs), "--num-samples", "10")
    assert f"{runs[0]} has no evaluation with num_samples=10 (kept: test-K20-fp32)" in err
    assert main(["evaluate", str(runs[0]), "--num-samples", "10"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "compare", *map(str, runs))
    assert "2 settings: test-K10-fp32, test-K20-fp32; choose one" in err
    assert main(["compare", *map(str, runs), "--num-samples", "10"]) == 0


def test_precision_is_recorded_and_not_mixed_in_compare(capsys, tmp_path):
    run_dir = tmp_path / "bf16"
    assert main(["train", *TINY, "--precision", "bf16", "--out", str(run_dir)]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    ev = json.loads(evaluation_file(run_dir, 25).read_text())
    assert ev["precision"] == "fp32"  # training in bf16; the evaluation after it in fp32
    other = tmp_path / "fp32"
    assert main(["train", *TINY, "--seed", "1", "--out", str(other)]) == 0
    assert main(["compare", str(run_dir), str(other)]) == 0
    assert main(["evaluate", str(other), "--num-samples", "25", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "networks in bf16" in out
    ev = json.loads(evaluation_file(other, 25, precision="bf16").read_text())
    assert ev["precision"] == "bf16"
    assert main(["compare", str(run_dir), str(other)]) == 0  # the fp32 pair, never mixed
    capsys.readouterr()
    err = cli_error(capsys, "compare", str(run_dir), str(other), "--precision", "bf16")
    assert f"{run_dir} has no evaluation with precision=bf16" in err
    assert "unknown --precision" in cli_error(capsys, "evaluate", str(other), "--precision", "x")


def test_evaluations_without_a_precision_count_as_fp32(trained_run, tmp_path):
    from pyro_vae import jobs

    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        __import__("shutil").copytree(trained_run, run)
        jobs.evaluate(run, num_samples=5, progress=False)
    old = json.loads(evaluation_file(a, 5).read_text())
    del old["precision"]  # as written before the option existed
    evaluation_file(a, 5).write_text(json.dumps(old))
    assert len(jobs.compare([a, b])) == 2


def test_compare_needs_evaluated_runs(capsys, trained_run):
    assert "evaluate" in cli_error(capsys, "compare", str(trained_run))


def test_plot_draws_every_figure(capsys, tmp_path):
    run_dir = tmp_path / "p"
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0  # trains and evaluates
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 0
    names = {p.stem for p in (run_dir / "plots").glob("*.png")}
    assert names == {
        "training",
        "samples",
        "reconstructions",
        "traversals",
        "latent",
        "bound_vs_k-test-K25-fp32",
        "khat-test-K25-fp32",
        "gap-test-K25-fp32",
    }
    for p in (run_dir / "plots").glob("*.png"):
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 2000


def test_plot_of_a_missing_run(capsys):
    assert "not found" in cli_error(capsys, "plot", "/nonexistent/run")


@pytest.mark.parametrize(
    "argv, check",
    [
        (["--prior", "mog", "--num-components", "4"], lambda v: v.prior.logits.shape == (4,)),
        (
            ["--prior", "vamp", "--num-components", "3"],
            lambda v: v.prior.pseudo_inputs.shape == (3, 64),
        ),
        (["--prior", "flow", "--flows", "3"], lambda v: len(v.prior.couplings) == 3),
        (["--guide", "iaf", "--flows", "1"], lambda v: len(v.encoder.flows) == 1),
        (["--guide", "lowrank", "--rank", "3"], lambda v: v.encoder.rank == 3),
        (
            ["--likelihood", "gaussian-learned", "--scale-floor", "0.2"],
            lambda v: v.likelihood.floor == 0.2,
        ),
        (
            ["--likelihood", "gaussian", "--gaussian-scale", "0.3"],
            lambda v: float(v.likelihood.scale) == pytest.approx(0.3),
        ),
    ],
)
def test_model_options_reach_the_model(argv, check):
    from pyro_vae.cli import build_parser, train_config
    from pyro_vae.registry import build_vae

    config = train_config(build_parser().parse_args(["train", "--latent-dim", "4", *argv]))
    assert check(build_vae(config.model, data_dim=64))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-components", "0"], "--num-components"),
        (["--flows", "0"], "--flows"),
        (["--rank", "0"], "--rank"),
        (["--dequantize", "sometimes"], "--dequantize"),
        (["--scale-floor", "0"], "--scale-floor"),
    ],
)
def test_bad_model_option_values(capsys, argv, message):
    assert message in cli_error(capsys, "train", *argv)


def test_a_script_offers_config_flags_with_its_own_defaults_and_the_declared_checks():
    import argparse

    from pyro_vae.cli import add_config_flags, config_from_flags
    from pyro_vae.config import RunConfig
    from pyro_vae.errors import ConfigError

    spec = RunConfig().replace(model={"latent_dim": 8, "hidden": (128, 128)})
    p = argparse.ArgumentParser()
    add_config_flags(p, spec, ("model.latent_dim", "model.hidden", "train.epochs"))
    assert "(default 8)" in p.format_help() and "(default 128,128)" in p.format_help()
    config = config_from_flags(p.parse_args(["--hidden", "32", "--epochs", "3"]), spec)
    assert config.model.hidden == (32,) and config.model.latent_dim == 8
    assert config.train.epochs == 3 and config.train.lr == spec.train.lr
    with pytest.raises(ConfigError, match="must be an integer from 1 to 4096"):
        config_from_flags(p.parse_args(["--latent-dim", "0"]), spec)
    with pytest.raises(ValueError, match="not config fields"):
        add_config_flags(argparse.ArgumentParser(), spec, ("model.latentdim",))
