"""What a run directory guarantees (issue 11): exclusive ownership while training, evaluations
written as one unit, corruption detected. Concurrency tests start real processes."""

import os
import subprocess
import sys
import zipfile

import pytest

from pyro_vae.cli import main
from pyro_vae.errors import CheckpointError, RunInUseError
from pyro_vae.runs import RunDir

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


def _cli(*args):
    return [sys.executable, "-m", "pyro_vae.cli", *args]


def _env():
    return {**os.environ, "PYTHONWARNINGS": "error"}


def _error(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("pyro-vae: error:") and "\n" not in err, err
    return err


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
    args = _cli("train", *TINY, "--epochs", "30", "--no-eval", "--out", str(out))
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
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
    _error(
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
    err = _error(capsys, "evaluate", str(out), "--num-samples", "5")
    assert f"checkpoint is corrupt: {out / 'checkpoint.pt'}" in err and "CRC" in err
    err = _error(capsys, "train", *TINY, "--epochs", "2", "--out", str(out), "--resume")
    assert "checkpoint is corrupt" in err
    with pytest.raises(CheckpointError, match="checkpoint is corrupt"):
        RunDir(out).load_checkpoint(RunDir(out).read_config())


# item 2: an evaluation is one unit
def test_concurrent_evaluations_all_succeed_and_leave_one_whole_evaluation(run_dir):
    procs = [
        subprocess.Popen(
            _cli("evaluate", str(run_dir), "--num-samples", k, "--no-progress"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        for k in ("302", "50", "21")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    run = RunDir(run_dir)
    summary = run.read_evaluation()
    idata = run.read_inference_data(summary)  # refuses a mismatched pair
    assert idata.attrs["num_samples"] == summary["num_samples"] in (302, 50, 21)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_summary_beside_another_evaluations_per_point_data_is_refused(capsys, run_dir, tmp_path):
    assert main(["evaluate", str(run_dir), "--num-samples", "30", "--no-progress"]) == 0
    kept = (run_dir / "evaluation.nc").read_bytes()
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    capsys.readouterr()
    (run_dir / "evaluation.nc").write_bytes(kept)  # what a crash between the two renames leaves
    err = _error(capsys, "compare", str(run_dir))
    assert "are not one evaluation" in err and "evaluate" in err
    assert "are not one evaluation" in _error(
        capsys, "plot", str(run_dir), "--out", str(tmp_path / "plots")
    )
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0


def test_a_damaged_evaluation_nc_is_one_line(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    capsys.readouterr()
    nc = run_dir / "evaluation.nc"
    nc.write_bytes(nc.read_bytes()[:200])
    assert "is damaged or not an evaluation" in _error(capsys, "compare", str(run_dir))
    (run_dir / "evaluation.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in _error(capsys, "compare", str(run_dir))
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
