import gzip
import io
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


# --- files that cannot become three non-empty splits, and arrays that would break later ---------


@pytest.mark.parametrize("n", [1, 5], ids=["1-image", "5-images"])
def test_too_few_datapoints_for_the_fixed_split_are_refused(tmp_path, n):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).random((n, 6)))
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "few.npy"))
    message = str(e.value)
    assert f"{n} datapoint{'s' if n > 1 else ''} cannot be split into train/val/test" in message
    assert "need at least 6" in message and "\n" not in message


def test_the_smallest_splittable_file_gives_every_split_a_datapoint(tmp_path):
    from pyro_vae.data.datasets import MIN_SPLIT_SIZE

    assert MIN_SPLIT_SIZE == 6
    np.save(tmp_path / "six.npy", np.random.default_rng(0).random((6, 3)))
    d = load_dataset(str(tmp_path / "six.npy"))
    assert {k: v.shape[0] for k, v in d.splits.items()} == {"train": 4, "val": 1, "test": 1}


def _npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def _rand(*shape):
    return np.random.default_rng(0).random(shape)


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize(
    "suffix, write, message",
    [
        (".npy", lambda p: np.save(p, np.zeros((0, 6))), r"no datapoints \(shape \(0, 6\)\)"),
        (".npy", lambda p: np.save(p, np.zeros((0, 4, 4), np.uint8)), "no datapoints"),
        (".npy", lambda p: np.save(p, np.zeros((10, 0))), r"no values \(shape \(10, 0\)\)"),
        (".npy", lambda p: np.save(p, np.zeros((10, 1, 0, 3))), "no values"),
        (".npy", lambda p: np.save(p, np.array([["a", "b"]] * 10)), "dtype <U1.*expected numbers"),
        (".npy", lambda p: np.save(p, np.ones((10, 2), "M8[s]")), "dtype datetime64"),
        (".npy", lambda p: np.save(p, np.array([[1, "a"]] * 10, object)), "Python objects"),
        (".npz", _npz(x=np.zeros((0, 6))), "no datapoints"),
        (".npz", _npz(train=_rand(10, 6), test=np.zeros((0, 6))), "'test' holds no datapoints"),
        (
            ".npz",
            _npz(train=_rand(10, 6), val=np.zeros((0, 6)), test=_rand(4, 6)),
            "'val' holds no datapoints",
        ),
        (".npz", _npz(train=np.zeros((0, 6)), test=_rand(4, 6)), "'train' holds no datapoints"),
        (
            ".npz",
            _npz(train=_rand(5, 6), test=_rand(4, 6)),
            "5 datapoints in 'train' cannot be split into train/val; need at least 6",
        ),
        (".npz", _npz(x=_rand(10, 6), y=np.arange(3)), "3 labels for 10 datapoints"),
        (".npz", _npz(x=_rand(10, 6), y=np.array(list("abcdefghij"))), "labels have dtype <U1"),
        (".npz", _npz(x=_rand(10, 6), labels=np.zeros((10, 2), int)), "labels have shape"),
        (".npz", _npz(x=_rand(10, 2), y=np.r_[np.nan, np.zeros(9)]), "labels contain NaN"),
        (".pt", lambda p: torch.save(torch.zeros(0, 6), p), "no datapoints"),
        (".pt", lambda p: torch.save(torch.rand(10, 6).to_sparse(), p), "sparse"),
        (".npy", lambda p: p.write_bytes(b""), "is empty"),
        (".npz", lambda p: p.write_bytes(b""), "is empty"),
        (".pt", lambda p: p.write_bytes(b""), "is empty"),
        (".npy", lambda p: p.write_bytes(b"not numpy data"), "not an .npy file"),
        (".npz", lambda p: p.write_bytes(_npy_bytes(_rand(10, 6))), "not an .npz file"),
        (".pt", lambda p: p.write_bytes(b"\x80\x02Y" * 9), "not a plain tensor file, or a corrupt"),
    ],
    ids=[
        "npy-0xD",
        "npy-0xHxW",
        "npy-Nx0",
        "npy-Nx1x0xW",
        "npy-str",
        "npy-datetime",
        "npy-object",
        "npz-x-0xD",
        "npz-empty-test",
        "npz-empty-val",
        "npz-empty-train",
        "npz-5-train-no-val",
        "npz-labels-wrong-length",
        "npz-labels-str",
        "npz-labels-2d",
        "npz-labels-nan",
        "pt-0xD",
        "pt-sparse",
        "npy-0-bytes",
        "npz-0-bytes",
        "pt-0-bytes",
        "npy-not-numpy",
        "npz-holding-npy",
        "pt-garbage",
    ],
)
def test_unusable_user_files_are_refused_in_one_line(tmp_path, suffix, write, message):
    path = tmp_path / f"bad{suffix}"
    write(path)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(str(path))
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert "allow_pickle" not in message and "weights_only" not in message


@pytest.mark.parametrize(
    "tensor",
    [torch.rand(10, 6).bfloat16(), torch.rand(10, 6, requires_grad=True)],
    ids=["bfloat16", "requires-grad"],
)
def test_tensor_files_of_any_float_tensor_load(tmp_path, tensor):
    torch.save(tensor, tmp_path / "x.pt")
    d = load_dataset(str(tmp_path / "x.pt"))
    assert d.data_dim == 6 and d.splits["train"].dtype == torch.float32
    assert not d.splits["train"].requires_grad


def test_scalar_arrays_and_bool_arrays_are_handled_as_before(tmp_path):
    np.save(tmp_path / "scalar.npy", np.float32(3))
    with pytest.raises(DataError, match=r"has shape \(\)"):
        load_dataset(str(tmp_path / "scalar.npy"))
    np.save(tmp_path / "bool.npy", np.random.default_rng(0).random((10, 6)) > 0.5)
    assert set(load_dataset(str(tmp_path / "bool.npy")).splits["train"].unique().tolist()) <= {
        0.0,
        1.0,
    }


# --- pickled .pt files: one line, no advice to load them unsafely -------------------------------


class _Pickled:
    """A Python object that only an unsafe torch.load would rebuild."""


@pytest.mark.parametrize(
    "obj",
    [np.zeros((10, 6)), {"x": np.zeros((10, 6))}, _Pickled()],
    ids=["numpy-array", "dict-of-numpy", "python-object"],
)
def test_pickled_tensor_file_is_one_line_without_the_unsafe_hint(tmp_path, obj):
    path = tmp_path / "pickled.pt"
    torch.save(obj, path)
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    message = str(e.value)
    assert "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message and "safe_globals" not in message
    assert "not a plain tensor file" in message and "pickled Python objects" in message
    assert f"torch.save(tensor, {path})" in message


def test_tensor_file_holding_a_dict_says_to_save_one_tensor(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"x": torch.rand(10, 6)}, path)
    with pytest.raises(DataError, match=r"holds a dict, not one tensor.*torch\.save\(tensor,"):
        load_dataset(str(path))


# --- IDX data sets that are not found: the advice matches what happened ------------------------


def _nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return str(tmp_path / "mine")


def test_not_found_with_download_turned_off_says_it_can_be_allowed(tmp_path, monkeypatch, capsys):
    data_dir = _nowhere(tmp_path, monkeypatch)
    with pytest.raises(DataError) as e:
        load_dataset("kmnist", data_dir, download=False)
    message = str(e.value)
    assert "downloading is turned off" in message and "allow downloading" in message
    assert "--no-download" not in message and "failed" not in message and "\n" not in message


def test_failed_download_folds_the_reason_into_the_one_error(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError(
                "Error downloading t10k-images-idx3-ubyte.gz:\n"
                "Tried https://example.invalid/, got:\n<urlopen error no network>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "KMNIST", Offline)
    data_dir = _nowhere(tmp_path, monkeypatch)
    with pytest.raises(DataError) as e:
        load_dataset("kmnist", data_dir, download=True)
    message = str(e.value)
    assert f"downloading kmnist into {tmp_path / 'cache' / 'pyro_vae'} failed" in message
    assert "RuntimeError: Error downloading" in message and "<urlopen error no network>" in message
    assert "turned off" not in message and "--no-download" not in message and "\n" not in message
    assert capsys.readouterr().err == ""  # the library does not print; the reason is in the error


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full(20, 1e30), "not whole numbers"),
        (np.full(20, 0.5), "not whole numbers"),
        (np.full(20, 2**64 - 1, dtype=np.uint64), "too large for int64"),
    ],
    ids=["huge-float", "half", "huge-uint64"],
)
def test_labels_that_are_not_integers_are_refused(tmp_path, labels, message):
    path = tmp_path / "lab.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 4)), y=labels)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path))


def test_integral_float_labels_are_read_as_integers(tmp_path):
    path = tmp_path / "lab.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 4)), y=np.arange(20.0))
    labels = load_dataset(str(path)).labels
    assert sorted(torch.cat(list(labels.values())).tolist()) == list(range(20))
