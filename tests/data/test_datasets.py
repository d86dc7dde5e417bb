import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import binarize, load_dataset, prepare_split
from pyro_vae.data.datasets import ENV_VAR, IDX_FILES, candidate_dirs
from pyro_vae.errors import DataError


def test_digits_are_split_and_scaled():
    d = load_dataset("digits")
    sizes = {k: v.shape for k, v in d.splits.items()}
    assert sizes == {"train": (1258, 64), "val": (180, 64), "test": (359, 64)}
    assert d.image_shape == (8, 8)
    x = torch.cat(list(d.splits.values()))
    assert x.min() == 0 and x.max() == 1
    assert set((x * 16).round().unique().tolist()) <= set(range(17))
    # the split is a partition: no image in two splits
    assert len({tuple(r) for r in x.tolist()}) > 0.9 * x.shape[0]


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("cifar")


def _write_idx(dirpath: Path, n_train=12, n_test=6, gz=True):
    rng = np.random.default_rng(0)
    dirpath.mkdir(parents=True, exist_ok=True)
    shapes = {
        "train_images": (n_train, 4, 4),
        "train_labels": (n_train,),
        "test_images": (n_test, 4, 4),
        "test_labels": (n_test,),
    }
    for key, shape in shapes.items():
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        header = bytes([0, 0, 8, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)
        data = header + a.tobytes()
        name = IDX_FILES[key]
        if gz:
            (dirpath / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (dirpath / name).write_bytes(data)


def test_idx_files_are_found_in_torchvision_layout_under_the_env_root(tmp_path, monkeypatch):
    import pyro_vae.data.datasets as ds

    monkeypatch.setattr(ds, "TORCHVISION_VAL_SIZE", 2)
    _write_idx(tmp_path / "KMNIST" / "raw", gz=False)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    d = load_dataset("kmnist", download=False)
    assert {k: v.shape[0] for k, v in d.splits.items()} == {"train": 10, "val": 2, "test": 6}
    assert d.image_shape == (4, 4) and d.labels["test"].shape == (6,)


def test_data_dir_comes_first(tmp_path, monkeypatch):
    import pyro_vae.data.datasets as ds

    monkeypatch.setattr(ds, "TORCHVISION_VAL_SIZE", 2)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    dirs = candidate_dirs("mnist", str(tmp_path / "mine"))
    assert dirs[0] == tmp_path / "mine" and tmp_path / "env" in dirs
    _write_idx(tmp_path / "mine" / "mnist")
    assert load_dataset("mnist", str(tmp_path / "mine"), download=False).source.endswith("mnist")


def test_missing_files_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        load_dataset("kmnist", str(tmp_path / "mine"), download=False)
    message = str(e.value)
    assert str(tmp_path / "mine") in message and str(tmp_path / "env") in message
    assert "--data-dir" in message and "\n" not in message


def test_corrupt_idx_and_checksum_mismatch_are_errors(tmp_path, monkeypatch):
    import pyro_vae.data.datasets as ds

    _write_idx(tmp_path / "m")
    train = tmp_path / "m" / f"{IDX_FILES['train_images']}.gz"
    train.write_bytes(gzip.compress(gzip.decompress(train.read_bytes())[:-5]))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", str(tmp_path / "m"), download=False)
    # Fashion-MNIST's checksums are known: synthetic files must not pass for it
    _write_idx(tmp_path / "f")
    monkeypatch.setattr(ds, "TORCHVISION_VAL_SIZE", 2)
    with pytest.raises(DataError, match="checksum"):
        load_dataset("fashion-mnist", str(tmp_path / "f"), download=False)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist absent"
)
def test_debian_fashion_mnist_is_found_and_verified():
    d = load_dataset("fashion-mnist", "/nonexistent", download=False)
    assert {k: v.shape for k, v in d.splits.items()} == {
        "train": (55000, 784),
        "val": (5000, 784),
        "test": (10000, 784),
    }
    assert d.source == "/usr/share/datasets/fashion-mnist"


def test_user_npz_with_one_array_and_with_splits(tmp_path):
    x = np.random.default_rng(0).random((50, 3, 5)).astype(np.float32)
    np.savez(tmp_path / "one.npz", images=x)
    d = load_dataset(str(tmp_path / "one.npz"))
    assert d.image_shape == (3, 5) and sum(v.shape[0] for v in d.splits.values()) == 50
    np.savez(tmp_path / "three.npz", train=x[:30].reshape(30, 15), test=x[30:].reshape(20, 15))
    d = load_dataset(str(tmp_path / "three.npz"))
    assert d.splits["test"].shape == (20, 15) and d.splits["val"].shape[0] == 3


def test_user_tensor_file(tmp_path):
    torch.save(torch.rand(40, 1, 4, 4), tmp_path / "x.pt")
    d = load_dataset(str(tmp_path / "x.pt"))
    assert d.image_shape == (4, 4) and d.data_dim == 16


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5,)), "shape"),
        (np.zeros((5, 2, 3, 4, 5)), "shape"),
        (np.array([[0.0, np.nan]] * 10), "NaN"),
    ],
)
def test_bad_user_arrays_are_rejected(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npy"))


def test_missing_user_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_static_binarisation_is_fixed_and_dynamic_keeps_probabilities():
    x = torch.rand(100, 8)
    a, b = binarize(x, seed=3), binarize(x, seed=3)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, binarize(x, seed=4))
    assert torch.equal(prepare_split(x, "train", "dynamic", 0), x)
    test = prepare_split(x, "test", "dynamic", 0)
    assert torch.equal(test, prepare_split(x, "test", "static", 0))  # same fixed draw
    assert torch.equal(prepare_split(x, "test", "none", 0), x)
    # binarised frequencies follow the probabilities
    big = torch.full((200000,), 0.3)
    assert binarize(big, 0).mean().item() == pytest.approx(0.3, abs=0.005)


def test_binarising_values_outside_0_1_is_an_error():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        binarize(torch.tensor([0.0, 2.0]), 0)
