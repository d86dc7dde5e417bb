"""Binarisation of [0, 1] data: each value is read as the probability of a 1.

``static``: one fixed draw (seeded), the same in every run. ``dynamic``: training data are drawn
afresh at every visit (on the training device, see :class:`~pyro_vae.infer.Trainer`); validation
and test data get one fixed, seeded draw so numbers are comparable across runs and epochs.
``none``: the data are used as they are.
"""

from __future__ import annotations

import torch

from pyro_vae.errors import DataError

MODES = ("dynamic", "static", "none")
_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per value, from a generator seeded with ``seed`` (device-independent)."""
    check_probabilities(x)
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def check_probabilities(x: torch.Tensor, what: str = "data") -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"binarisation reads values as probabilities, but {what} lie in [{lo:.3g}, {hi:.3g}]; "
            "rescale them to [0, 1] or use --binarize none"
        )


def prepare_split(x: torch.Tensor, split: str, mode: str, seed: int) -> torch.Tensor:
    """The split as the likelihood will score it.

    For ``dynamic`` mode the training split stays as probabilities (binarised per minibatch).
    """
    if mode not in MODES:
        raise DataError(f"unknown binarisation '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "none":
        return x
    if mode == "dynamic" and split == "train":
        check_probabilities(x, "training data")
        return x
    return binarize(x, seed * 1000 + _SPLIT_OFFSETS.get(split, 3))
