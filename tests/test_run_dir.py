"""What a run directory guarantees (issue 11): exclusive ownership while training, evaluations
written as one unit, corruption detected. Concurrency tests start real processes."""

import json
import os
import subprocess
import zipfile

import pytest

from pyro_vae.cli import main
from pyro_vae.errors import CheckpointError, RunInUseError
from pyro_vae.runs import RunDir
from tests.helpers import cli_command, cli_env, cli_error, evaluation_file

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--out", str(out), "--eval-samples", "30"]) == 0
    return out


# item 3: one train per run directory
def test_a_second_claim_is_refused_at_once(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.claim():
        with pytest.raises(
            RunInUseError, match=f"in use by another training process \\(pid {os.getpid()}\\)"
        ):
            with RunDir(tmp_path / "r").claim():
                pass
    with run.claim():  # released when the holder is done
        pass


def test_two_trains_into_one_directory_at_once_one_is_refused(tmp_path):
    out = tmp_path / "r"
    args = cli_command("train", *TINY, "--epochs", "30", "--no-eval", "--out", str(out))
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out_text, err = proc.communicate(timeout=300)
        results.append((proc.returncode, err.decode()))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.startswith("pyro-vae: error:") and "Traceback" not in refused
    assert "in use" in refused or "already holds a run" in refused, refused
    assert len(RunDir(out).read_metrics()) == 30  # the run that went on is whole


def test_a_failed_train_leaves_no_directory_behind(capsys, tmp_path):
    cli_error(
        capsys,
        "train",
        *TINY,
        "--dataset",
        str(tmp_path / "missing.npz"),
        "--out",
        str(tmp_path / "r"),
    )
    assert not (tmp_path / "r").exists()


# item 4: bit rot in checkpoint.pt
def _flip_a_weight_byte(path):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        payload = z.read(member)
    offset = bytes(data).find(payload)
    assert offset > 0
    data[offset + len(payload) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_checkpoint_is_detected(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out), "--no-eval"]) == 0
    _flip_a_weight_byte(out / "checkpoint.pt")
    err = cli_error(capsys, "evaluate", str(out), "--num-samples", "5")
    assert f"checkpoint is corrupt: {out / 'checkpoint.pt'}" in err and "CRC" in err
    err = cli_error(capsys, "train", *TINY, "--epochs", "2", "--out", str(out), "--resume")
    assert "checkpoint is corrupt" in err
    with pytest.raises(CheckpointError, match="checkpoint is corrupt"):
        RunDir(out).load_checkpoint(RunDir(out).read_config())


# item 1: every evaluation is kept, one per setting
def test_evaluations_of_other_settings_are_kept_and_selected(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--eval-samples", "30", "--out", str(out)]) == 0
    test_k30 = json.loads(evaluation_file(out, 30).read_text())
    for argv in (["--split", "val"], ["--num-samples", "21"], ["--precision", "bf16"]):
        assert main(["evaluate", str(out), "--no-progress", *argv]) == 0
    capsys.readouterr()
    settings = [e.setting for e in RunDir(out).evaluations()]
    assert settings == ["test-K1000-bf16", "test-K21-fp32", "test-K30-fp32", "val-K1000-fp32"]
    assert json.loads(evaluation_file(out, 30).read_text()) == test_k30  # not overwritten
    err = cli_error(capsys, "compare", str(out))
    assert (
        "4 settings" in err and "choose one (--split, --method, --num-samples, --precision)" in err
    )
    assert main(["compare", str(out), "--split", "test", "--num-samples", "30"]) == 0
    assert f"{test_k30['log_px']:.3f}" in capsys.readouterr().out  # the K=30 test evaluation
    assert main(["plot", str(out), "--out", str(tmp_path / "p")]) == 0  # the newest one
    assert "test-K1000-bf16, the newest of 4 current evaluations" in capsys.readouterr().out
    assert main(["plot", str(out), "--out", str(tmp_path / "p"), "--split", "val"]) == 0
    assert (tmp_path / "p" / "gap-val-K1000-fp32.png").is_file()
    err = cli_error(capsys, "plot", str(out), "--split", "train", "--out", str(tmp_path / "p"))
    assert "has no evaluation with split=train" in err and "val-K1000-fp32" in err
    # evaluating a setting again replaces only that setting's evaluation
    assert main(["evaluate", str(out), "--num-samples", "30", "--no-progress"]) == 0
    assert len(RunDir(out).evaluations()) == 4


def test_an_evaluation_written_by_an_earlier_version_is_still_read(capsys, run_dir, tmp_path):
    old = tmp_path / "old"
    __import__("shutil").copytree(run_dir, old)
    assert main(["evaluate", str(old), "--num-samples", "21", "--no-progress"]) == 0
    for suffix in (".json", ".nc"):  # where evaluate wrote them before this version
        evaluation_file(old, 21, suffix=suffix).rename(old / f"evaluation{suffix}")
    capsys.readouterr()
    assert [e.setting for e in RunDir(old).select_evaluations(num_samples=21)] == ["test-K21-fp32"]
    assert main(["compare", str(old), "--num-samples", "21"]) == 0


def test_a_run_written_before_a_hyperparameter_was_declared_loads_and_resumes(
    capsys, run_dir, tmp_path
):
    """A run of an earlier version has no field for a hyperparameter declared since (the
    Student-t prior's df): its config.json and its checkpoint's copy of the config lack it."""
    import io

    import torch

    old = tmp_path / "old"
    __import__("shutil").copytree(run_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["model"]["df"]
    (old / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    saved = json.loads(state["config"])
    del saved["model"]["df"]
    state["config"] = json.dumps(saved, indent=2, sort_keys=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (old / "checkpoint.pt").write_bytes(buffer.getvalue())
    assert main(["evaluate", str(old), "--num-samples", "21", "--no-progress"]) == 0
    assert main(["train", "--out", str(old), "--resume", "--epochs", "2", "--no-eval"]) == 0
    assert "epoch    2/2" in capsys.readouterr().out


# item 2: an evaluation is one unit
def test_concurrent_evaluations_all_succeed_and_leave_whole_evaluations(run_dir):
    procs = [
        subprocess.Popen(
            cli_command("evaluate", str(run_dir), "--num-samples", k, "--no-progress"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        for k in ("302", "50", "50")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    run = RunDir(run_dir)
    for k in (302, 50):
        kept = run.find_evaluation(num_samples=k)
        idata = kept.inference_data()  # refuses a mismatched pair
        assert idata.attrs["num_samples"] == kept.evaluation.num_samples == k
    assert not [p.name for p in run.evaluations_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_summary_beside_another_evaluations_per_point_data_is_refused(capsys, run_dir, tmp_path):
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    nc = evaluation_file(run_dir, 21, suffix=".nc")
    kept = nc.read_bytes()
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    capsys.readouterr()
    nc.write_bytes(kept)  # what a crash between the two renames leaves
    err = cli_error(capsys, "compare", str(run_dir), "--num-samples", "21")
    assert "are not one evaluation" in err and "evaluate" in err
    err = cli_error(
        capsys, "plot", str(run_dir), "--num-samples", "21", "--out", str(tmp_path / "p")
    )
    assert "are not one evaluation" in err
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0


def test_a_damaged_evaluation_is_one_line(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    capsys.readouterr()
    nc = evaluation_file(run_dir, 21, suffix=".nc")
    nc.write_bytes(nc.read_bytes()[:200])
    err = cli_error(capsys, "compare", str(run_dir), "--num-samples", "21")
    assert "is damaged or not an evaluation" in err
    evaluation_file(run_dir, 21).write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in cli_error(capsys, "compare", str(run_dir), "--num-samples", "21")
    evaluation_file(run_dir, 21).unlink()
    nc.unlink()


# item 5: a run killed before its first checkpoint
def test_a_run_without_a_checkpoint_resumes_from_the_beginning(capsys, tmp_path):
    whole, stuck = tmp_path / "whole", tmp_path / "stuck"
    assert main(["train", *TINY, "--epochs", "2", "--no-eval", "--out", str(whole)]) == 0
    assert main(["train", *TINY, "--epochs", "2", "--no-eval", "--out", str(stuck)]) == 0
    for name in ("checkpoint.pt", "metrics.csv"):
        (stuck / name).unlink()  # as if killed during epoch 1
    capsys.readouterr()
    assert main(["train", "--out", str(stuck), "--resume", "--no-progress"]) == 0
    assert "training from the beginning" in capsys.readouterr().out
    assert RunDir(stuck).read_metrics()[-1].val_elbo == RunDir(whole).read_metrics()[-1].val_elbo


# item 6: a run killed during its final evaluation
def test_resume_finishes_a_missing_evaluation_and_skips_a_present_one(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--eval-samples", "21", "--out", str(out)]) == 0
    evaluation_file(out, 21).unlink()
    evaluation_file(out, 21, suffix=".nc").unlink()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "running its missing evaluation" in text and "log p(x)" in text
    assert [e.setting for e in RunDir(out).evaluations()] == ["test-K21-fp32"]
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "and evaluated" in capsys.readouterr().out


# item 7: a torn or damaged metrics.csv
DAMAGED_METRICS = {
    "torn-last-row": lambda text: text[: len(text) - 9],
    "missing-column": lambda text: text.replace(",", "", 3),
    "extra-column": lambda text: text.rstrip("\n") + ",7\n",
    "not-a-number": lambda text: text[: text.rindex("\n", 0, -1) + 1] + "2,x,1,1,1,1,nan\n",
    "random-bytes": lambda text: "\x00\x9f garbage \x07",
}


@pytest.mark.parametrize("damage", list(DAMAGED_METRICS), ids=list(DAMAGED_METRICS))
def test_resume_goes_on_past_a_damaged_metrics_file_and_plot_names_the_row(
    capsys, tmp_path, damage
):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "2", "--no-eval", "--out", str(out)]) == 0
    metrics = out / "metrics.csv"
    metrics.write_text(DAMAGED_METRICS[damage](metrics.read_text()))
    err = cli_error(capsys, "plot", str(out), "--out", str(tmp_path / "plots"))
    assert "metrics.csv is damaged" in err
    if damage != "random-bytes":
        assert "row " in err
    assert main(["train", "--out", str(out), "--epochs", "3", "--resume", "--no-eval"]) == 0
    rows = RunDir(out).read_metrics()
    assert rows[-1].epoch == 3


def test_metrics_written_before_val_bound_was_recorded_are_read_and_resumed(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "2", "--no-eval", "--out", str(out)]) == 0
    metrics = out / "metrics.csv"
    now = RunDir(out).read_metrics()
    header, *rows = metrics.read_text().splitlines()
    assert header.endswith(",val_bound") and all(row.endswith(",") for row in rows)  # unwatched
    assert all(r.val_bound is None for r in now)
    earlier = [line.rsplit(",", 1)[0] for line in (header, *rows)]  # the earlier columns
    metrics.write_text("\n".join(earlier) + "\n")
    assert RunDir(out).read_metrics() == now  # every value as written, val_bound None
    assert main(["train", "--out", str(out), "--epochs", "3", "--resume", "--no-eval"]) == 0
    assert metrics.read_text().splitlines()[0] == header  # rewritten with every column
    assert [r.epoch for r in RunDir(out).read_metrics()] == [1, 2, 3]


def test_random_bytes_in_metrics_are_one_line(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    (out / "metrics.csv").write_bytes(b"\xff\xfe\x00\x9f")
    assert "cannot read" in cli_error(capsys, "plot", str(out), "--out", str(tmp_path / "p"))


# items 8, 9, 10: config.json that cannot be trusted
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["model"].update(latent_dim=4.0), "model.latent_dim = 4.0 is not of type int"),
        (lambda c: c["model"].update(latent_dim=True), "model.latent_dim = True"),
        (lambda c: c["train"].update(seed=0.5), "train.seed = 0.5"),
        (lambda c: c["data"].update(dataset=5), "data.dataset = 5"),
        (lambda c: c["train"].pop("lr"), "missing ['lr']"),
        (lambda c: c["model"].update(depth=3), "unknown ['depth']"),
    ],
    ids=["float-int", "bool-int", "float-seed", "int-dataset", "missing-key", "extra-key"],
)
def test_a_config_with_wrong_types_or_keys_is_refused(capsys, tmp_path, change, message):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    change(config)
    (out / "config.json").write_text(json.dumps(config))
    assert message in cli_error(capsys, "train", "--out", str(out), "--resume")
    assert message in cli_error(capsys, "evaluate", str(out))


def test_a_config_written_before_an_option_existed_still_reads(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["train"]["precision"]
    (out / "config.json").write_text(json.dumps(config))
    assert RunDir(out).read_config().train.precision == "fp32"


def test_a_refused_resume_writes_nothing(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "cannot resume" in cli_error(
        capsys, "train", "--out", str(out), "--resume", "--lr", "0.1"
    )
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


def test_random_bytes_in_config_or_evaluation_are_one_line(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--eval-samples", "21", "--out", str(out)]) == 0
    evaluation_file(out, 21).write_bytes(b"\x89\xff\x00")
    assert "cannot read" in cli_error(capsys, "compare", str(out))
    (out / "config.json").write_bytes(b"\x89\xff\x00")
    assert "cannot read" in cli_error(capsys, "evaluate", str(out))


def _rewrite_checkpoint(out, change):
    import torch

    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    "change, command, message",
    [
        (lambda s: s.pop("epoch"), "evaluate", "lacks the number of epochs"),
        (lambda s: s["meta"].update(image_shape=[4, 4]), "sample", "does not hold 64 values"),
        (lambda s: s.update(rng={"cpu": "not a state"}), "resume", "does not match"),
        (
            lambda s: s["model"]["decoder.0.weight"].fill_(float("nan")),
            "evaluate",
            "checkpoint.pt: parameter decoder.0.weight holds NaN or infinite values",
        ),
    ],
    ids=["no-epoch", "wrong-image-shape", "bad-rng-state", "nan-weights"],
)
def test_a_checkpoint_with_damaged_fields_is_refused(capsys, tmp_path, change, command, message):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    _rewrite_checkpoint(out, change)
    argv = {
        "evaluate": ["evaluate", str(out)],
        "sample": ["sample", str(out), "--out", str(tmp_path / "s.png")],
        "resume": ["train", "--out", str(out), "--resume", "--epochs", "2"],
    }[command]
    assert message in cli_error(capsys, *argv)


# item 11: failed writes
def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
    capsys, tmp_path, monkeypatch
):
    import errno

    out = tmp_path / "r"
    assert main(["train", *TINY, "--no-eval", "--out", str(out)]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    err = cli_error(capsys, "train", "--out", str(out), "--resume", "--epochs", "2")
    assert "No space left on device" in err and "previous version is kept" in err
    monkeypatch.undo()
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-eval"]) == 0


def test_evaluate_checks_it_can_write_before_computing(capsys, run_dir, monkeypatch):
    import errno
    import tempfile

    from pyro_vae import jobs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def never(*args, **kwargs):
        raise AssertionError("the estimate ran although its result could not be written")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(jobs.evaluation, "estimate", never)
    err = cli_error(capsys, "evaluate", str(run_dir))
    assert f"cannot write into {run_dir}: Read-only file system" in err


def test_a_full_disk_during_evaluate_keeps_the_previous_evaluation(capsys, run_dir, monkeypatch):
    import errno

    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    before = {
        p: p.read_bytes()
        for p in (evaluation_file(run_dir, 21), evaluation_file(run_dir, 21, suffix=".nc"))
    }
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    err = cli_error(capsys, "evaluate", str(run_dir), "--num-samples", "21", "--no-progress")
    monkeypatch.undo()
    assert "No space left on device" in err and "previous evaluation of this setting is kept" in err
    assert {p: p.read_bytes() for p in before} == before
    assert not [p.name for p in RunDir(run_dir).evaluations_dir.iterdir() if p.suffix == ".tmp"]
    RunDir(run_dir).find_evaluation(num_samples=21).inference_data()  # still one whole unit


def test_evaluations_older_than_the_checkpoint_are_flagged_and_not_plotted(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--eval-samples", "21", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--num-samples", "30", "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()  # K=21 was evaluated again after epoch 2; K=30 is from epoch 1
    assert main(["compare", str(out), "--num-samples", "30"]) == 0
    text = capsys.readouterr().out
    assert "evaluations compared: test-K30-fp32" in text
    assert "made after 1 epoch, and the run has trained for 1 epoch since" in text
    assert main(["compare", str(out), "--num-samples", "21"]) == 0
    assert "trained for 2 epochs since" not in capsys.readouterr().out
    err = cli_error(capsys, "plot", str(out), "--num-samples", "30", "--out", str(tmp_path / "p"))
    assert "made after 1 epoch, but its checkpoint has 2" in err
