"""Workflow checks of a run: prior and posterior predictive checks on held-out data, and
simulation-based calibration of its amortised posterior q(z|x); kept in ``RUN_DIR/checks/``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae import arviz_compat
from pyro_vae.build import load_data, prepare_splits
from pyro_vae.data.datasets import SPLIT_NAMES
from pyro_vae.errors import ConfigError
from pyro_vae.infer.predictive import (
    BLOCK_ELEMENTS,
    KINDS,
    LOG_LIK,
    MAX_FEATURES,
    ON_THRESHOLD,
    is_image,
    predictive_check,
    statistics_for,
    u_tail_share,
)
from pyro_vae.infer.sbc import (
    LEVELS,
    chi2_uniformity,
    coverage,
    fractional_ranks,
    nominal_coverage,
    simulation_based_calibration,
    verdicts,
)
from pyro_vae.jobs.evaluation import run_fields
from pyro_vae.jobs.loading import load_run
from pyro_vae.memory import free_memory_bytes
from pyro_vae.runs import RunDir
from pyro_vae.text import plural

ALPHA = 0.01  # a p-value outside [ALPHA / 2, 1 - ALPHA / 2] is called extreme
U_TAILS = 0.025  # per-image u-values below this or above 1 - this are counted as extreme
MAX_PANELS = 8  # statistics drawn in the checks figure (those with the most extreme p-values)


def predictive(
    run_dir: str | Path,
    *,
    kind: str = "posterior",
    num_datapoints: int = 1000,
    num_draws: int = 100,
    split: str = "test",
    device: str = "auto",
    progress: bool | str = False,
) -> dict[str, Any]:
    """The prior or posterior predictive check of a run on the first ``num_datapoints`` images
    (or datapoints) of ``split`` (prepared as the evaluation prepares them), ``num_draws``
    replicates of each (:func:`pyro_vae.infer.predictive.predictive_check`), with the
    statistics that suit the data (:func:`~pyro_vae.infer.predictive.statistics_for`): image
    statistics for images, per-feature ones for tabular data; the summary's ``data_kind`` and
    ``statistics_used`` say which.

    Kept as ``checks/predictive-KIND.json`` (the summary: each statistic's observed and
    replicated means, its Bayesian p-value, the share of images with an extreme u-value, and
    the statistics whose p-value is extreme), ``.nc`` (an InferenceData with the
    ``KIND_predictive``, ``observed_data`` and, for the posterior, ``log_likelihood`` groups)
    and figures: ArviZ's ``plot_ppc`` and ``plot_bpv`` (``-checks.png``, at most
    :data:`MAX_PANELS` statistics), the histogram of the values (``-pixels.png``) and, for
    images, replicates beside their images (``-replicates.png``).
    """
    check_predictive_settings(kind, num_datapoints, num_draws)
    check_split(split)
    config, vae, meta = load_run(run_dir, device)
    run = RunDir(run_dir)
    run.check_writable()
    data = prepare_splits(config, load_data(config), vae.likelihood, (split,), fixed=True)
    device_of = next(vae.parameters()).device
    x = data[split][:num_datapoints]
    shape = meta.get("image_shape")
    shape = None if shape is None else tuple(shape)
    statistics = statistics_for(x, shape)
    num_statistics = len(statistics) + (2 if kind == "posterior" else 0)  # log_lik: obs and rep
    check_predictive_memory(x.shape[0], num_draws, x.shape[1], num_statistics, device_of)
    x = x.to(device_of)
    pyro.set_rng_seed(config.train.seed)
    start = time.perf_counter()
    check = predictive_check(
        vae.model,
        vae.guide,
        x,
        kind=kind,
        num_draws=num_draws,
        statistics=statistics,
        image_shape=shape,
        max_plate_nesting=1,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    extreme = check.extreme(ALPHA)
    statistics = {}
    for name in check.names:
        rep_means = check.replicated[name].double().mean(1)
        u = check.u_values(name)
        statistics[name] = {
            "description": check.descriptions[name],
            "observed_mean": check.observed[name].double().mean().item(),
            "replicated_mean": rep_means.mean().item(),
            "replicated_sd": rep_means.std().item(),
            "p_value": check.p_value(name),
            "extreme": name in extreme,
            "u_extreme_share": ((u < U_TAILS) | (u > 1 - U_TAILS)).double().mean().item(),
        }
    summary: dict[str, Any] = {
        "kind": kind,
        "split": split,
        "data_kind": "images" if is_image(shape) else "tabular",
        "statistics_used": _statistics_used(shape, x.shape[1]),
        "num_datapoints": check.num_datapoints,
        "num_draws": check.num_draws,
        "alpha": ALPHA,
        # the share of images outside the u-value tails when the model is correct, for this S
        "u_extreme_expected": u_tail_share(check.num_draws, U_TAILS),
        "statistics": statistics,
        "extreme": sorted(extreme),
        **run_fields(config, meta),
        "seconds": seconds,
    }
    idata = arviz_compat.predictive_inference_data(
        kind,
        {n: _stored(check.replicated[n], n in check.discrete) for n in check.names},
        {n: _stored(check.observed_per_image(n), n in check.discrete) for n in check.names},
        {LOG_LIK: check.observed[LOG_LIK].numpy()} if LOG_LIK in check.observed else None,
        {"kind": kind, "split": split, "num_draws": num_draws},
    )
    figures = _predictive_figures(check, idata, x, shape)
    name = f"predictive-{kind}"
    paths = run.write_check(name, summary, (".nc", _netcdf_writer(idata)), figures)
    summary["paths"] = [str(p) for p in paths]
    return summary


def _statistics_used(shape: tuple[int, ...] | None, data_dim: int) -> str:
    """Which statistics :func:`predictive` chose for data of ``shape``, in words."""
    if is_image(shape):
        size = "x".join(map(str, shape))
        return (
            f"statistics for {size} images: mean intensity, pixels above {ON_THRESHOLD}, total "
            "variation between neighbouring pixels"
        )
    shown = min(data_dim, MAX_FEATURES)
    which = (
        f"each of its {data_dim} features"
        if shown == data_dim
        else (f"its first {shown} of {data_dim} features")
    )
    return (
        f"statistics for tabular data (not images): for {which}, its value (value_j, whose "
        "mean is the feature's mean) and its squared deviation from the observed mean "
        "(sqdev_j, whose mean is the feature's variance)"
    )


def _stored(values: torch.Tensor, discrete: bool) -> np.ndarray:
    return values.numpy().astype(np.int64 if discrete else np.float64)


def _predictive_figures(check, idata, x, shape) -> dict[str, Any]:
    from pyro_vae import plots

    p_values = {n: check.p_value(n) for n in check.names}
    names, note = list(check.names), ""
    if len(names) > MAX_PANELS:  # the most extreme p-values, in their order
        ranked = sorted(names, key=lambda n: (n != LOG_LIK, -abs(p_values[n] - 0.5)))
        shown = set(ranked[:MAX_PANELS])
        names = [n for n in names if n in shown]
        first = f"{LOG_LIK} and " if LOG_LIK in names else ""
        note = f" ({len(names)} of {len(check.names)} statistics: {first}the most extreme p-values)"
    unit = "image" if is_image(shape) else "datapoint"
    paired = {}
    if LOG_LIK in check.observed:
        paired[LOG_LIK] = (
            check.replicated[LOG_LIK].mean(1).numpy(),
            check.observed[LOG_LIK].mean(1).numpy(),
            check.u_values(LOG_LIK).numpy(),
        )
    own = {}
    if check.num_datapoints < 2:  # ArviZ cannot smooth one image's integer statistics
        for name in (n for n in names if n not in paired):
            observed = check.observed_per_image(name).double().mean().item()
            own[name] = (
                check.replicated[name].double().mean(1).numpy(),
                np.full(check.num_draws, observed),
                check.u_values(name).numpy(),
            )
    figures = {
        "checks": plots.predictive_checks(
            idata, check.kind, names, p_values, paired, own, note, unit
        ),
        "pixels": plots.pixel_values(
            check.pixel_edges.numpy(),
            check.observed_pixels.numpy(),
            check.replicated_pixels.numpy(),
            check.kind,
            "pixel" if is_image(shape) else "feature",
        ),
    }
    if shape is not None and len(shape) == 2:
        shown = check.examples.shape[0]
        figures["replicates"] = plots.replicates(x[:shown].cpu(), check.examples, shape, check.kind)
    return figures


def format_predictive(s: dict[str, Any]) -> str:
    """A short summary of :func:`predictive`'s result."""
    noun = "image" if s.get("data_kind", "images") == "images" else "datapoint"
    lines = [
        f"{s['kind']} predictive check on {plural(s['num_datapoints'], s['split'] + ' ' + noun)}, "
        f"{plural(s['num_draws'], 'replicate')} of each ({s['seconds']:.1f} s):",
        *(f"  {line}" for line in _wrapped(s.get("statistics_used"))),
        f"  {'statistic':<16} {'observed':>10} {'replicated (sd)':>20} {'p':>6}  {'extreme u':>9}",
    ]
    for name, st in s["statistics"].items():
        rep = f"{st['replicated_mean']:.4g} ({st['replicated_sd']:.2g})"
        mark = "  <- extreme" if st["extreme"] else ""
        lines.append(
            f"  {name:<16} {st['observed_mean']:>10.4g} {rep:>20} {st['p_value']:>6.3f}  "
            f"{100 * st['u_extreme_share']:>8.1f}%{mark}"
        )
    lo, hi = s["alpha"] / 2, 1 - s["alpha"] / 2
    if s["extreme"]:
        named = ", ".join(f"{n} (p={s['statistics'][n]['p_value']:.3f})" for n in s["extreme"])
        lines.append(f"  extreme p-values (outside [{lo:g}, {hi:g}]): {named}")
    else:
        lines.append(f"  no extreme p-values: every p lies in [{lo:g}, {hi:g}]")
    lines.append("  (p: the share of replicated data sets whose mean is at most the observed mean;")
    lines.append(
        f"   extreme u: {noun}s outside the middle {100 - 200 * U_TAILS:g}% of their own "
        f"replicates, {100 * s['u_extreme_expected']:.1f}% for a correct model with "
        f"{s['num_draws']} replicates)"
    )
    return "\n".join(lines)


def sbc(
    run_dir: str | Path,
    *,
    num_simulations: int = 1000,
    num_draws: int = 99,
    num_proposals: int = 1000,
    device: str = "auto",
    progress: bool | str = False,
) -> dict[str, Any]:
    """Simulation-based calibration of a run's q(z|x) on ``num_simulations`` pairs simulated from
    its model (:func:`pyro_vae.infer.sbc.simulation_based_calibration`): the rank of each latent
    coordinate among ``num_draws`` draws of q, and, with ``num_proposals`` > 0, among as many
    draws resampled by importance weight from ``num_proposals`` draws of q.

    Kept as ``checks/sbc.json`` (per coordinate: coverage of q's central 50% and 90% intervals,
    the chi-square p-value of uniform ranks and a verdict; the coordinates q is over- or
    under-confident in), ``checks/sbc.npz`` (the ranks and effective sample sizes) and
    ``checks/sbc-ecdf.png`` (the ECDF difference with ArviZ's simultaneous band).
    """
    check_sbc_settings(num_simulations, num_draws, num_proposals)
    config, vae, meta = load_run(run_dir, device)
    _check_sbc_memory(config, meta, num_simulations, num_draws, num_proposals, vae)
    run = RunDir(run_dir)
    run.check_writable()
    param = next(vae.parameters())
    x_like = torch.zeros(num_simulations, meta["data_dim"], dtype=param.dtype, device=param.device)
    pyro.set_rng_seed(config.train.seed)
    start = time.perf_counter()
    result = simulation_based_calibration(
        vae.model,
        vae.guide,
        x_like,
        num_draws=num_draws,
        num_proposals=num_proposals,
        max_plate_nesting=1,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    proposals = {"q": result.ranks}
    if result.resampled_ranks is not None:
        proposals["resampled"] = result.resampled_ranks
    calibration = {label: _calibration(ranks, num_draws) for label, ranks in proposals.items()}
    summary: dict[str, Any] = {
        "num_simulations": result.num_simulations,
        "num_draws": num_draws,
        "num_proposals": num_proposals,
        "coordinates": list(result.names),
        "calibration": calibration,
        "ess_mean": None if result.ess is None else result.ess.mean().item(),
        "ess_median": None if result.ess is None else result.ess.median().item(),
        **run_fields(config, meta),
        "seconds": seconds,
    }
    from pyro_vae import plots

    labels = {"q": "q(z|x)", "resampled": f"resampled (K={num_proposals})"}
    figure = plots.sbc_ecdf(
        {labels[k]: fractional_ranks(v, num_draws).numpy() for k, v in proposals.items()},
        num_draws,
        list(result.names),
        calibration["q"]["verdict"],
    )
    arrays = {f"ranks_{k}": v.numpy() for k, v in proposals.items()}
    if result.ess is not None:
        arrays["ess"] = result.ess.numpy()
    data = (".npz", lambda p, check_id: _save_npz(p, {**arrays, "check_id": np.array(check_id)}))
    paths = run.write_check("sbc", summary, data, {"ecdf": figure})
    summary["paths"] = [str(p) for p in paths]
    return summary


def _netcdf_writer(idata):
    def write(path: str, check_id: str) -> None:
        idata.attrs["check_id"] = check_id
        arviz_compat.save_netcdf(idata, path)

    return write


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _calibration(ranks: torch.Tensor, num_draws: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"coverage_{round(100 * level)}": coverage(ranks, num_draws, level).tolist()
        for level in LEVELS
    }
    out["coverage_nominal"] = {
        str(round(100 * level)): nominal_coverage(num_draws, level) for level in LEVELS
    }
    out["chi2_p"] = chi2_uniformity(ranks, num_draws).tolist()
    out["verdict"] = verdicts(ranks, num_draws)
    return out


def format_sbc(s: dict[str, Any]) -> str:
    """A short summary of :func:`sbc`'s result."""
    cal = s["calibration"]
    resampled = cal.get("resampled")
    # columns as wide as their longest entry (a verdict can join several: "biased, wide")
    wn = max([len("coordinate"), *map(len, s["coordinates"])])
    wv = max([len("verdict"), *map(len, cal["q"]["verdict"])])
    head = (
        f"  {'coordinate':<{wn}} {'cover 50%':>9} {'cover 90%':>9} {'chi2 p':>7}  {'verdict':<{wv}}"
    )
    if resampled:
        head += f" | resampled: {'cover 90%':>9} {'verdict'}"
    lines = [
        f"SBC of q(z|x) on {plural(s['num_simulations'], 'simulation')} from the model, ranks "
        f"among {plural(s['num_draws'], 'draw')} ({s['seconds']:.1f} s):",
        head,
    ]
    for j, name in enumerate(s["coordinates"]):
        q = cal["q"]
        line = (
            f"  {name:<{wn}} {q['coverage_50'][j]:>9.3f} {q['coverage_90'][j]:>9.3f} "
            f"{q['chi2_p'][j]:>7.3f}  {q['verdict'][j]:<{wv}}"
        )
        if resampled:
            line += f" |            {resampled['coverage_90'][j]:>9.3f} {resampled['verdict'][j]}"
        lines.append(line.rstrip())
    lines.append("  q(z|x): " + _verdict_line(cal["q"]["verdict"], s["coordinates"]))
    if resampled:
        lines.append(
            f"  resampled from K={s['num_proposals']} (median ESS {s['ess_median']:.1f}): "
            + _verdict_line(resampled["verdict"], s["coordinates"])
        )
    return "\n".join(lines)


def _wrapped(text: str | None, width: int = 96) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) if text else []


def _verdict_line(verdict: list[str], names: list[str]) -> str:
    bad = {}
    for name, v in zip(names, verdict, strict=True):
        if v != "calibrated":
            bad.setdefault(v, []).append(name)
    if not bad:
        return f"calibrated in all {len(names)} coordinates"
    return "; ".join(f"{v} in {', '.join(ns)}" for v, ns in bad.items())


# Ceilings of the checks' sizes, whatever the memory: far above any useful check, and below the
# sizes that overflow the indexing of PyTorch and Pyro (2**31 and beyond) or take days.
MAX_DATAPOINTS = 10_000_000  # images of a split checked (a split holds fewer than this)
MAX_DRAWS = 1_000_000  # replicates of each image; draws of q per SBC simulation
MAX_SIMULATIONS = 10_000_000  # SBC's simulations
MAX_PROPOSALS = 2**24  # SBC's draws of q resampled: torch.multinomial takes at most 2**24
# Bytes a predictive check keeps per replicated value of each statistic (float32 or int64 while
# computed, a float64 or int64 copy for the InferenceData, the p- and u-values' temporaries),
# and per value of a block of replicates (the decoder's output, the distribution's parameters,
# the draws and their log-densities)
BYTES_PER_STATISTIC_VALUE = 32
BYTES_PER_BLOCK_VALUE = 32


def check_split(split: str) -> None:
    """Raise :class:`ConfigError` unless ``split`` names a split (train, val or test), whichever
    checks are run."""
    if split not in SPLIT_NAMES:
        raise ConfigError(
            f"must be {', '.join(SPLIT_NAMES[:-1])} or {SPLIT_NAMES[-1]}, got {split!r}",
            option="args.split",
        )


def check_predictive_settings(kind: str, num_datapoints: int, num_draws: int) -> None:
    """Raise :class:`ConfigError` for settings :func:`predictive` refuses (before any work):
    an unknown kind, and sizes outside their ranges (:data:`MAX_DATAPOINTS`,
    :data:`MAX_DRAWS`). Whether the check fits in memory is known once its data are
    (:func:`check_predictive_memory`)."""
    if kind not in KINDS:
        raise ConfigError(f"must be prior or posterior, got {kind!r}", option="args.predictive")
    _within(num_datapoints, 1, MAX_DATAPOINTS, "args.num_datapoints")
    _within(num_draws, 2, MAX_DRAWS, "args.num_draws")


def check_sbc_settings(num_simulations: int, num_draws: int, num_proposals: int) -> None:
    """Raise :class:`ConfigError` for settings :func:`sbc` refuses (before any work): sizes
    outside their ranges. Whether SBC fits in memory depends on the run
    (:func:`check_sbc_memory`)."""
    _within(num_simulations, 20, MAX_SIMULATIONS, "args.num_simulations")
    # 19 draws are the fewest whose 20 rank values resolve a central 90% interval
    _within(num_draws, 19, MAX_DRAWS, "args.sbc_draws")
    _within(num_proposals, 0, MAX_PROPOSALS, "args.sbc_proposals")


def predictive_memory(
    num_datapoints: int, num_draws: int, data_dim: int, num_statistics: int
) -> tuple[int, int]:
    """Bytes a predictive check needs: for the statistics it keeps (``num_draws x
    num_datapoints`` values of each) and for one block of replicates (at least one image's
    ``num_draws x data_dim`` values, see :data:`~pyro_vae.infer.predictive.BLOCK_ELEMENTS`)."""
    kept = BYTES_PER_STATISTIC_VALUE * num_statistics * num_draws * num_datapoints
    block = BYTES_PER_BLOCK_VALUE * max(BLOCK_ELEMENTS, num_draws * data_dim)
    return kept, block


def check_predictive_memory(
    num_datapoints: int, num_draws: int, data_dim: int, num_statistics: int, device
) -> None:
    """Raise :class:`ConfigError` when a predictive check's statistics and a block of its
    replicates (:func:`predictive_memory`) would not fit in free memory (the block on
    ``device``)."""
    kept, block = predictive_memory(num_datapoints, num_draws, data_dim, num_statistics)
    what = (
        f"a predictive check with {plural(num_draws, 'replicate')} of each of "
        f"{plural(num_datapoints, 'datapoint')} ({num_statistics} statistics, {data_dim} values "
        "a datapoint) needs"
    )
    _check_fits(what, kept, block, device, "{args.num_draws} or {args.num_datapoints}")


def sbc_memory(
    num_simulations: int,
    num_draws: int,
    num_proposals: int,
    data_dim: int,
    latent_dim: int,
    hidden: int,
) -> tuple[int, int]:
    """Bytes SBC needs: for what it keeps of every simulation (its data twice, the ranks among q
    and among the resampled draws) and for one block of simulations (at least one simulation's
    ``max(num_draws, num_proposals)`` draws of the latents, decoded through ``hidden`` units
    into ``data_dim`` values)."""
    kept = num_simulations * (2 * 4 * data_dim + 2 * 8 * latent_dim + 8)
    draws = max(num_draws, num_proposals)
    rows = max(1, BLOCK_ELEMENTS // (draws * data_dim))
    block = 3 * 4 * min(rows, num_simulations) * draws * (data_dim + hidden + 4 * latent_dim)
    return kept, block


def check_sbc_memory(
    run_dir: str | Path,
    num_simulations: int,
    num_draws: int,
    num_proposals: int,
    device: str = "auto",
) -> None:
    """Raise :class:`ConfigError` when SBC of the run with these settings (:func:`sbc_memory`)
    would not fit in free memory (its blocks on the run's device): before any check runs."""
    config, vae, meta = load_run(run_dir, device)
    _check_sbc_memory(config, meta, num_simulations, num_draws, num_proposals, vae)


def _check_sbc_memory(config, meta, num_simulations, num_draws, num_proposals, vae) -> None:
    model = config.model
    latent_dim = model.latent_dim + (model.top_latent_dim or 0)
    hidden = sum(model.hidden) + (sum(model.top_hidden) if model.top_latent_dim else 0)
    kept, block = sbc_memory(
        num_simulations, num_draws, num_proposals, meta["data_dim"], latent_dim, hidden
    )
    what = (
        f"SBC of {plural(num_simulations, 'simulation')} with "
        f"{plural(max(num_draws, num_proposals), 'draw')} of q each needs"
    )
    device = next(vae.parameters()).device
    lower = "{args.num_simulations}, {args.sbc_draws} or {args.sbc_proposals}"
    _check_fits(what, kept, block, device, lower)


def _check_fits(what: str, kept: int, block: int, device, lower: str) -> None:
    host = free_memory_bytes(torch.device("cpu"))
    on_device = free_memory_bytes(device) if device.type != "cpu" else None
    need_host = kept + (block if device.type == "cpu" else 0)
    for need, free, where in ((need_host, host, "memory"), (block, on_device, f"{device} memory")):
        if free is not None and need > free:
            raise ConfigError(
                f"{what} about {need / 1e9:.3g} GB, more than the {free / 1e9:.3g} GB of "
                f"free {where}; lower {lower}"
            )


def _within(value: int, least: int, most: int, option: str) -> None:
    if value < least:
        raise ConfigError(f"must be at least {least}, got {value}", option=option)
    if value > most:
        raise ConfigError(
            f"must be at most {most:,} (the checks' ceiling, far above a useful check), got "
            f"{value:,}",
            option=option,
        )
