"""What plot, sample and compare write (issue 28): figures written whole or not at all, output
paths, figures named by their evaluation's setting, runs holding several evaluations."""

import builtins
import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from pyro_vae.cli import main
from tests.helpers import cli_error

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--eval-samples", "21", "--out", str(out)]) == 0
    return out


@pytest.fixture
def own_run(run_dir, tmp_path):
    """A copy of the trained run (one epoch, its evaluation with K = 21) for a test to change."""
    return Path(shutil.copytree(run_dir, tmp_path / "own"))


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)``: from then on, every file opened for writing under ``folder`` takes
    4096 bytes and then fails with ENOSPC, as on a full disk (the bytes before stay written)."""

    def fill(folder: Path):
        folder = str(Path(folder).resolve())
        real_open = io.open

        class Full(io.FileIO):
            room = 4096

            def write(self, data):
                if len(data) > self.room:
                    super().write(bytes(data[: self.room]))
                    self.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.room -= len(data)
                return super().write(data)

        def opened(file, mode="r", *args, **kwargs):
            where = os.path.realpath(file) if isinstance(file, str | os.PathLike) else ""
            if any(m in mode for m in "wax") and where.startswith(folder + os.sep):
                raw = Full(file, mode.replace("b", "").replace("t", "") or "w")
                return raw if "b" in mode else io.TextIOWrapper(raw, *args[1:2], **kwargs)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(io, "open", opened)
        monkeypatch.setattr(builtins, "open", opened)

    return fill


# item F: figures are written whole, or the previous file stays
@pytest.mark.parametrize("command", ["sample", "plot"])
def test_a_full_disk_leaves_the_previous_figures_whole_and_names_the_file(
    capsys, run_dir, tmp_path, full_disk, command
):
    out = tmp_path / "figs"
    argv = [command, str(run_dir), "--out", f"{out}{os.sep}"]  # a folder for both
    assert main(argv) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before and all(len(b) > 4096 for b in before.values())
    full_disk(out)
    err = cli_error(capsys, *argv)
    assert f"cannot write {out}{os.sep}" in err and ".png" in err
    assert "No space left on device" in err and "previous version is kept" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporaries either


# item 9: output paths
@pytest.mark.parametrize(
    "argv, option",
    [
        (["plot", "--out", ""], "--out"),
        (["sample", "--out", ""], "--out"),
        (["sample", "--out", " "], "--out"),
        (["compare", "--csv", ""], "--csv"),
        (["compare", "--markdown", ""], "--markdown"),
    ],
    ids=["plot", "sample", "sample-blank", "compare-csv", "compare-markdown"],
)
def test_an_empty_output_path_is_refused(capsys, run_dir, tmp_path, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    err = cli_error(capsys, argv[0], str(run_dir), *argv[1:])
    assert f"{option} is empty" in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_compare_writes_no_table_into_a_directory_that_does_not_exist(capsys, run_dir, tmp_path):
    for option in ("--csv", "--markdown"):
        table = tmp_path / "missing" / "dir" / "t.txt"
        err = cli_error(capsys, "compare", str(run_dir), option, str(table))
        assert f"{option} {table} lies in {table.parent}, which does not exist" in err
        assert not (tmp_path / "missing").exists()
    table = tmp_path / "t.csv"
    assert main(["compare", str(run_dir), "--csv", str(table)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {table}")
    assert table.read_text().startswith("run,log_px,")


def _evaluate(run, k):
    assert main(["evaluate", str(run), "--num-samples", str(k), "--no-progress"]) == 0


# item 15: the figures of two evaluation settings side by side
def test_plots_of_two_settings_into_one_folder_keep_both(capsys, own_run, tmp_path):
    _evaluate(own_run, 30)
    out = tmp_path / "figs"
    for k in (21, 30):
        assert main(["plot", str(own_run), "--num-samples", str(k), "--out", str(out)]) == 0
        said = capsys.readouterr().out
        assert f"wrote {out / f'gap-test-K{k}-fp32.png'}" in said
        assert said.strip().endswith(f"evaluation figures from test-K{k}-fp32")
    gaps = {k: (out / f"gap-test-K{k}-fp32.png").read_bytes() for k in (21, 30)}
    assert gaps[21] != gaps[30]  # each its own evaluation's
    for name in ("khat", "bound_vs_k"):
        assert {p.name for p in out.glob(f"{name}-*.png")} == {
            f"{name}-test-K21-fp32.png",
            f"{name}-test-K30-fp32.png",
        }


# item 17: a run holding several evaluations, some older than its checkpoint
def test_plot_takes_the_newest_current_evaluation_and_older_ones_can_be_dropped(
    capsys, own_run, tmp_path
):
    run, out = str(own_run), str(tmp_path / "figs")
    _evaluate(own_run, 30)
    capsys.readouterr()
    assert main(["plot", run, "--out", out]) == 0
    said = capsys.readouterr().out
    assert "evaluation figures from test-K30-fp32, the newest of 2 current evaluations" in said
    assert "also test-K21-fp32; choose one with --split, --method, --num-samples" in said
    assert main(["train", "--out", run, "--resume", "--epochs", "2", "--no-eval"]) == 0
    capsys.readouterr()
    shutil.rmtree(out)
    assert main(["plot", run, "--out", out]) == 0  # what needs no evaluation is drawn
    said = capsys.readouterr().out
    assert f"wrote {Path(out) / 'training.png'}" in said and "gap-" not in said
    assert "made before its checkpoint's 2 epochs (test-K21-fp32 after 1 epoch" in said
    assert f"pyro-vae evaluations {run} --drop-stale" in said
    err = cli_error(capsys, "plot", run, "--num-samples", "30", "--out", out)
    assert "made after 1 epoch, but its checkpoint has 2" in err
    assert f"pyro-vae evaluations {run} --drop test-K30-fp32" in err
    # compare's caveat counts the epochs since the evaluation
    assert main(["compare", run, "--num-samples", "30"]) == 0
    said = capsys.readouterr().out
    assert "made after 1 epoch, and the run has trained for 1 epoch since" in said
    assert "(its checkpoint holds 2 epochs)" in said
    _evaluate(own_run, 21)
    capsys.readouterr()
    assert main(["plot", run, "--out", out]) == 0
    assert capsys.readouterr().out.strip().endswith("evaluation figures from test-K21-fp32")
    assert main(["evaluations", run]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split() == ["test-K21-fp32", listed[1].split()[1], "2", "current"]
    assert (
        listed[2].startswith("test-K30-fp32") and "older: the checkpoint now holds 2" in listed[2]
    )
    assert "keeps no evaluation of that setting" in cli_error(
        capsys, "evaluations", run, "--drop", "test-K5-fp32"
    )
    assert main(["evaluations", run, "--drop-stale"]) == 0
    assert capsys.readouterr().out.startswith("dropped test-K30-fp32\n")
    assert sorted(p.name for p in (own_run / "evaluations").iterdir() if p.name[0] != ".") == [
        "test-K21-fp32.json",
        "test-K21-fp32.nc",
    ]
    assert main(["evaluations", run, "--drop", "test-K21-fp32"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{run} keeps no evaluation")
    assert main(["plot", run, "--out", out]) == 0
    assert f"no evaluation figures: {run} keeps no evaluation" in capsys.readouterr().out
