"""Figures of a run: samples from the model and the training curves with the evaluation."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae.build import load_data, prepare_splits
from pyro_vae.config import RunConfig, check_seed
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.infer.diagnostics import active_units, guide_means
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.jobs.housekeeping import newest
from pyro_vae.jobs.loading import load_run
from pyro_vae.models import VAE
from pyro_vae.runs import (
    RunDir,
    StoredEvaluation,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
)
from pyro_vae.text import plural

MAX_SAMPLES_FIGURE = 4096  # draws in one samples figure


def samples_path(run_dir: str | Path, out: str | Path | None, suffix: str = ".png") -> Path:
    """Where :func:`sample` writes: ``out`` (``suffix`` added when it has none; a directory,
    or a path ending in ``/``, gets ``samples`` + ``suffix`` inside it), by default
    ``RUN_DIR/samples.png`` (``.npy``: the draws of a run whose data are not images). Raises
    :class:`~pyro_vae.errors.ConfigError` for an empty ``out``, another suffix, and a path that
    cannot be written as a file (a directory's name where a file is meant, a path under a
    file)."""
    if out is None:
        return Path(run_dir) / f"samples{suffix}"
    _not_empty(out, "a file or a directory")
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):  # a directory, or one to create
        path = path / f"samples{suffix}"
    elif path.suffix == "":
        path = path.with_name(path.name + suffix)
    elif path.suffix.lower() != suffix:
        what = (
            "the samples figure is a PNG"
            if suffix == ".png"
            else "this run's data are not images, so its draws are written as an .npy array"
        )
        raise ConfigError(f"{what}; {path} names a '{path.suffix}' file")
    return check_output_file(path, "{args.out}")


def plots_dir(run_dir: str | Path, out: str | Path | None) -> Path:
    """Where :func:`plot` draws: ``out``, by default ``RUN_DIR/plots``. Raises
    :class:`~pyro_vae.errors.ConfigError` for an empty ``out`` (not the current directory) and
    for one that is a file or lies under one."""
    if out is None:
        return Path(run_dir) / "plots"
    _not_empty(out, "a directory")
    return check_output_dir(out, "{args.out}")


def _not_empty(out: str | Path, what: str) -> None:
    if not str(out).strip():
        raise ConfigError(f"is empty: give {what}", option="args.out")


@dataclass(frozen=True)
class Samples:
    """What :func:`sample` wrote: ``path``, a PNG of grids for images, else an ``.npy`` array
    of the draws x ~ p(x|z), of ``shape`` (draws, values per datapoint)."""

    path: Path
    shape: tuple[int, int]

    @property
    def is_figure(self) -> bool:
        return self.path.suffix == ".png"

    def describe(self) -> str:
        """``wrote PATH``, and for an array what it holds."""
        if self.is_figure:
            return f"wrote {self.path}"
        return (
            f"wrote {self.path}: {self.shape[0]} draws x ~ p(x|z) of {self.shape[1]} values, an "
            f"array of shape {self.shape} (the data are not images: no figure)"
        )


def sample(
    run_dir: str | Path, *, num: int = 64, out: str | Path | None = None, seed: int | None = None
) -> Samples:
    """Draw ``num`` samples z ~ p(z), x ~ p(x|z). For image data write a PNG with two labelled
    grids, decoder means and samples; for other data (tabular) the draws x as an ``.npy``
    array ``(num, D)`` (:func:`samples_path`).

    ``seed`` (default: the run's seed) seeds the draws. Returns what was written.
    """
    if not 1 <= num <= MAX_SAMPLES_FIGURE:
        raise ConfigError(
            f"must be between 1 and {MAX_SAMPLES_FIGURE}, got {num}", option="args.num"
        )
    if seed is not None:
        check_seed(seed)
    config, vae, meta = load_run(run_dir, "cpu")
    shape = tuple(meta.get("image_shape") or ())
    image = len(shape) == 2
    out_path = samples_path(run_dir, out, ".png" if image else ".npy")
    if image:
        save_figure(_samples_figure(vae, config, shape, num, seed), out_path, bbox_inches="tight")
        return Samples(out_path, (num, meta["data_dim"]))
    pyro.set_rng_seed(config.train.seed if seed is None else seed)
    with torch.no_grad():
        drawn = vae.sample(num).sample.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, drawn)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Samples(out_path, tuple(drawn.shape))


def save_figure(figure, path: Path, **savefig) -> None:
    """Draw ``figure`` as a PNG in memory, then write it atomically
    (:func:`~pyro_vae.runs.atomic_write_bytes`): a failed write (a full disk) leaves the previous
    file whole and raises :class:`~pyro_vae.errors.CheckpointError` naming it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _samples_figure(vae: VAE, config: RunConfig, shape, num: int, seed: int | None = None):
    """The labelled samples figure, drawn with ``seed`` (default the run's seed, as
    ``pyro-vae sample`` does)."""
    from pyro_vae import plots

    pyro.set_rng_seed(config.train.seed if seed is None else seed)
    drawn = vae.sample(num)
    title = f"z ~ p(z), {config.data.dataset}, {config.model.likelihood} likelihood"
    return plots.samples(drawn.mean, drawn.sample, shape, title)


@dataclass(frozen=True)
class Plotted:
    """What :func:`plot` drew: the paths written, the evaluation the evaluation figures come from
    (None: none drawn) and a sentence on that choice (why none, or which one of several), which
    names options as ``{args.NAME}`` (:func:`pyro_vae.errors.name_options` renders them)."""

    paths: list[Path]
    setting: str | None
    note: str


def plot(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str | None = None,
    num_samples: int | None = None,
    precision: str | None = None,
    method: str | None = None,
) -> Plotted:
    """Draw every figure of a run into ``out_dir`` (default RUN_DIR/plots).

    The training curves, samples, reconstructions, traversals and the latent space need no
    evaluation. The figures that do (bound vs K, k-hat, gap) are named after the setting they
    come from (``gap-test-K1000-fp32.png``), so figures of several settings sit side by side;
    they are drawn from the newest current evaluation (of the checkpoint the run holds now) of
    those ``split``, ``num_samples``, ``precision`` and ``method`` select (all by default).
    Without a current one they are left out and the note says why, unless a selection was
    given: then its evaluation is refused when it is older than the checkpoint, or missing.
    """
    from pyro_vae import plots

    out = plots_dir(run_dir, out_dir)
    run = RunDir(run_dir).require()
    config, vae, meta = load_run(run_dir, "cpu")
    wanted = {"split": split, "num_samples": num_samples, "precision": precision, "method": method}
    kept, note = _evaluation_to_plot(run, meta["epoch"], wanted)
    figures = {}
    history = run.read_metrics()
    if history:
        figures["training"] = plots.training_curves(
            [r.epoch for r in history],
            [r.train_objective for r in history],
            [r.val_elbo for r in history],
            [r.beta for r in history],
            [r.val_bound for r in history],
            config.train.stop_samples,
            meta["epoch"] if meta.get("checkpoint") == "best" else None,
        )
    shape = tuple(meta.get("image_shape") or ())
    dataset = load_data(config)
    x = prepare_splits(config, dataset, vae.likelihood, ("test",))["test"]
    labels = None if dataset.labels is None else dataset.labels["test"].numpy()
    pyro.set_rng_seed(config.train.seed)
    with torch.no_grad():
        means = guide_means(vae.encoder(x))
        if len(shape) == 2:
            figures["reconstructions"] = plots.reconstructions(
                x[:16], vae.reconstruct(x[:16]), shape
            )
            _, variances = active_units(means)
            dims = variances.argsort(descending=True)[: min(6, vae.latent_dim)].tolist()
            values = torch.linspace(-2.5, 2.5, 9)
            z = torch.zeros(len(dims), len(values), vae.latent_dim)
            for row, d in enumerate(dims):
                z[row, :, d] = values
            decoded = vae.likelihood.mean(vae.decoder(z.reshape(-1, vae.latent_dim)))
            figures["traversals"] = plots.traversals(decoded, shape, dims, values.tolist())
    projected = vae.latent_dim > 2
    if projected:
        centred = means - means.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        points = (centred @ v[:2].T).numpy()
    else:
        points = torch.cat([means, torch.zeros(means.shape[0], 2 - vae.latent_dim)], 1).numpy()
    figures["latent"] = plots.latent_space(points, labels, projected)
    if len(shape) == 2:
        figures["samples"] = _samples_figure(vae, config, shape, 64)
    if kept is not None:
        ev, per_point = kept.evaluation, kept.per_point()
        log_px, elbo = per_point.log_px.numpy(), per_point.elbo.numpy()
        named = {}
        if ev.bounds_vs_k is not None:  # importance sampling's; AIS has no L_K
            known = ESTIMATORS.get(ev.method)
            how = ev.method if known is None else known.label
            series = {f"L_K, {how} (mean over datapoints)": ev.bounds_vs_k}
            named["bound_vs_k"] = plots.bound_vs_k(series, ev.elbo)
        khat = per_point.khat.numpy()
        if np.isfinite(khat).any():  # not computed below PSIS_MIN_SAMPLES
            named["khat"] = plots.khat(khat)
        named["gap"] = plots.gap_histogram(log_px - elbo)
        figures.update({f"{name}-{kept.setting}": figure for name, figure in named.items()})
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        save_figure(fig, path, bbox_inches="tight" if name == "samples" else None)
        paths.append(path)
    return Plotted(paths, None if kept is None else kept.setting, note)


def _evaluation_to_plot(
    run: RunDir, epoch: int, wanted: dict
) -> tuple[StoredEvaluation | None, str]:
    """The evaluation :func:`plot` draws (None: none), and what to say about the choice."""
    asked = any(v is not None for v in wanted.values())
    kept = run.select_evaluations(**wanted)
    if asked and not kept:
        run.find_evaluation(**wanted)  # raises, naming the evaluations kept
    current = [e for e in kept if e.evaluation.epochs_trained == epoch]
    older = [e for e in kept if e.evaluation.epochs_trained != epoch]
    if current:
        chosen = newest(current)
        others = [e.setting for e in current if e is not chosen]
        if not others:
            return chosen, f"evaluation figures from {chosen.setting}"
        return chosen, (
            f"evaluation figures from {chosen.setting}, the newest of "
            f"{len(current)} current evaluations (also {', '.join(others)}; choose one with "
            "{args.split}, {args.method}, {args.num_samples} and {args.precision})"
        )
    if not kept:
        return None, (
            f"no evaluation figures: {run.path} keeps no evaluation (pyro-vae evaluate {run.path})"
        )
    made = ", ".join(
        f"{e.setting} after {plural(e.evaluation.epochs_trained or 0, 'epoch')}" for e in older
    )
    if asked and len(older) == 1:
        (first,) = older
        raise CheckpointError(
            f"the evaluation {first.setting} of {run.path} was made after "
            f"{plural(first.evaluation.epochs_trained or 0, 'epoch')}, but its checkpoint has "
            f"{epoch}: its figures would describe another model; evaluate it again "
            f"(pyro-vae evaluate {run.path}), or drop it (pyro-vae evaluations {run.path} "
            f"{{args.drop}} {first.setting})"
        )
    if asked:
        raise CheckpointError(
            f"the evaluations of {run.path} selected were made before its checkpoint's "
            f"{plural(epoch, 'epoch')} ({made}): their figures would describe another model; "
            f"evaluate the run again (pyro-vae evaluate {run.path}), or drop them (pyro-vae "
            f"evaluations {run.path} {{args.drop_stale}})"
        )
    return None, (
        f"no evaluation figures: the evaluations {run.path} keeps were made before its "
        f"checkpoint's {plural(epoch, 'epoch')} ({made}); evaluate the run again (pyro-vae "
        f"evaluate {run.path}), or drop them (pyro-vae evaluations {run.path} "
        "{args.drop_stale})"
    )
