"""Every ArviZ call of pyro_vae, in one place.

Python 3.11 gets ArviZ 0.2x, the API this module serves; ArviZ 1.x (Python >= 3.12) moved PSIS
into ``arviz_stats`` and InferenceData onto xarray's DataTree. Until 1.x is served here (untested:
these machines run Python 3.11), pyproject.toml pins ``arviz<1``; serving it means changing this
module only. ArviZ 0.2x emits a FutureWarning about its refactor at the first import of each
day; it is ignored here, narrowly, so that warnings-as-errors runs do not fail on it.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np

KHAT_THRESHOLD = 0.7  # Vehtari et al. (2024): above it the importance estimate is unreliable
# PSIS fits its Pareto tail to the largest ceil(min(K / 5, 3 sqrt(K))) weights and needs more than
# 4 of them (ArviZ reports inf below that): the smallest K with a k-hat.
PSIS_MIN_SAMPLES = 21


@cache
def _arviz():
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
        )
        import arviz

    return arviz


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat of each row's importance weights; ``log_weights`` is (N, K), returns (N,).

    Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao & Gabry 2024) fits a
    generalised Pareto to the largest weights: k-hat < 0.5 good, 0.5-0.7 fine for moderate
    accuracy, > 0.7 the estimate (and its standard error) cannot be trusted. A row whose weights
    are all equal (the guide is the exact posterior) has no tail to fit; its k-hat is set to 0,
    where ArviZ would report inf. With fewer than :data:`PSIS_MIN_SAMPLES` weights per row there
    is no tail to fit: every k-hat is NaN (undefined), where ArviZ reports inf or, for one
    weight, fails.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.shape[-1] < PSIS_MIN_SAMPLES:
        return np.full(lw.shape[:-1], np.nan)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        _, khat = _arviz().psislw(lw)
    khat = np.asarray(khat, dtype=np.float64)
    flat = np.ptp(lw, axis=-1) < 1e-8
    return np.where(flat, 0.0, khat)


def to_inference_data(
    per_datapoint: dict[str, np.ndarray], stats: dict[str, np.ndarray], attrs: dict[str, Any]
):
    """An InferenceData with per-datapoint estimates in ``log_likelihood`` and diagnostics in
    ``sample_stats`` (one chain, one draw, dimension ``datapoint``)."""

    def shaped(d):
        return {k: np.asarray(v, dtype=np.float64)[None, None, :] for k, v in d.items()}

    dims = {k: ["datapoint"] for k in (*per_datapoint, *stats)}
    return _arviz().from_dict(
        log_likelihood=shaped(per_datapoint),
        sample_stats=shaped(stats),
        dims=dims,
        attrs={k: _attr(v) for k, v in attrs.items()},
    )


def _attr(value):
    return "none" if value is None else value


def save_netcdf(idata, path) -> None:
    idata.to_netcdf(str(path))


def load_netcdf(path):
    return _arviz().from_netcdf(str(path))


def plot_khat(khat: np.ndarray, ax) -> None:
    with warnings.catch_warnings():
        # 0.2x deprecates arrays here in favour of ELPDData; our k-hats are not from an elpd
        warnings.filterwarnings("ignore", message="support for arrays", category=FutureWarning)
        # ArviZ 0.23's plotting code uses a matplotlib API deprecated in matplotlib 3.11
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        _arviz().plot_khat(khat, ax=ax, show_hlines=True, markersize=8)
