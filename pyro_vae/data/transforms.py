"""What turns stored data into the values a likelihood scores: binarisation and dequantisation.

Binarisation reads [0, 1] values as probabilities of a 1. ``static``: one fixed, seeded draw.
``dynamic``: training data are drawn afresh at every visit (on the training device, see
:func:`minibatch_transform`); validation and test data get one fixed, seeded draw so that numbers
are comparable across runs and epochs. ``none``: the data as they are.

Dequantisation (``uniform``) maps a quantised value x = k / (L - 1) to (k + u) / L with
u ~ U(0, 1): continuous and strictly inside (0, 1). A density p on the dequantised data bounds the
probability of the levels: log P(k) >= E_u[log p((k + u) / L)] - D log L (Theis et al. 2016), so
log-likelihoods in nats and bits/dim are comparable with discrete models. Training data get fresh
noise at every visit; validation and test data one fixed, seeded draw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.errors import DataError

BINARIZE_MODES = ("dynamic", "static", "none")
DEQUANTIZE_MODES = ("uniform", "none")
_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per value, from a generator seeded with ``seed`` (device-independent)."""
    check_probabilities(x)
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def dequantize(x: torch.Tensor, levels: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """(k + u) / levels for x = k / (levels - 1); ``noise`` u ~ U(0, 1) drawn if not given."""
    k = torch.round(x * (levels - 1))
    u = torch.rand_like(x) if noise is None else noise
    return (k + u) / levels


def check_probabilities(x: torch.Tensor, what: str = "data") -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"binarisation reads values as probabilities, but {what} lie in [{lo:.3g}, {hi:.3g}]; "
            "for pixels, rescale them to [0, 1] (divide 8-bit pixels by 255, or store them as "
            "uint8); for real-valued data, score them as they are ({data.binarize} none) with a "
            "likelihood for real values ({model.likelihood} gaussian-learned, gaussian or "
            "laplace)"
        )


def check_modes(binarize_mode: str, dequantize_mode: str, levels: int | None) -> None:
    if binarize_mode not in BINARIZE_MODES:
        raise DataError(f"unknown binarisation '{binarize_mode}'; choose one of {BINARIZE_MODES}")
    if dequantize_mode not in DEQUANTIZE_MODES:
        raise DataError(f"unknown dequantisation '{dequantize_mode}'; choose {DEQUANTIZE_MODES}")
    if dequantize_mode != "none" and binarize_mode != "none":
        raise DataError("choose binarisation or dequantisation, not both ({data.binarize} none)")
    if dequantize_mode != "none" and levels is None:
        raise DataError(
            "{data.dequantize} needs quantised data (a named image data set, or a uint8 array); "
            "these data are continuous already: score them as they are ({data.dequantize} none, "
            "{data.binarize} none)"
        )


def prepare_split(
    x: torch.Tensor,
    split: str,
    binarize_mode: str,
    seed: int,
    dequantize_mode: str = "none",
    levels: int | None = None,
    *,
    fixed: bool = False,
) -> torch.Tensor:
    """The split as the likelihood will score it.

    The training split of ``dynamic`` binarisation or ``uniform`` dequantisation stays as stored
    for training: :func:`minibatch_transform` transforms each minibatch afresh. With ``fixed``
    (to evaluate it) it gets one seeded draw, like the validation and test splits.
    """
    check_modes(binarize_mode, dequantize_mode, levels)
    split_seed = seed * 1000 + _SPLIT_OFFSETS.get(split, 3)
    fresh = split == "train" and not fixed
    if dequantize_mode == "uniform":
        if fresh:
            return x
        g = torch.Generator().manual_seed(split_seed)
        return dequantize(x, levels, torch.rand(x.shape, generator=g).to(x.device))
    if binarize_mode == "none":
        return x
    if binarize_mode == "dynamic" and fresh:
        check_probabilities(x, "training data")
        return x
    return binarize(x, split_seed)


def minibatch_transform(
    binarize_mode: str, dequantize_mode: str = "none", levels: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-minibatch transform of training data (run on the training device), if any."""
    check_modes(binarize_mode, dequantize_mode, levels)
    if binarize_mode == "dynamic":
        return torch.bernoulli
    if dequantize_mode == "uniform":
        return lambda x: dequantize(x, levels)
    return None


def check_density_data(
    likelihood: str,
    discrete: bool,
    dataset: str,
    binarize_mode: str,
    dequantize_mode: str,
    levels: int | None,
) -> None:
    """Raise :class:`~pyro_vae.errors.DataError` when a density (a likelihood that is not
    ``discrete``) would score discrete values: binarised data, or quantised levels that are
    not dequantised. The fix depends on the data: continuous data (``levels`` None) are to be
    scored as they are, not binarised; quantised data dequantised (or scored by a discrete
    likelihood)."""
    if discrete or not is_quantised(binarize_mode, dequantize_mode, levels):
        return
    if binarize_mode != "none" and levels is None:
        kind = "binarised"
        fix = (
            "These data are continuous, so score them as they are: {data.binarize} none (no "
            "dequantisation: that is for quantised data)"
        )
    elif binarize_mode != "none":
        kind = "binarised"
        fix = (
            "Score the levels dequantised, {data.dequantize} uniform with {data.binarize} none; "
            "or use a discrete likelihood ({model.likelihood} bernoulli with {data.binarize}, "
            "or discretized-logistic)"
        )
    else:
        kind = f"quantised ({levels} levels)"
        fix = (
            "Dequantise them, {data.dequantize} uniform; or use a discrete likelihood "
            "({model.likelihood} discretized-logistic)"
        )
    raise DataError(
        f"the {likelihood} likelihood is a density, and {dataset} data are {kind}: a density "
        f"of discrete values is no valid log-likelihood. {fix}"
    )


def is_quantised(binarize_mode: str, dequantize_mode: str, levels: int | None) -> bool:
    """Whether the values scored are discrete (binarised, or quantised and not dequantised)."""
    return binarize_mode != "none" or (levels is not None and dequantize_mode == "none")
