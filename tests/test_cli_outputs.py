"""What plot, sample and compare write (issue 28): figures written whole or not at all, output
paths, figures named by their evaluation's setting, runs holding several evaluations."""

import builtins
import errno
import io
import os
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
