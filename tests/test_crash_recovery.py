"""What survives a crash, a lost file or a damaged one (issue 28, items A-G, 6, 7, 10, 11): no
record lost, no stale or foreign file used silently, one line for every refusal."""

import os
import shutil
import subprocess
import uuid

import pytest
import torch

from pyro_vae import jobs
from pyro_vae.cli import main
from pyro_vae.runs import RunDir
from tests.helpers import cli_command, cli_env, cli_error

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A run of one epoch, never evaluated: copy it before changing it."""
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    return out


def _copy(run, tmp_path, name="r"):
    out = tmp_path / name
    shutil.copytree(run, out)
    return out


def _rewrite_checkpoint(path, change):
    """Load a checkpoint, ``change(state)`` it in place and save it whole (its CRCs valid)."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


# A: the checkpoint and its metrics row are one unit
def test_a_crash_between_the_checkpoint_and_metrics_csv_loses_no_row(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "2", "--no-eval", "--out", str(out)]) == 0
    whole = RunDir(out).read_metrics()
    crashed = tmp_path / "crashed"
    assert main(["train", *TINY, "--no-eval", "--out", str(crashed)]) == 0
    real = RunDir.write_metrics

    def killed(self, rows):
        if len(rows) == 2:  # the second epoch's checkpoint is written; the process dies here
            raise SystemExit(137)
        real(self, rows)

    monkeypatch.setattr(RunDir, "write_metrics", killed)
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "2", "--no-eval", "--resume", "--out", str(crashed)])
    monkeypatch.undo()
    assert len(RunDir(crashed).read_metrics()) == 1  # the row the crash did not write
    assert main(["train", "--epochs", "3", "--no-eval", "--resume", "--out", str(crashed)]) == 0
    rows = RunDir(crashed).read_metrics()
    assert [r.epoch for r in rows] == [1, 2, 3]
    strip = [(r.epoch, r.step, r.train_objective, r.val_elbo) for r in rows[:2]]
    assert strip == [(r.epoch, r.step, r.train_objective, r.val_elbo) for r in whole]
    assert rows[1].seconds > 0  # its seconds count towards a time budget again


def test_a_crash_after_the_last_epochs_checkpoint_rewrites_its_row_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = RunDir.write_metrics
    monkeypatch.setattr(RunDir, "write_metrics", lambda self, rows: (_ for _ in ()).throw(OSError))
    with pytest.raises(OSError):
        jobs.train(
            jobs_config(),
            out,
            evaluate_at_end=False,
            echo=lambda s: None,
        )
    monkeypatch.setattr(RunDir, "write_metrics", real)
    assert RunDir(out).read_metrics() == []
    # training is over (1 of 1 epochs): the resume writes the row and stops
    jobs.train(jobs_config(), out, resume=True, evaluate_at_end=False, echo=lambda s: None)
    assert [r.epoch for r in RunDir(out).read_metrics()] == [1]


def jobs_config():
    from pyro_vae.config import RunConfig

    return RunConfig().replace(
        model={"latent_dim": 2, "hidden": (16,)},
        train={"epochs": 1, "eval_samples": 10, "device": "cpu"},
    )


def test_damaged_epoch_records_in_a_checkpoint_are_refused_in_one_line(capsys, one_epoch, tmp_path):
    out = _copy(one_epoch, tmp_path)
    _rewrite_checkpoint(out / "checkpoint.pt", lambda s: s["metrics"][0].update(epoch="one"))
    err = cli_error(capsys, "train", "--out", str(out), "--resume", "--epochs", "2")
    assert "holds damaged epoch records" in err and "epoch = 'one'" in err


# C: a stale evaluation is not the final one
def test_resume_evaluates_again_when_the_kept_evaluation_is_of_an_earlier_epoch(capsys, tmp_path):
    out = tmp_path / "r"
    args = [*TINY, "--eval-samples", "30", "--out", str(out)]
    assert main(["train", *args]) == 0
    assert main(["train", *args, "--resume", "--epochs", "2", "--no-eval"]) == 0
    capsys.readouterr()
    assert main(["train", *args, "--resume", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "and evaluated" not in printed and "running its missing evaluation" in printed
    (stored,) = RunDir(out).select_evaluations(num_samples=30)
    assert stored.evaluation.epochs_trained == 2
    assert main(["plot", str(out), "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["train", *args, "--resume", "--epochs", "2"]) == 0  # now it is current
    assert "and evaluated" in capsys.readouterr().out


# D: an early-stopped run's best.pt missing or replaced
@pytest.fixture(scope="module")
def early_stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "es"
    argv = [*TINY, "--epochs", "3", "--patience", "5", "--no-eval", "--out", str(out)]
    assert main(["train", *argv]) == 0
    return out


def test_a_missing_best_checkpoint_is_refused_not_replaced_by_the_last(
    capsys, early_stopped, tmp_path
):
    out = _copy(early_stopped, tmp_path)
    (out / "best.pt").unlink()
    for argv in (
        ["evaluate", str(out), "--num-samples", "5"],
        ["sample", str(out), "--out", str(tmp_path / "s.png")],
        ["bdmc", str(out), "--num-datapoints", "2", "--ais-steps", "2"],
        ["check", str(out), "--predictive", "prior", "--num-datapoints", "2"],
    ):
        err = cli_error(capsys, *argv)
        assert "best.pt is missing" in err and "--checkpoint last" in err, argv
    assert not (out / "evaluations").exists()
    argv = ["evaluate", str(out), "--num-samples", "5", "--checkpoint", "last", "--no-progress"]
    assert main(argv) == 0
    assert [e.setting for e in RunDir(out).evaluations()] == ["test-K5-fp32-last"]


def test_a_best_checkpoint_of_another_epoch_is_refused(capsys, early_stopped, tmp_path):
    out = _copy(early_stopped, tmp_path)
    best_epoch = torch.load(out / "checkpoint.pt", weights_only=True)["early_stopping"][
        "best_epoch"
    ]
    other = 1 if best_epoch != 1 else 3
    _rewrite_checkpoint(out / "best.pt", lambda s: s.update(epoch=other))
    err = cli_error(capsys, "evaluate", str(out), "--num-samples", "5")
    assert f"best.pt holds epoch {other}, but the run's best epoch is {best_epoch}" in err


# E: a trained run whose checkpoint.pt was deleted
def test_a_trained_run_without_its_checkpoint_is_not_trained_again_from_scratch(
    capsys, one_epoch, tmp_path
):
    out = _copy(one_epoch, tmp_path)
    (out / "checkpoint.pt").unlink()
    metrics = (out / "metrics.csv").read_bytes()
    err = cli_error(capsys, "train", "--out", str(out), "--resume", "--epochs", "2")
    assert "has no checkpoint.pt, but metrics.csv records 1 epoch" in err
    assert (out / "metrics.csv").read_bytes() == metrics and not (out / "checkpoint.pt").exists()


# 6: damaged weights, refused at load by every command
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_nonfinite_or_absurd_weights_are_refused_at_load_by_every_command(
    capsys, one_epoch, tmp_path, value
):
    out = _copy(one_epoch, tmp_path)

    def damage(state):
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name].view(-1)[0] = value

    _rewrite_checkpoint(out / "checkpoint.pt", damage)
    for argv in (
        ["evaluate", str(out), "--num-samples", "5"],
        ["evaluate", str(out), "--method", "refined", "--num-samples", "5"],
        ["evaluate", str(out), "--method", "ais", "--ais-steps", "2"],
        ["evaluate", str(out), "--method", "auto", "--num-samples", "21"],
        ["sample", str(out), "--out", str(tmp_path / "s.png")],
        ["plot", str(out), "--out", str(tmp_path / "p")],
        ["check", str(out), "--predictive", "prior", "--num-datapoints", "2"],
        ["bdmc", str(out), "--num-datapoints", "2", "--ais-steps", "2"],
        ["train", "--out", str(out), "--resume", "--epochs", "2"],
    ):
        err = cli_error(capsys, *argv)
        assert "checkpoint.pt: parameter" in err, argv
        assert ("NaN or infinite" in err) if value != 1e30 else ("reaches 1e+30" in err)


# 7: a damaged early-stopping state
@pytest.mark.parametrize(
    "damaged",
    [{"best": "x", "best_epoch": 1}, {"best": 1.0, "best_epoch": [1]}, ["best", 1]],
    ids=["best-a-string", "epoch-a-list", "a-list"],
)
def test_a_damaged_early_stopping_state_is_refused_in_one_line(
    capsys, early_stopped, tmp_path, damaged
):
    out = _copy(early_stopped, tmp_path)
    _rewrite_checkpoint(out / "checkpoint.pt", lambda s: s.update(early_stopping=damaged))
    err = cli_error(capsys, "train", "--out", str(out), "--resume", "--epochs", "4")
    assert "its early-stopping state is damaged" in err


# 10: temporaries of killed writers
def test_stale_temporaries_are_removed_by_the_next_writer_and_ignored_by_readers(
    capsys, one_epoch, tmp_path
):
    out = _copy(one_epoch, tmp_path)
    root_tmp = out / ".checkpoint.pt.ab12cd34.tmp"
    root_tmp.write_bytes(b"half a checkpoint")
    assert main(["evaluate", str(out), "--num-samples", "5", "--no-progress"]) == 0
    eval_tmp = out / "evaluations" / ".test-K5-fp32.json.x1y2z3w4.tmp"
    eval_tmp.write_text("{")
    (out / "evaluations" / ".test-K5-fp32.nc.x1y2z3w5.tmp").write_bytes(b"")
    assert main(["compare", str(out)]) == 0
    assert main(["plot", str(out), "--out", str(tmp_path / "p")]) == 0
    assert main(["evaluate", str(out), "--num-samples", "6", "--no-progress"]) == 0
    assert not [p.name for p in (out / "evaluations").iterdir() if p.suffix == ".tmp"]
    assert root_tmp.exists()  # evaluate does not hold the run: train's temporaries are train's
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-eval"]) == 0
    assert not [p.name for p in out.iterdir() if p.suffix == ".tmp"]
    capsys.readouterr()


# 11: a run killed while writing its first config.json
def test_a_directory_holding_only_a_killed_runs_temporaries_is_reusable(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").write_text("pid 1\n")
    (out / ".config.json.q9w8e7r6.tmp").write_text('{"data": ')
    err = cli_error(capsys, "train", "--out", str(out), "--resume")
    assert "holds no run yet" in err and "start that run again" in err
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    assert not (out / ".config.json.q9w8e7r6.tmp").exists()
    assert RunDir(out).exists()


def test_a_directory_with_other_files_is_still_refused(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = cli_error(capsys, "train", *TINY, "--out", str(out))
    assert "is not empty and holds no run" in err


# G: a unit half replaced, and a read-only result folder
def test_a_failed_second_rename_says_the_previous_evaluation_is_no_longer_whole(
    capsys, one_epoch, tmp_path, monkeypatch
):
    out = _copy(one_epoch, tmp_path)
    assert main(["evaluate", str(out), "--num-samples", "5", "--no-progress"]) == 0
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    err = cli_error(capsys, "evaluate", str(out), "--num-samples", "5", "--no-progress")
    monkeypatch.undo()
    assert "previous evaluation of this setting is kept" not in err
    assert "test-K5-fp32.nc had already been replaced" in err and "no longer whole" in err
    with pytest.raises(Exception, match="not one evaluation"):
        RunDir(out).find_evaluation(num_samples=5).inference_data()


@pytest.mark.parametrize("folder", ["evaluations", "checks"])
def test_a_read_only_result_folder_is_found_before_the_work(
    capsys, one_epoch, tmp_path, monkeypatch, folder
):
    import errno
    import tempfile

    out = _copy(one_epoch, tmp_path)
    (out / folder).mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, out / folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("the work ran although its result could not be written")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(jobs.evaluation, "estimate", never)
    monkeypatch.setattr(jobs.checks, "predictive_check", never)
    argv = (
        ["evaluate", str(out), "--num-samples", "5"]
        if folder == "evaluations"
        else ["check", str(out), "--predictive", "prior", "--num-datapoints", "2"]
    )
    err = cli_error(capsys, *argv)
    assert f"cannot write into {out / folder}: Read-only file system" in err


# B: a full disk while a .nc is written
def test_a_full_disk_during_evaluate_is_one_line_without_a_crash(one_epoch, tmp_path):
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        out = _copy(one_epoch, mount)
        (out / "evaluations").mkdir()
        free = shutil.disk_usage(mount).free
        (mount / "fill").write_bytes(b"x" * (free - 20 * 1024))  # 20 KB left
        proc = subprocess.run(
            cli_command("evaluate", out, "--num-samples", "50", "--no-progress"),
            capture_output=True,
            env=cli_env(),
            timeout=300,
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [err.strip()] and "No space left on device" in err
        assert not [p for p in (out / "evaluations").iterdir() if p.name != ".lock"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
