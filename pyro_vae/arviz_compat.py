"""Every ArviZ call of pyro_vae, in one place.

Python 3.11 gets ArviZ 0.2x, the API this module serves; ArviZ 1.x (Python >= 3.12) moved PSIS
into ``arviz_stats`` and InferenceData onto xarray's DataTree. Until 1.x is served here (untested:
these machines run Python 3.11), pyproject.toml pins ``arviz<1``; serving it means changing this
module only. ArviZ 0.2x emits a FutureWarning about its refactor at the first import of each
day; it is ignored here, narrowly, so that warnings-as-errors runs do not fail on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
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
    weight, fails. ArviZ's own loop over rows: the library computes the same numbers batched
    (:func:`pyro_vae.infer.psis.pareto_khat`); this is its oracle.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.shape[-1] < PSIS_MIN_SAMPLES:
        return np.full(lw.shape[:-1], np.nan)
    flat = np.ptp(lw, axis=-1) < 1e-8
    return np.where(flat, 0.0, arviz_khat(lw))


def arviz_khat(log_weights: np.ndarray) -> np.ndarray:
    """ArviZ's ``psislw`` k-hat of each row of ``log_weights`` (N, K) as it reports it (inf for a
    row of equal weights)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        _, khat = _arviz().psislw(np.asarray(log_weights, dtype=np.float64))
    return np.asarray(khat, dtype=np.float64).reshape(np.shape(log_weights)[:-1])


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
    """Write ``idata`` as netCDF to ``path``.

    HDF5 (under h5netcdf) fails badly on a full disk: tracebacks from its handles' finalisers
    and, at exit, a segmentation fault. So the file is written to a scratch directory in memory
    (``/dev/shm`` where there is one, else the system's temporary directory), after checking
    that it has room for it, and its bytes are then copied to ``path`` by plain writes, which
    fail with an ordinary OSError (ENOSPC) when ``path``'s disk is full.
    """
    scratch_root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    need = 2 * _nbytes(idata) + (1 << 20)
    free = shutil.disk_usage(scratch_root).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)} (the netCDF file is staged in {scratch_root}, which "
            f"has {free} bytes free of the {need} it needs)",
            scratch_root,
        )
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix="pyro-vae-") as folder:
        staged = os.path.join(folder, "staged.nc")
        idata.to_netcdf(staged)
        with open(staged, "rb") as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)


def _nbytes(idata) -> int:
    """The bytes of ``idata``'s arrays, over every group."""
    return sum(int(getattr(idata, group).nbytes) for group in idata.groups())


def load_netcdf(path):
    return _arviz().from_netcdf(str(path))


def plot_khat(khat: np.ndarray, ax) -> None:
    with warnings.catch_warnings():
        # 0.2x deprecates arrays here in favour of ELPDData; our k-hats are not from an elpd
        warnings.filterwarnings("ignore", message="support for arrays", category=FutureWarning)
        # ArviZ 0.23's plotting code uses a matplotlib API deprecated in matplotlib 3.11
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        _arviz().plot_khat(khat, ax=ax, show_hlines=True, markersize=8)


def predictive_inference_data(
    group: str,
    replicated: dict[str, np.ndarray],
    observed: dict[str, np.ndarray],
    log_likelihood: dict[str, np.ndarray] | None,
    attrs: dict[str, Any],
):
    """An InferenceData of a predictive check, in the groups ArviZ's ``plot_ppc`` and
    ``plot_bpv`` read: ``prior_predictive`` or ``posterior_predictive`` (``group``) with each
    statistic of the replicates ``(S, N)`` as one chain of S draws over ``datapoint``;
    ``observed_data`` with the observed images' statistics ``(N,)``; and, when given,
    ``log_likelihood`` with log p(x_n | z_sn) of the observed images ``(S, N)``."""
    if group not in ("prior", "posterior"):
        raise ValueError(f"group must be prior or posterior, got {group!r}")
    dims = {k: ["datapoint"] for k in (*replicated, *observed, *(log_likelihood or {}))}
    chain = {k: _numbers(v)[None] for k, v in replicated.items()}
    kwargs = {f"{group}_predictive": chain}
    if log_likelihood is not None:
        kwargs["log_likelihood"] = {k: _numbers(v)[None] for k, v in log_likelihood.items()}
    return _arviz().from_dict(
        observed_data={k: _numbers(v) for k, v in observed.items()},
        dims=dims,
        attrs={k: _attr(v) for k, v in attrs.items()},
        **kwargs,
    )


def _numbers(values) -> np.ndarray:
    """Integers as int64 (ArviZ smooths discrete values in its u-value plots), else float64."""
    values = np.asarray(values)
    return values.astype(np.int64 if values.dtype.kind in "iub" else np.float64)


@contextlib.contextmanager
def _quiet_plotting():
    """Without the warnings of ArviZ 0.23's plotting that say nothing about our data (a
    matplotlib API deprecated in 3.11, its own refactor's FutureWarnings)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        # a panel of identical values (every u-value 0 when no replicate reaches the data) has
        # no density to draw; the panel stays empty and the p-value says why
        warnings.filterwarnings("ignore", message="Your data appears to have a single value")
        yield


def plot_ppc(idata, group: str, names: list[str], axes, num_pp_samples: int = 50) -> None:
    """ArviZ's ``plot_ppc`` of the statistics ``names``: the distribution over images of the
    observed statistic against that of ``num_pp_samples`` replicated datasets (all of them when
    there are fewer)."""
    group_data = getattr(idata, f"{group}_predictive")
    num_pp_samples = min(num_pp_samples, group_data.sizes["chain"] * group_data.sizes["draw"])
    with _quiet_plotting():
        _arviz().plot_ppc(
            idata,
            group=group,
            var_names=names,
            ax=np.asarray(axes),
            num_pp_samples=num_pp_samples,
            random_seed=0,
            legend=True,
        )


def plot_bpv(idata, group: str, names: list[str], axes, kind: str) -> None:
    """ArviZ's ``plot_bpv``: ``kind="u_value"``, the per-image p-values against uniform;
    ``kind="t_stat"``, the replicated datasets' mean statistic with the observed one and its
    Bayesian p-value."""
    with _quiet_plotting():
        extra = {"t_stat": "mean"} if kind == "t_stat" else {}
        _arviz().plot_bpv(
            idata, kind=kind, group=group, var_names=names, ax=np.asarray(axes), **extra
        )


def rank_ecdf_band(
    num_simulations: int, num_draws: int, prob: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ArviZ's simultaneous ``prob`` confidence band for the ECDF of ``num_simulations`` SBC
    fractional ranks (``(r + 1) / (L + 1)``) under uniformity (Säilynoja, Bürkner & Vehtari
    2022, the band of ``plot_ecdf(confidence_bands="optimized")``), at the L + 1 rank values:
    ``(points, lower, upper)``, the band's limits as differences from the uniform CDF. One band
    serves every coordinate of one SBC run (it depends on M and L only)."""
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    _arviz()  # imported once, with its refactor's warning ignored
    points = np.arange(1, num_draws + 2) / (num_draws + 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        lower, upper = ecdf_confidence_band(
            num_simulations, points, points, prob=prob, method="optimized"
        )
    return points, np.asarray(lower) - points, np.asarray(upper) - points
