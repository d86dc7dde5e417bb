"""Named data sets and users' own files, as float tensors of flattened datapoints.

Every data set is returned as train / val / test tensors of shape ``(N, D)`` with the image shape
kept beside them. Pixel data are scaled to [0, 1]; binarisation is a separate step
(:mod:`pyro_vae.data.transforms`). Nothing here falls back to another data set: a missing file is an
error that says where files were looked for and how to provide them.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import DataError
from pyro_vae.text import plural

ENV_VAR = "PYRO_VAE_DATA"
SPLIT_NAMES = ("train", "val", "test")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TORCHVISION_VAL_SIZE = 5000  # the last 5,000 training images are held out for validation
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1  # the fixed split of a single array (and of digits)


@dataclass(frozen=True)
class IdxSource:
    """A torchvision data set in IDX files: its class name, and where Debian ships it."""

    torchvision_class: str
    system_dirs: tuple[str, ...] = ()
    # sha256 of the decompressed files, where known (gzip bytes differ between repackagings)
    sha256: dict[str, str] = field(default_factory=dict)


IDX_SOURCES = {
    "mnist": IdxSource("MNIST"),
    "fashion-mnist": IdxSource(
        "FashionMNIST",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",  # noqa: E501
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",  # noqa: E501
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",  # noqa: E501
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",  # noqa: E501
        },
    ),
    "kmnist": IdxSource("KMNIST"),
}
DATASET_NAMES = ("digits", *IDX_SOURCES)


@dataclass(frozen=True)
class Dataset:
    """A data set split three ways. ``x`` tensors are float32 ``(N, D)``; labels may be absent."""

    name: str
    splits: dict[str, torch.Tensor]
    image_shape: tuple[int, ...]
    labels: dict[str, torch.Tensor] | None = None
    source: str = ""
    levels: int | None = None  # values are k / (levels - 1) when the data are quantised

    def split(self, name: str) -> torch.Tensor:
        if name not in self.splits:
            raise DataError(f"unknown split '{name}'; choose one of {', '.join(self.splits)}")
        return self.splits[name]

    @property
    def data_dim(self) -> int:
        return self.splits["train"].shape[1]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro_vae"


def is_path(name: str) -> bool:
    """Whether a ``--dataset`` value names a file rather than a built-in data set."""
    return os.sep in name or name.endswith((".npz", ".npy", ".pt"))


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = True) -> Dataset:
    """Load a named data set (``digits``, ``mnist``, ``fashion-mnist``, ``kmnist``) or a file.

    Parameters
    ----------
    name : str
        A name from :data:`DATASET_NAMES`, or a path to an ``.npz``/``.npy``/``.pt`` file.
    data_dir : str, optional
        First directory to look in for IDX files; then ``$PYRO_VAE_DATA``, the cache directory
        (``~/.cache/pyro_vae``) and known system directories (Debian's ``dataset-fashion-mnist``).
    download : bool
        If the files are nowhere, download them with torchvision into the cache directory.
    """
    if is_path(name):
        return load_file(name)
    if name == "digits":
        return load_digits()
    if name in IDX_SOURCES:
        return load_idx_dataset(name, data_dir, download=download)
    raise DataError(
        f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}, "
        "or give the path of an .npz, .npy or .pt file"
    )


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0..16), scaled to [0, 1].

    A fixed permutation (seed 0) holds out 20% for test and 10% for validation.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    splits, labels = _fixed_split(x, y, TEST_FRACTION, VAL_FRACTION)
    return Dataset(
        "digits", splits, (8, 8), labels, source="sklearn.datasets.load_digits", levels=17
    )


def _fixed_split(x, y, test_fraction, val_fraction, seed=0):
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    parts = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }
    splits = {k: x[parts[k]] for k in SPLIT_NAMES}
    labels = None if y is None else {k: y[parts[k]] for k in SPLIT_NAMES}
    return splits, labels


def _min_split_size(test_fraction: float, val_fraction: float) -> int:
    """The fewest datapoints for which :func:`_fixed_split` leaves every split it makes (train,
    and val / test where their fraction is not zero) at least one datapoint. For fractions that
    sum to well under 1, as here, every larger number works too."""
    n = 1
    while True:
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        if (
            n - n_test - n_val >= 1
            and (n_test >= 1 or test_fraction == 0)
            and (n_val >= 1 or val_fraction == 0)
        ):
            return n
        n += 1


# 6: five datapoints give test 1, val round(0.5) = 0 (round half to even), train 4.
MIN_SPLIT_SIZE = _min_split_size(TEST_FRACTION, VAL_FRACTION)
MIN_TRAIN_SIZE_FOR_VAL = _min_split_size(0.0, VAL_FRACTION)  # also 6


def candidate_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Directories searched for a named IDX data set, in order."""
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(default_cache_dir())
    source = IDX_SOURCES[name]
    dirs = []
    for root in roots:
        dirs += [root, root / name, root / source.torchvision_class / "raw"]
    dirs += [Path(d) for d in source.system_dirs]
    return dirs


def _find_idx_files(name: str, dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for key, base in IDX_FILES.items():
            for candidate in (d / f"{base}.gz", d / base):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def load_idx_dataset(name: str, data_dir: str | None = None, *, download: bool = True) -> Dataset:
    """MNIST-style IDX files, found locally or downloaded through torchvision's data set classes."""
    dirs = candidate_dirs(name, data_dir)
    files = _find_idx_files(name, dirs)
    failure = None
    if files is None and download:
        failure = _download(name)
        files = _find_idx_files(name, dirs)
    if files is None:
        looked = ", ".join(str(d) for d in dict.fromkeys(dirs))
        hint = " (or: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        cache = default_cache_dir()
        if not download:
            fetch = (
                f"downloading is turned off; allow downloading, with network access, to fetch "
                f"them into {cache}"
            )
        elif failure is not None:
            fetch = f"downloading {name} into {cache} failed ({failure})"
        else:
            fetch = f"a download into {cache} finished but did not leave the four files there"
        raise DataError(
            f"{name} files not found. Looked for {', '.join(IDX_FILES.values())} (optionally .gz) "
            f"in: {looked}. Put the four files in one of these directories, pass --data-dir, "
            f"or set ${ENV_VAR}{hint}; {fetch}."
        )
    source = IDX_SOURCES[name]
    arrays = {key: _read_idx(path, source.sha256) for key, path in files.items()}
    train_x = _images_to_float(arrays["train_images"])
    test_x = _images_to_float(arrays["test_images"])
    train_y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    n_train = train_x.shape[0] - TORCHVISION_VAL_SIZE
    splits = {"train": train_x[:n_train], "val": train_x[n_train:], "test": test_x}
    labels = {"train": train_y[:n_train], "val": train_y[n_train:], "test": test_y}
    image_shape = tuple(arrays["train_images"].shape[1:])
    source_dir = str(files["train_images"].parent)
    return Dataset(name, splits, image_shape, labels, source=source_dir, levels=256)


def _download(name: str) -> str | None:
    """Download a data set with torchvision into the cache directory.

    Returns None on success, else why it failed, in one line (the caller puts it in its error).
    """
    import torchvision.datasets

    cls = getattr(torchvision.datasets, IDX_SOURCES[name].torchvision_class)
    root = default_cache_dir()
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types; report what happened
        return _one_line(e)
    return None


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(e: BaseException) -> str:
    """An exception as ``Type: message`` on one line (messages of other libraries may span many
    lines and carry terminal colour codes)."""
    text = " ".join(_ANSI_ESCAPE.sub("", str(e)).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _images_to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)


def _read_idx(path: Path, known_sha256: dict[str, str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or not); verify its checksum where known."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    base = path.name.removesuffix(".gz")
    expected = known_sha256.get(base)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise DataError(f"{path} does not match the known checksum of {base}: corrupt download?")
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path} is truncated or corrupt (header says shape {dims})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_file(path: str) -> Dataset:
    """A user's data: ``.npz`` (arrays ``x`` or ``train``/``val``/``test``, optional ``y``/labels),
    ``.npy`` or ``.pt`` (one tensor). Shapes ``(N, D)``, ``(N, H, W)`` or ``(N, 1, H, W)``.

    A single array is split by a fixed permutation (seed 0): 20% test, 10% validation. It needs at
    least :data:`MIN_SPLIT_SIZE` (6) datapoints, the fewest for which every split gets one (five
    give a validation split of ``round(0.5) = 0``). Given ``train`` and ``test`` arrays, each needs
    at least one datapoint, and without a ``val`` array 10% of ``train`` is held out for it, so
    ``train`` needs :data:`MIN_TRAIN_SIZE_FOR_VAL` (6).

    Values must be numbers: floats, uint8, int32, int64 or bool; each datapoint must hold at least
    one value. uint8 arrays are 8-bit images: scaled to [0, 1] with ``levels = 256``. Other values
    are used as given. Labels (``y`` or ``labels``, beside a single array) are one integer per
    datapoint.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    arrays, labels = _read_user_file(p)
    if set(arrays) == {"x"}:
        x, image_shape = _as_datapoints(arrays["x"], "x", p)
        n = x.shape[0]
        if n < MIN_SPLIT_SIZE:
            raise DataError(
                f"{p}: {plural(n, 'datapoint')} cannot be split into train/val/test; need at least "
                f"{MIN_SPLIT_SIZE} so that each split gets one, or give arrays 'train', 'val' and "
                "'test'"
            )
        y = _as_labels(labels["x"], n, p) if "x" in labels else None
        splits, split_labels = _fixed_split(x, y, TEST_FRACTION, VAL_FRACTION)
    elif {"train", "test"} <= set(arrays):
        parts = {k: _as_datapoints(arrays[k], k, p) for k in arrays}
        shapes = {v[1] for v in parts.values()}
        if len(shapes) != 1:
            raise DataError(f"{p}: train/val/test have different datapoint shapes {sorted(shapes)}")
        image_shape = shapes.pop()
        splits = {k: v[0] for k, v in parts.items()}
        if "val" not in splits:
            n_train = splits["train"].shape[0]
            if n_train < MIN_TRAIN_SIZE_FOR_VAL:
                raise DataError(
                    f"{p}: {plural(n_train, 'datapoint')} in 'train' cannot be split into "
                    f"train/val; need at least {MIN_TRAIN_SIZE_FOR_VAL} so that each gets one, or "
                    "give an array 'val'"
                )
            held_out, _ = _fixed_split(splits["train"], None, 0.0, VAL_FRACTION)
            splits["train"], splits["val"] = held_out["train"], held_out["val"]
        splits = {k: splits[k] for k in SPLIT_NAMES}
        split_labels = None
    else:
        raise DataError(
            f"{p}: expected an array named 'x', or arrays 'train' and 'test' (and optionally "
            "'val'); "
            f"found {sorted(arrays)}"
        )
    if splits["train"].shape[0] == 0:
        raise DataError(f"{p}: the training split is empty")
    levels = 256 if _all_uint8(arrays) else None
    if levels:
        splits = {k: v / 255.0 for k, v in splits.items()}
    return Dataset(
        p.stem, splits, image_shape, split_labels, source=str(p.resolve()), levels=levels
    )


def _all_uint8(arrays: dict) -> bool:
    return all(np.asarray(a).dtype == np.uint8 for a in arrays.values())


SAVE_ONE_TENSOR = "save one tensor with torch.save(tensor, {p}) or use .npz/.npy"


def _read_user_file(p: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if p.suffix not in (".npz", ".npy", ".pt"):
        raise DataError(f"{p}: unsupported file type '{p.suffix}'; use .npz, .npy or .pt")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty (0 bytes)")
    with open(p, "rb") as f:
        magic = f.read(6)
    # np.load reads anything else as a pickle and then asks to allow that; say what the file is not
    if p.suffix == ".npy" and magic != b"\x93NUMPY":
        raise DataError(f"{p} is not an .npy file written by numpy.save")
    if p.suffix == ".npz" and magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{p} is not an .npz file (a zip archive) written by numpy.savez")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
            labels = {}
            for key in ("y", "labels"):
                if key in raw:
                    labels["x"] = raw.pop(key)
            arrays = raw if len(raw) != 1 else {"x": next(iter(raw.values()))}
            return arrays, labels
        if p.suffix == ".npy":
            return {"x": np.load(p, allow_pickle=False)}, {}
        return {"x": _tensor_file_array(p)}, {}
    except DataError:
        raise
    except pickle.UnpicklingError as e:
        if p.suffix == ".pt" and "weights_only" in str(e):
            raise _refused_by_safe_loader(p, str(e)) from None
        raise DataError(f"cannot read {p}: {_one_line(e)}") from None
    except ValueError as e:
        if "Object arrays cannot be loaded" in str(e):  # numpy's refusal of object arrays
            raise DataError(
                f"{p}: holds an array of Python objects, which is not loaded for safety; save an "
                "array of numbers"
            ) from None
        raise DataError(f"cannot read {p}: {_one_line(e)}") from None
    except Exception as e:
        if p.suffix == ".pt":  # torch's loader fails on damaged archives in many ways
            raise DataError(
                f"cannot read {p}: not a tensor file written by torch.save, or a damaged one "
                f"({_one_line(e)})"
            ) from None
        raise DataError(f"cannot read {p}: {_one_line(e)}") from None


def _refused_by_safe_loader(p: Path, message: str) -> DataError:
    """torch.load(weights_only=True)'s refusal in one line.

    torch's message runs to many lines and suggests loading with ``weights_only=False``, which
    would run whatever code the file holds; say what the file is and how to save a safe one.
    """
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return DataError(
            f"{p}: not a plain tensor file (it holds pickled Python objects, such as "
            f"{found.group(1)}, which are not loaded for safety); {SAVE_ONE_TENSOR.format(p=p)}"
        )
    detail = re.search(
        r"WeightsUnpickler error:(.*?)(?:Please use|Check the documentation|$)", message, re.DOTALL
    )
    reason = " ".join(_ANSI_ESCAPE.sub("", detail.group(1)).split()) if detail else ""
    return DataError(
        f"{p}: not a plain tensor file, or a corrupt one (the safe loader refused it"
        f"{': ' + reason if reason else ''}); {SAVE_ONE_TENSOR.format(p=p)}"
    )


def _tensor_file_array(p: Path) -> np.ndarray:
    with warnings.catch_warnings():
        # sparse tensors are refused below anyway; their load-time validation warns
        warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
        obj = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise DataError(
            f"{p}: holds a {type(obj).__name__}, not one tensor; {SAVE_ONE_TENSOR.format(p=p)}"
        )
    if obj.layout != torch.strided:
        raise DataError(f"{p}: holds a {obj.layout} tensor; save a dense one (tensor.to_dense())")
    obj = obj.detach()
    if obj.dtype == torch.bfloat16:  # numpy has no bfloat16; every bfloat16 is a float32
        obj = obj.float()
    return obj.numpy()


# numpy dtypes that torch converts and the models can use as they are
_DTYPES = "floats, uint8, int32, int64 or bool"


def _usable_dtype(dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return dtype.itemsize <= 8  # float16/32/64; torch has no long double
    return dtype in (np.uint8, np.int32, np.int64, np.bool_)


def _as_datapoints(a, key: str, p: Path) -> tuple[torch.Tensor, tuple[int, ...]]:
    a = np.asarray(a)
    if not _usable_dtype(a.dtype):
        raise DataError(
            f"{p}: array '{key}' has dtype {a.dtype} ({_dtype_kind(a.dtype)}); expected numbers: "
            f"{_DTYPES}"
        )
    t = torch.as_tensor(a)
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() not in (2, 3):
        raise DataError(
            f"{p}: array '{key}' has shape {tuple(t.shape)}; expected (N, D), (N, H, W) or "
            "(N, 1, H, W)"
        )
    if t.shape[0] == 0:
        need = "; each of train, val and test needs at least one" if key in SPLIT_NAMES else ""
        raise DataError(f"{p}: array '{key}' holds no datapoints (shape {a.shape}){need}")
    image_shape = tuple(t.shape[1:])
    d = math.prod(image_shape)
    if d == 0:
        raise DataError(f"{p}: the datapoints of array '{key}' hold no values (shape {a.shape})")
    t = t.reshape(t.shape[0], d).float()
    if not torch.isfinite(t).all():
        raise DataError(f"{p}: array '{key}' contains NaN or infinite values")
    return t, image_shape


def _as_labels(a: np.ndarray, n: int, p: Path) -> torch.Tensor:
    """Labels beside a single array: one integer (or integral float) per datapoint."""
    if a.dtype.kind not in "iub" and not (a.dtype.kind == "f" and a.dtype.itemsize <= 8):
        raise DataError(
            f"{p}: the labels have dtype {a.dtype} ({_dtype_kind(a.dtype)}); expected integers"
        )
    if a.ndim != 1:
        raise DataError(f"{p}: the labels have shape {a.shape}; expected one per datapoint, ({n},)")
    if a.shape[0] != n:
        raise DataError(f"{p}: {a.shape[0]} labels for {n} datapoints; expected one each")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"{p}: the labels contain NaN or infinite values")
        if not (np.abs(a) < 2**53).all() or not (a == np.round(a)).all():
            raise DataError(
                f"{p}: the labels are floats that are not whole numbers below 2**53; expected "
                "integer labels"
            )
    if a.dtype == np.uint64 and (a > np.iinfo(np.int64).max).any():
        raise DataError(f"{p}: the labels hold integers too large for int64")
    return torch.from_numpy(a.astype(np.int64))


def _dtype_kind(dtype: np.dtype) -> str:
    kinds = {
        "U": "text",
        "S": "bytes",
        "O": "Python objects",
        "V": "structured records",
        "M": "dates",
        "m": "time spans",
        "c": "complex numbers",
        "f": "extended-precision floats",
    }
    return kinds.get(dtype.kind, "integers of an unsupported width")
