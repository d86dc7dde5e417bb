"""Bad input to the command line is one line, before any work (issue 28, items 1, 2, 8, 12-14,
16, 21): sizes have ceilings that say why, devices one check, no abbreviations."""

import signal
import subprocess
import sys
import time

import pytest

from pyro_vae import progress
from pyro_vae.cli import _default_out, main
from pyro_vae.runs import RunDir
from tests.helpers import cli_env, cli_error

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    return out


# 1: estimator sizes have upper bounds, each saying why
@pytest.mark.parametrize(
    "argv, flag, why",
    [
        (["--method", "ais", "--ais-steps", "100000000"], "--ais-steps", "HMC transition"),
        (["--method", "ais", "--ais-chains", str(2**31)], "--ais-chains", "in memory"),
        (["--method", "ais", "--ais-leapfrog", "2147483648"], "--ais-leapfrog", "gradient"),
        (["--method", "auto", "--max-samples", str(10**23)], "--max-samples", "8 bytes each"),
        (["--num-samples", str(10**9)], "--num-samples", "8 bytes each"),
        (["--chunk-size", "2147483648"], "--chunk-size", "at most"),
        (["--method", "refined", "--refine-steps", str(10**9)], "--refine-steps", "converged"),
    ],
)
def test_estimator_sizes_past_their_ceiling_are_refused(capsys, run_dir, argv, flag, why):
    err = cli_error(capsys, "evaluate", str(run_dir), *argv)
    assert f"{flag} must be an integer from 1 to" in err and why in err
    assert not (run_dir / "evaluations").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-samples", "1000000000"], "--num-samples must be an integer from 1 to"),
        (["--num-datapoints", str(10**8)], "--num-datapoints must be at most 100000"),
        (["--ais-leapfrog", "2147483648"], "--ais-leapfrog must be an integer from 1 to 1000"),
    ],
)
def test_bdmc_sizes_past_their_ceiling_are_refused(capsys, run_dir, argv, message):
    assert message in cli_error(capsys, "bdmc", str(run_dir), *argv)


def test_ais_chains_that_cannot_fit_in_memory_are_refused_before_the_work(
    capsys, run_dir, monkeypatch
):
    from pyro_vae import jobs

    monkeypatch.setattr(jobs.evaluation, "free_memory_bytes", lambda device: 10_000_000)

    def never(*args, **kwargs):
        raise AssertionError("AIS ran although its chains cannot fit")

    monkeypatch.setattr(jobs.evaluation, "estimate", never)
    err = cli_error(capsys, "evaluate", str(run_dir), "--method", "ais", "--ais-chains", "90000")
    assert "--ais-chains 90000 AIS chains per datapoint need about" in err and "GB free" in err


# 2: one device check for every command
@pytest.mark.parametrize("device", ["", "bogus", "NONE", " none", "meta"])
def test_an_unknown_device_is_one_line_for_every_command(capsys, run_dir, device):
    for argv in (
        ["evaluate", str(run_dir)],
        ["bdmc", str(run_dir)],
        ["check", str(run_dir), "--predictive", "prior"],
    ):
        err = cli_error(capsys, *argv, "--device", device)
        assert f"unknown device {device!r}: choose one of auto, cpu, cuda" in err, argv


# 8: what --first past the split means
def test_first_beyond_the_split_says_the_whole_split_was_evaluated(capsys, run_dir):
    argv = ["evaluate", str(run_dir), "--num-samples", "5", "--no-progress", "--first"]
    assert main([*argv, str(10**23)]) == 0
    out = capsys.readouterr().out
    assert f"--first {10**23} covers the whole test split (359 datapoints)" in out
    assert [e.setting for e in RunDir(run_dir).evaluations()] == ["test-K5-fp32"]


# 12: the IWAE bound with one particle
def test_iwae_with_one_particle_says_it_trains_the_elbo(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--elbo", "iwae", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the IWAE bound with 1 particle is the ELBO itself" in printed
    assert "give --num-particles K > 1" in printed
    out2 = tmp_path / "r2"
    argv = ["train", *TINY, "--no-eval", "--elbo", "iwae", "--num-particles", "2"]
    assert main([*argv, "--out", str(out2)]) == 0
    assert "is the ELBO itself" not in capsys.readouterr().out


# 13: an invalid progress interval
@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", ""])
def test_an_invalid_progress_interval_is_one_warning_and_the_default(capsys, monkeypatch, text):
    monkeypatch.setenv(progress.INTERVAL_ENV, text)
    monkeypatch.setattr(progress, "_WARNED", set())
    assert progress.line_interval() == progress.LINE_INTERVAL
    assert progress.line_interval() == progress.LINE_INTERVAL  # warned once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"PYRO_VAE_PROGRESS_SECONDS={text!r}" in err[0]
    monkeypatch.setenv(progress.INTERVAL_ENV, "2.5")
    assert progress.line_interval() == 2.5
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line at every update
    assert progress.line_interval() == 0 and not capsys.readouterr().err


# 14: Ctrl-C while the libraries load
@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(delay):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.entry", "train", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        # a suite started in the background of a shell ignores SIGINT, and children inherit it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the command loaded before the interrupt arrived (a fast machine)")
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, err.decode()
    assert lines == ["pyro-vae: interrupted while starting; nothing was written"]


def test_the_entry_point_loads_neither_torch_nor_pyro():
    code = "import sys, pyro_vae.entry; print('torch' in sys.modules, 'pyro' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env())
    assert done.stdout.decode().split() == ["False", "False"], done.stderr.decode()


# 16: default run names
def test_runs_started_in_the_same_second_get_names_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261207-120000")
    names = [_default_out("digits") for _ in range(3)]
    assert names == [
        "runs/digits-20261207-120000",
        "runs/digits-20261207-120000-2",
        "runs/digits-20261207-120000-3",
    ]
    assert all((tmp_path / name).is_dir() for name in names)


def test_a_default_run_directory_is_removed_when_no_run_began(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_error(capsys, "train", *TINY, "--dataset", str(tmp_path / "missing.npz"))
    assert not list((tmp_path / "runs").iterdir())


# 21: no abbreviations; a misspelt option gets a suggestion
def test_an_abbreviated_option_is_refused_not_taken_for_another(capsys):
    err = cli_error(capsys, "train", "--epoch", "5")
    assert "unrecognized arguments: --epoch 5" in err and "did you mean --epochs?" in err


def test_an_option_with_underscores_suggests_its_hyphens(capsys):
    err = cli_error(capsys, "train", "--latent_dim", "3")
    assert "--latent_dim: did you mean --latent-dim?" in err


# 21: the SBC table and the latents' names
def test_the_sbc_table_stays_aligned_with_long_verdicts_and_names():
    from pyro_vae.jobs.checks import format_sbc

    verdicts = ["calibrated", "biased, over-confident", "under-confident"]
    names = ["z[0]", "z[1]", "z_top_layer[12]"]
    summary = {
        "num_simulations": 100,
        "num_draws": 99,
        "seconds": 1.0,
        "coordinates": names,
        "calibration": {
            "q": {
                "coverage_50": [0.5, 0.2, 0.7],
                "coverage_90": [0.9, 0.5, 0.99],
                "chi2_p": [0.5, 0.0, 0.01],
                "verdict": verdicts,
            }
        },
    }
    lines = format_sbc(summary).splitlines()
    header, rows = lines[1], lines[2:5]
    for column in ("cover 90%", "chi2 p"):  # right-aligned numbers end where their title ends
        end = header.index(column) + len(column)
        assert all(row[end - 5 : end].strip() and row[end] == " " for row in rows), (column, lines)
    start = header.index("verdict")
    assert [row[start:].strip() for row in rows] == verdicts


def test_traversals_name_latents_as_sbc_does():
    import torch

    from pyro_vae import plots

    fig = plots.traversals(torch.rand(2 * 3, 4), (2, 2), [0, 8], [-1.0, 0.0, 1.0])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["z[0]", "z[8]"]


def test_an_empty_run_directory_path_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", " "):
        assert "--out is empty" in cli_error(capsys, "train", *TINY, "--out", out)
    assert not list(tmp_path.iterdir())
