"""The command line given data it cannot use: one line ``pyro-vae: error: ...``, status 2.

A few representative files go through a real subprocess (each starts Python and torch, a few
seconds); the rest call :func:`pyro_vae.cli.main` in-process.
"""

import subprocess

import numpy as np
import pytest
import torch

from pyro_vae.data.datasets import ENV_VAR
from tests.helpers import cli_command, cli_error

TRAIN = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--no-eval", "--no-progress"]
TRAIN += ["--binarize", "none", "--likelihood", "gaussian"]


def _rand(*shape):
    return np.random.default_rng(0).random(shape)


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("five.npy", lambda p: np.save(p, _rand(5, 6)), "need at least 6"),
        ("text.npy", lambda p: np.save(p, np.array([["a", "b"]] * 10)), "dtype <U1"),
        ("pickled.pt", lambda p: torch.save(np.zeros((10, 6)), p), "not a plain tensor file"),
    ],
    ids=["5-images", "str-dtype", "pickled-pt"],
)
def test_unusable_data_file_in_a_subprocess_is_one_line(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    r = subprocess.run(
        cli_command("train", "--dataset", path, *TRAIN, "--out", tmp_path / "run"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert err.startswith("pyro-vae: error:") and "\n" not in err, err
    assert message in err and "weights_only" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("one.npy", lambda p: np.save(p, _rand(1, 6)), "1 datapoint cannot be split"),
        ("empty.npy", lambda p: np.save(p, np.zeros((0, 6))), "no datapoints"),
        ("novalues.npy", lambda p: np.save(p, np.zeros((10, 0))), "no values"),
        ("object.npy", lambda p: np.save(p, np.array([[1, "a"]] * 10, object)), "Python objects"),
        ("empty.pt", lambda p: torch.save(torch.zeros(0, 4, 4), p), "no datapoints"),
        (
            "object.pt",
            lambda p: torch.save({"x": np.zeros((10, 6))}, p),
            "not a plain tensor file",
        ),
        ("dict.pt", lambda p: torch.save({"x": torch.rand(10, 6)}, p), "not one tensor"),
        (
            "splits.npz",
            lambda p: np.savez(p, train=_rand(10, 6), test=np.zeros((0, 6))),
            "'test' holds no datapoints",
        ),
        (
            "val.npz",
            lambda p: np.savez(p, train=_rand(10, 6), val=np.zeros((0, 6)), test=_rand(3, 6)),
            "'val' holds no datapoints",
        ),
        (
            "labels.npz",
            lambda p: np.savez(p, x=_rand(10, 6), y=np.arange(4)),
            "4 labels for 10 datapoints",
        ),
        ("zero.npz", lambda p: p.write_bytes(b""), "is empty"),
    ],
    ids=[
        "1-image",
        "npy-0xD",
        "npy-Nx0",
        "npy-object",
        "pt-0xHxW",
        "pt-pickled-dict",
        "pt-dict-of-tensors",
        "npz-empty-test",
        "npz-empty-val",
        "npz-labels-wrong-length",
        "npz-0-bytes",
    ],
)
def test_unusable_data_file_is_one_line(capsys, tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    err = cli_error(capsys, "train", "--dataset", str(path), *TRAIN, "--out", str(tmp_path / "run"))
    assert message in err and str(path) in err and "weights_only" not in err


def test_missing_idx_data_with_download_turned_off(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["train", "--dataset", "kmnist", "--data-dir", str(tmp_path / "mine"), "--no-download"]
    err = cli_error(capsys, *argv, *TRAIN, "--out", str(tmp_path / "run"))
    assert "downloading is turned off" in err and "--no-download" not in err


def test_failed_download_is_one_line_with_its_reason(capsys, tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading x:\nTried https://example.invalid/, got:\nno net")

    monkeypatch.setattr(torchvision.datasets, "KMNIST", Offline)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["train", "--dataset", "kmnist", "--data-dir", str(tmp_path / "mine")]
    err = cli_error(capsys, *argv, *TRAIN, "--out", str(tmp_path / "run"))
    assert "failed (RuntimeError: Error downloading x: Tried" in err and "no net" in err
    assert "--no-download" not in err
