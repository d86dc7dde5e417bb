"""The jobs behind the command line: train a run, evaluate it, draw samples from it.

Each job reads and writes a :class:`~pyro_vae.runs.RunDir` and returns plain results; printing is
left to the caller (``echo``), so the same jobs serve the CLI, scripts and tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae import arviz_compat, registry
from pyro_vae.config import RunConfig, check_seed
from pyro_vae.data import load_dataset, minibatch_transform, prepare_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.transforms import is_quantised
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.estimators import EstimatorSpec, estimate
from pyro_vae.infer import BetaSchedule, EpochStats, Trainer
from pyro_vae.infer.diagnostics import active_units, bounds_vs_k, guide_means, kl_per_dimension
from pyro_vae.infer.importance import free_memory_bytes
from pyro_vae.models import VAE, Likelihood
from pyro_vae.runs import RunDir, atomic_write_text, describe_selection
from pyro_vae.text import plural

BOUND_KS = (1, 5, 50, 500, 5000)  # L_K reported for these K (those up to --num-samples)
# What makes two evaluations comparable datapoint by datapoint (see compare()).
IDENTITY_KEYS = (
    "dataset",
    "split",
    "binarize",
    "binarize_seed",
    "dequantize",
    "levels",
    "num_samples",
    "num_datapoints",
    "precision",
    "method",
    "method_settings",
)
# ... of which these are fixed by training: re-evaluating cannot make them agree.
TRAINING_DATA_KEYS = ("dataset", "binarize", "binarize_seed", "dequantize", "levels")
# Values assumed for keys that evaluations written by earlier versions lack.
IDENTITY_DEFAULTS = {"precision": "fp32", "method": "iwae"}

# Options that may change when a run is resumed: they do not change what is being fitted.
RESUMABLE = {"train": {"epochs", "device", "log_every", "eval_samples"}, "data": {"data_dir"}}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def load_data(config: RunConfig) -> Dataset:
    d = config.data
    return load_dataset(d.dataset, d.data_dir, download=d.download)


def prepare_splits(
    config: RunConfig,
    dataset: Dataset,
    likelihood: Likelihood,
    splits=("train", "val", "test"),
    *,
    fixed: bool = False,
) -> dict[str, torch.Tensor]:
    """The data set and its splits as the likelihood scores them, each checked against it.

    With dynamic binarisation or dequantisation the training split stays as stored and is
    transformed per minibatch; a sample of it is transformed here to check it. With ``fixed``
    (for an evaluation) every split, the training split included, gets its one seeded draw.
    """
    d = config.data
    if is_quantised(d.binarize, d.dequantize, dataset.levels) and not likelihood.is_discrete:
        kind = "binarised" if d.binarize != "none" else f"quantised ({dataset.levels} levels)"
        raise DataError(
            f"the {config.model.likelihood} likelihood is a density, and {dataset.name} data "
            f"are {kind}: a density of discrete values is no valid log-likelihood. Use "
            "--dequantize uniform (with --binarize none), or a discrete likelihood "
            "(--likelihood bernoulli with --binarize, or discretized-logistic)"
        )
    prepared = {}
    transform = minibatch_transform(d.binarize, d.dequantize, dataset.levels)
    for split in splits:
        x = prepare_split(
            dataset.split(split),
            split,
            d.binarize,
            d.binarize_seed,
            d.dequantize,
            dataset.levels,
            fixed=fixed,
        )
        fresh = split == "train" and not fixed and transform is not None
        scored = transform(x[:1000]) if fresh else x
        likelihood.check_data(scored, f"the {split} split of {dataset.name}")
        prepared[split] = x
    return prepared


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[EpochStats]
    evaluation: dict[str, Any] | None


def train(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    evaluate_at_end: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Fit a VAE as ``config`` says, checkpointing into ``out`` after every epoch.

    With ``resume=True``, continue the run in ``out`` from its last checkpoint; the result equals
    an uninterrupted run with the same seed. Only the options in :data:`RESUMABLE` may differ from
    the run's saved config. The run directory is held exclusively while training runs: a second
    ``train`` into it raises :class:`~pyro_vae.errors.RunInUseError` at once.
    """
    run = RunDir(out)
    registry.check_names(config.model, config.train)
    if resume:
        run.require(checkpoint=False)  # before claiming, which creates the directory
    created = not run.path.exists()
    try:
        with run.claim():
            return _train_claimed(run, config, resume, evaluate_at_end, progress, echo)
    except BaseException:
        if created:
            run.remove_if_empty()  # a run that failed before its config was written
        raise


def _train_claimed(run: RunDir, config: RunConfig, resume, evaluate_at_end, progress, echo):
    """:func:`train` in a run directory this process holds (:meth:`RunDir.claim`)."""
    if resume:
        _check_resumable(run.read_config(), config)
    elif run.exists():
        raise ConfigError(
            f"{run.path} already holds a run; pass --resume to continue it or choose another --out"
        )
    else:
        _check_new_run_dir(run)
    run.check_writable()
    device = resolve_device(config.train.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.train.seed)
    dataset = load_data(config)
    if evaluate_at_end:  # before training, not after it
        _check_log_weights_fit(config.train.eval_samples, dataset.split("test").shape[0])
    likelihood = registry.build_likelihood(config.model, dataset.levels)
    data = prepare_splits(config, dataset, likelihood, ("train", "val"))
    vae = registry.build_vae(config.model, dataset.data_dim, dataset.levels).to(device)
    train_x = data["train"].to(device)
    steps_per_epoch = math.ceil(train_x.shape[0] / config.train.batch_size)
    trainer = Trainer(
        vae,
        train_x,
        elbo=registry.build_elbo(config.train),
        lr=config.train.lr,
        batch_size=config.train.batch_size,
        beta=BetaSchedule(config.train.beta, config.train.warmup_epochs * steps_per_epoch),
        transform=minibatch_transform(config.data.binarize, config.data.dequantize, dataset.levels),
        val_x=data["val"].to(device),
        log_every=config.train.log_every,
        progress=progress,
        precision=registry.build_precision(config.train.precision),
    )
    meta = {
        "data_dim": dataset.data_dim,
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
    }
    history: list[EpochStats] = []
    if resume and run.checkpoint_path.is_file():
        state = run.load_checkpoint(_identity(config), map_location=device)
        _load_model_state(trainer, state)
        rows = run.read_metrics(drop_damaged_tail=True)  # a torn tail is rewritten below
        history = [row for row in rows if row.epoch <= trainer.epoch]
    elif resume:
        echo(f"{run.path}: no epoch was finished; training from the beginning")
    run.write_config(config)
    if trainer.epoch >= config.train.epochs:
        done = run.select_evaluations(
            split="test", num_samples=config.train.eval_samples, precision="fp32"
        )
        if evaluate_at_end and done:
            echo(
                f"{run.path}: already trained for {plural(trainer.epoch, 'epoch')} "
                f"(--epochs {config.train.epochs}) and evaluated ({done[0].json_path})"
            )
            return TrainResult(run.path, history, done[0].summary)
        echo(
            f"{run.path}: already trained for {plural(trainer.epoch, 'epoch')} "
            f"(--epochs {config.train.epochs})"
            + ("; running its missing evaluation" if evaluate_at_end else "")
        )
    report_every = max(1, config.train.epochs // 10)
    while trainer.epoch < config.train.epochs:
        stats = trainer.train_epoch()
        history.append(stats)
        run.save_checkpoint({**trainer.state_dict(), "meta": meta}, _identity(config))
        run.write_metrics(history)
        if stats.epoch % report_every == 0 or stats.epoch == config.train.epochs:
            echo(
                f"epoch {stats.epoch:4d}/{config.train.epochs}  train objective "
                f"{stats.train_objective:9.3f}  val ELBO {stats.val_elbo:9.3f} nats  "
                f"beta {stats.beta:.3g}  ({stats.seconds:.2f} s)"
            )
    evaluation = None
    if evaluate_at_end:
        evaluation = evaluate(run.path, num_samples=config.train.eval_samples, progress=progress)
        echo(format_evaluation(evaluation))
    return TrainResult(run.path, history, evaluation)


def _check_new_run_dir(run: RunDir) -> None:
    """A new run goes into a new or empty directory, not into another run's."""
    others = [p.name for p in run.path.iterdir() if p.name != run.lock_path.name]
    if others:
        raise ConfigError(
            f"{run.path} is not empty and holds no run ({', '.join(sorted(others)[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose a new or empty directory for --out"
        )
    for parent in run.path.absolute().parents:
        if RunDir(parent).exists():
            raise ConfigError(
                f"{run.path} lies inside the run directory {parent}; choose --out outside it"
            )


def _identity(config: RunConfig) -> RunConfig:
    """The config with the resumable options reset: what a checkpoint must match."""
    defaults = RunConfig()
    return config.replace(
        **{
            section: {name: getattr(getattr(defaults, section), name) for name in names}
            for section, names in RESUMABLE.items()
        }
    )


def _check_resumable(saved: RunConfig, given: RunConfig) -> None:
    a, b = _identity(saved).to_dict(), _identity(given).to_dict()
    diffs = [
        f"{section}.{key}: run has {a[section][key]!r}, asked for {b[section][key]!r}"
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key]
    ]
    if diffs:
        raise ConfigError("cannot resume with different options: " + "; ".join(diffs))


def _load_model_state(trainer: Trainer, state: dict[str, Any]) -> None:
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not match its run's model: {first}") from None


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[RunConfig, VAE, dict[str, Any]]:
    """The config, the trained VAE (on ``device``) and the checkpoint's metadata of a run."""
    run = RunDir(run_dir).require()
    config = run.read_config()
    dev = resolve_device(device if device != "auto" else config.train.device)
    state = run.load_checkpoint(_identity(config), map_location=dev)
    meta = _checked_meta(run, state)
    pyro.clear_param_store()
    vae = registry.build_vae(config.model, meta["data_dim"], meta.get("levels")).to(dev)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not match its run's model: {first}") from None
    vae.eval()
    return config, vae, meta


def _checked_meta(run: RunDir, state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's metadata (data shape, levels) and epoch, each checked."""
    meta = state.get("meta")
    epoch = state.get("epoch")
    path = run.checkpoint_path
    if not isinstance(meta, dict) or not _is_int(meta.get("data_dim")) or meta["data_dim"] < 1:
        raise CheckpointError(f"{path} lacks the data shape (meta.data_dim)")
    shape = meta.get("image_shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(_is_int(n) and n >= 1 for n in shape)
        or math.prod(shape) != meta["data_dim"]
    ):
        raise CheckpointError(
            f"{path}: meta.image_shape {shape} does not hold {meta['data_dim']} values "
            "per datapoint"
        )
    levels = meta.get("levels")
    if levels is not None and (not _is_int(levels) or levels < 2):
        raise CheckpointError(f"{path}: meta.levels {levels!r} is not a number of levels")
    if not _is_int(epoch) or epoch < 1:
        raise CheckpointError(f"{path} lacks the number of epochs trained (epoch)")
    return {**meta, "epoch": epoch}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def evaluate(
    run_dir: str | Path,
    *,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    split: str = "test",
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
    method: str = "iwae",
    **settings,
) -> dict[str, Any]:
    """log p(x) against the ELBO on a split, kept in the run directory as
    ``evaluations/SETTING.json`` and ``.nc`` (one evaluation per setting: another split, method,
    K or precision adds one; the same setting replaces its earlier one).

    ``method`` and ``settings`` choose the estimator (:class:`~pyro_vae.estimators.EstimatorSpec`:
    ``iwae``, the default, is importance sampling from the guide with K = ``num_samples``;
    ``refined``, ``ais`` and ``auto`` are recorded in the evaluation, and :func:`compare` does not
    rank evaluations of different methods together unless asked).

    The split is binarised (if the run binarises) with the run's fixed ``binarize_seed`` and the
    estimator is seeded with the run's seed, so evaluating twice gives the same numbers.
    ``precision="bf16"`` runs the networks in bfloat16 (faster on hardware with bf16 matrix
    units; log-densities stay float32): an approximation of the float32 estimate, recorded in the
    summary, and :func:`compare` refuses to rank it against float32 evaluations.
    """
    dtype = registry.build_precision(precision)
    spec = EstimatorSpec(method=method, num_samples=num_samples, chunk_size=chunk_size, **settings)
    config, vae, meta = load_run(run_dir, device)
    RunDir(run_dir).check_writable()  # before the computation, whose result must go somewhere
    data = prepare_splits(config, load_data(config), vae.likelihood, (split,), fixed=True)
    x = data[split].to(next(vae.parameters()).device)
    if method != "ais":  # the others keep K x N log weights for k-hat
        _check_log_weights_fit(num_samples, x.shape[0])
    pyro.set_rng_seed(config.train.seed)
    with vae.precision(dtype):
        result = estimate(spec, vae.model, vae.guide, x, progress=progress)
    per_point = {
        "log_px": result.log_px,
        "elbo": result.elbo,
        "ess": result.ess,
        "stderr": result.stderr,
        "khat": result.khat,
    }
    k = spec.weights_per_datapoint
    with torch.no_grad():
        q = vae.encoder(x)
        n_active, _ = active_units(guide_means(q).cpu())
        kl = kl_per_dimension(q, vae.prior)
    n = x.shape[0]
    finite_khat = bool(torch.isfinite(result.khat).any())
    summary: dict[str, Any] = {
        "log_px": per_point["log_px"].mean().item(),
        "log_px_stderr": (per_point["stderr"].pow(2).sum().sqrt() / n).item() if k > 1 else None,
        "log_px_std": per_point["log_px"].std().item() if n > 1 else 0.0,
        "elbo": per_point["elbo"].mean().item(),
        "gap": (per_point["log_px"] - per_point["elbo"]).mean().item(),
        "ess_mean": per_point["ess"].mean().item(),
        "ess_min": per_point["ess"].min().item(),
        **khat_summary(result.khat, k, method=method),
    }
    if method == "auto" and finite_khat:
        summary.update(_auto_khat_fields(result.khat))
    if result.log_weights is not None:
        bounds = bounds_vs_k(result.log_weights, BOUND_KS + (num_samples,))
        summary["bounds_vs_k"] = {str(kk): v.mean().item() for kk, v in bounds.items()}
    summary.update(
        {
            "active_units": n_active,
            "latent_dim": vae.latent_dim,
            "kl_per_dim": None if kl is None else [round(v, 6) for v in kl.cpu().tolist()],
            "method": method,
            "method_settings": spec.settings(),
            **result.summary,
            "num_samples": k,
            "num_datapoints": n,
            "precision": precision,
            "dataset": config.data.dataset,
            "split": split,
            "binarize": config.data.binarize,
            "binarize_seed": config.data.binarize_seed,
            "dequantize": config.data.dequantize,
            "levels": meta.get("levels"),
            "likelihood": config.model.likelihood,
            "prior": config.model.prior,
            "guide": config.model.guide,
            "objective": config.train.elbo,
            "epochs_trained": meta["epoch"],
            "seed": config.train.seed,
            "seconds": result.seconds,
        }
    )
    bpd = bits_per_dim(summary["log_px"], meta["data_dim"], vae.likelihood, config, meta)
    if bpd is not None:
        summary["bits_per_dim"] = bpd
    attrs = {
        k: summary[k]
        for k in IDENTITY_KEYS + ("likelihood", "prior", "guide", "objective", "seed")
        if k in summary and k != "method_settings"  # a dict: in the json summary only
    }
    stats = {k: per_point[k].numpy() for k in ("khat", "ess", "stderr")}
    if result.method is not None:
        stats["method"] = result.method.numpy()
    if result.draws is not None:
        stats["draws"] = result.draws.numpy()
    if result.acceptance is not None:
        stats["acceptance"] = result.acceptance.numpy()
    idata = arviz_compat.to_inference_data(
        {k: per_point[k].numpy() for k in ("log_px", "elbo")}, stats, attrs
    )
    stored = RunDir(run_dir).write_evaluation(summary, idata)
    summary["evaluation_id"] = stored.summary["evaluation_id"]
    return summary


def bdmc(
    run_dir: str | Path,
    *,
    num_datapoints: int = 100,
    num_samples: int = 1000,
    device: str = "auto",
    progress: bool = True,
    **settings,
) -> dict[str, Any]:
    """The BDMC sandwich of a run's model on ``num_datapoints`` datapoints simulated from it.

    Forward AIS gives a stochastic lower bound and reverse AIS from the simulated latents an
    upper bound of each simulated datapoint's log p(x) (:func:`pyro_vae.infer.bdmc`); IWAE from
    the guide with K = ``num_samples`` is reported on the same data, below the upper bound.
    ``settings`` (``ais_steps``, ``ais_chains``, ``ais_leapfrog``) are AIS's, as for
    :func:`evaluate`. Kept in ``RUN_DIR/bdmc/bdmc-TT-CC.json`` with the simulated data, latents
    and per-datapoint bounds in ``.npz`` beside it.
    """
    from pyro_vae.infer import bdmc as sandwich

    spec = EstimatorSpec(method="ais", num_samples=num_samples, **settings)
    if num_datapoints < 1:
        raise ConfigError(f"--num-datapoints must be at least 1, got {num_datapoints}")
    config, vae, meta = load_run(run_dir, device)
    run = RunDir(run_dir)
    run.check_writable()
    param = next(vae.parameters())
    x_like = torch.zeros(num_datapoints, meta["data_dim"], dtype=param.dtype, device=param.device)
    pyro.set_rng_seed(config.train.seed)
    start = time.perf_counter()
    result = sandwich(
        vae.model,
        vae.guide,
        x_like,
        num_steps=spec.ais_steps,
        num_chains=spec.ais_chains,
        num_leapfrog=spec.ais_leapfrog,
        max_plate_nesting=1,
        progress=progress,
    )
    ais_seconds = time.perf_counter() - start
    iwae = estimate(spec.replace(method="iwae"), vae.model, vae.guide, result.x, progress=progress)
    lower, upper = result.lower.log_px.cpu(), result.upper.log_px.cpu()
    gap = upper - lower
    n = num_datapoints
    summary: dict[str, Any] = {
        "num_datapoints": n,
        "lower": lower.mean().item(),
        "upper": upper.mean().item(),
        "gap": gap.mean().item(),
        "gap_stderr": gap.std().item() / math.sqrt(n) if n > 1 else None,
        "gap_max": gap.max().item(),
        "frac_gap_above_1": (gap > 1.0).double().mean().item(),
        "iwae": iwae.log_px.mean().item(),
        "iwae_num_samples": num_samples,
        "iwae_above_upper": (iwae.log_px - upper).mean().item(),
        "acceptance_mean": result.lower.acceptance.mean().item(),
        "method_settings": spec.settings(),
        "likelihood": config.model.likelihood,
        "prior": config.model.prior,
        "guide": config.model.guide,
        "objective": config.train.elbo,
        "epochs_trained": meta["epoch"],
        "seed": config.train.seed,
        "seconds": ais_seconds,
    }
    name = f"bdmc-T{spec.ais_steps}-C{spec.ais_chains}"
    arrays = {
        "x": result.x.cpu().numpy(),
        **{f"latent_{k}": v.cpu().numpy() for k, v in result.latents.items()},
        "lower": lower.numpy(),
        "upper": upper.numpy(),
        "iwae": iwae.log_px.numpy(),
    }
    run.write_bdmc(name, summary, arrays)
    summary["paths"] = [str(p) for p in run.bdmc_paths(name)]
    return summary


def format_bdmc(s: dict[str, Any]) -> str:
    """A short summary of :func:`bdmc`'s result."""
    settings = s["method_settings"]
    se = s.get("gap_stderr")
    error_bar = f" (± {se:.3f} over datapoints)" if se is not None else ""
    return "\n".join(
        [
            f"BDMC on {plural(s['num_datapoints'], 'datapoint')} simulated from the model, AIS "
            f"with {plural(settings['ais_chains'], 'chain')} x {settings['ais_steps']} "
            f"distributions ({s['seconds']:.1f} s):",
            f"  upper     {s['upper']:10.3f} nats  (reverse AIS from the true latents)",
            f"  lower     {s['lower']:10.3f} nats  (forward AIS)",
            f"  gap       {s['gap']:10.3f} nats{error_bar}; max {s['gap_max']:.3f}, "
            f"{100 * s['frac_gap_above_1']:.1f}% of datapoints above 1 nat",
            f"  IWAE      {s['iwae']:10.3f} nats  (K={s['iwae_num_samples']} from the guide, "
            f"{s['iwae_above_upper']:+.3f} vs the upper bound)",
            f"  HMC       {s['acceptance_mean']:10.2f} mean acceptance rate",
        ]
    )


def _auto_khat_fields(khat: torch.Tensor) -> dict[str, Any]:
    """k-hat over the datapoints whose final estimate is importance sampling (AIS has none)."""
    finite = khat[torch.isfinite(khat)]
    return {"khat_mean": finite.mean().item(), "khat_max": finite.max().item()}


def _check_log_weights_fit(num_samples: int, num_datapoints: int) -> None:
    """Refuse a K whose K x N float64 log weights (kept for k-hat and L_K, about twice over while
    they are joined) would not fit in the host's free memory."""
    need = 2 * 8 * num_samples * num_datapoints
    free = free_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        raise ConfigError(
            f"K={num_samples} importance samples on {num_datapoints} datapoints keep "
            f"{need / 1e9:.3g} GB of log weights, more than the {free / 1e9:.3g} GB of free "
            "memory; choose a smaller K (or evaluate on fewer datapoints)"
        )


def khat_summary(khat: torch.Tensor, num_samples: int, method: str = "iwae") -> dict[str, Any]:
    """The k-hat fields of an evaluation. Below :data:`~pyro_vae.arviz_compat.PSIS_MIN_SAMPLES`
    importance samples PSIS has no tail to fit, and AIS has no importance weights: the fields are
    None and ``khat_note`` says why. Datapoints without a k-hat (NaN: AIS's, under ``auto``) are
    not counted above the threshold."""
    threshold = arviz_compat.KHAT_THRESHOLD
    if method == "ais" or num_samples < arviz_compat.PSIS_MIN_SAMPLES:
        if method == "ais":
            why = (
                "AIS has no importance weights for PSIS; its error bar is over its "
                f"{plural(num_samples, 'chain')}"
            )
        elif num_samples == 1:
            why = "K=1 is the ELBO, with no importance weights to diagnose"
        else:
            why = (
                f"K={num_samples} is too small for PSIS (it needs at least "
                f"{arviz_compat.PSIS_MIN_SAMPLES} importance samples per datapoint)"
            )
        return {
            "khat_mean": None,
            "khat_max": None,
            "khat_threshold": threshold,
            "num_khat_above_threshold": None,
            "frac_khat_above_threshold": None,
            "khat_note": f"not computed: {why}",
        }
    unreliable = int((khat > threshold).sum())
    return {
        "khat_mean": khat.mean().item(),
        "khat_max": khat.max().item(),
        "khat_threshold": threshold,
        "num_khat_above_threshold": unreliable,
        "frac_khat_above_threshold": unreliable / khat.shape[0],
    }


def bits_per_dim(log_px: float, data_dim: int, likelihood, config: RunConfig, meta) -> float | None:
    """-log2 P(x) / D for a discrete likelihood; for a density of uniformly dequantised data with
    L levels, the bound -(log p(x) - D ln L) / (D ln 2) on the levels' probability; else None."""
    if likelihood.is_discrete:
        return -log_px / (data_dim * math.log(2))
    if config.data.dequantize == "uniform" and meta.get("levels"):
        return -(log_px - data_dim * math.log(meta["levels"])) / (data_dim * math.log(2))
    return None


def _data_label(s: dict[str, Any]) -> str:
    if s.get("dequantize", "none") != "none":
        return f"dequantize={s['dequantize']}"
    return f"binarize={s['binarize']}"


def _estimator_label(s: dict[str, Any]) -> str:
    """``K=1000 importance samples``, ``AIS with 16 chains x 500 distributions``, ..."""
    k, method = s["num_samples"], s.get("method", "iwae")
    settings = s.get("method_settings") or {}
    samples = f"K={k} importance {'sample' if k == 1 else 'samples'}"
    if method == "ais":
        return f"AIS with {plural(k, 'chain')} x {settings.get('ais_steps')} distributions"
    if method == "refined":
        return f"{samples} from refined proposals"
    if method == "auto":
        return f"auto (IWAE, then refined, then AIS where flagged), {samples}"
    return samples


def format_evaluation(s: dict[str, Any]) -> str:
    """A short, readable summary of :func:`evaluate`'s result."""
    precision = _identity_value(s, "precision")
    stderr = s.get("log_px_stderr")
    if stderr is not None and math.isfinite(stderr):
        error_bar = f"(± {stderr:.3f} Monte Carlo stderr)"
    elif s["num_samples"] == 1:
        error_bar = "(no Monte Carlo stderr from one sample)"
    else:  # written as null: infinite, where some datapoint got no weight at all
        error_bar = "(Monte Carlo stderr unbounded: some datapoints' weights are all zero)"
    lines = [
        f"{s['dataset']} ({s['split']} split, {_data_label(s)}), "
        f"{plural(s['num_datapoints'], 'datapoint')}, {_estimator_label(s)}, "
        f"{plural(s['epochs_trained'], 'epoch')}"
        + (f", networks in {precision}:" if precision != "fp32" else ":"),
        f"  log p(x)  {_number(s['log_px'], -math.inf):10.3f} nats  {error_bar}",
        f"  ELBO      {_number(s['elbo'], -math.inf):10.3f} nats",
        f"  gap       {_number(s['gap']):10.3f} nats  (log p(x) - ELBO, estimates KL(q || "
        "posterior))",
        f"  ESS       {_number(s['ess_mean']):10.1f} of {s['num_samples']} on average "
        f"(min {_number(s['ess_min']):.1f})",
    ]
    if s.get("acceptance_mean") is not None:
        lines.append(f"  HMC       {s['acceptance_mean']:10.2f} mean acceptance rate")
    if s.get("num_per_method"):
        more = s.get("num_more_draws")
        counts = ", ".join(
            f"{n} {m}"
            + (
                f" ({more} with more than {s['num_samples']} draws)"
                if m == "refined" and more
                else ""
            )
            for m, n in s["num_per_method"].items()
        )
        lines.append(
            f"  methods   {counts}; {s['num_unreliable']} of {s['num_datapoints']} still flagged "
            f"({100 * s['frac_unreliable']:.2f}%)"
        )
    if s.get("khat_note"):
        lines.append(f"  k-hat     {s['khat_note']}")
    elif s.get("khat_max") is not None:
        above = s["num_khat_above_threshold"]
        verdict = "reliable" if above == 0 else "NOT reliable for these"
        lines.append(
            f"  k-hat     {s['khat_mean']:10.2f} mean, {s['khat_max']:.2f} max; "
            f"{above} of {s['num_datapoints']} datapoints above "
            f"{s['khat_threshold']} ({verdict})"
        )
    if "bounds_vs_k" in s:
        bounds = ", ".join(f"L_{k} {v:.2f}" for k, v in s["bounds_vs_k"].items())
        lines.append(f"  bound/K   {bounds}")
    if "active_units" in s:
        lines.append(f"  active    {s['active_units']} of {s['latent_dim']} latent dimensions")
    if "bits_per_dim" in s:
        lines.append(f"  bits/dim  {s['bits_per_dim']:10.4f}")
    return "\n".join(lines)


MAX_SAMPLES_FIGURE = 4096  # draws in one samples figure


def samples_path(run_dir: str | Path, out: str | Path | None) -> Path:
    """Where :func:`sample` writes: ``out`` (``.png`` added when it has no suffix; a directory,
    or a path ending in ``/``, gets ``samples.png`` inside it), by default
    ``RUN_DIR/samples.png``."""
    if out is None:
        return Path(run_dir) / "samples.png"
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):  # a directory, or one to create
        return path / "samples.png"
    if path.suffix == "":
        return path.with_name(path.name + ".png")
    if path.suffix.lower() != ".png":
        raise ConfigError(f"the samples figure is a PNG; {path} names a '{path.suffix}' file")
    return path


def sample(
    run_dir: str | Path, *, num: int = 64, out: str | Path | None = None, seed: int | None = None
) -> Path:
    """Draw ``num`` samples and write a PNG with two labelled grids: decoder means and samples.

    ``seed`` (default: the run's seed) seeds the draws. Returns the path written.
    """
    if not 1 <= num <= MAX_SAMPLES_FIGURE:
        raise ConfigError(f"--num must be between 1 and {MAX_SAMPLES_FIGURE}, got {num}")
    if seed is not None:
        check_seed(seed)
    config, vae, meta = load_run(run_dir, "cpu")
    shape = meta.get("image_shape") or []
    if len(shape) != 2:
        raise ConfigError(f"sample grids need image data; this run's datapoints have shape {shape}")
    out_path = samples_path(run_dir, out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure = _samples_figure(vae, config, tuple(shape), num, seed)
    figure.savefig(out_path, bbox_inches="tight")
    return out_path


def _samples_figure(vae: VAE, config: RunConfig, shape, num: int, seed: int | None = None):
    """The labelled samples figure, drawn with ``seed`` (default the run's seed, as
    ``pyro-vae sample`` does)."""
    from pyro_vae import plots

    pyro.set_rng_seed(config.train.seed if seed is None else seed)
    drawn = vae.sample(num)
    title = f"z ~ p(z), {config.data.dataset}, {config.model.likelihood} likelihood"
    return plots.samples(drawn.mean, drawn.sample, shape, title)


@dataclass(frozen=True)
class Comparison:
    """One run's row in :func:`compare`; differences are to the best run, datapoint by datapoint."""

    run: str
    log_px: float
    log_px_stderr: float
    elbo: float
    gap: float
    khat_max: float
    frac_khat_above_threshold: float
    diff: float  # mean of log p(x_i) - log p_best(x_i)
    diff_se: float  # its standard error over datapoints (and Monte Carlo)
    label: str
    setting: str = ""  # the evaluation's split, method, K and precision, e.g. test-K1000-fp32
    epochs_trained: int | None = None  # when the evaluation was made
    checkpoint_epochs: int | None = None  # the run's checkpoint now
    method: str = "iwae"  # the estimation method
    frac_unreliable: float = math.nan  # auto: the share whose final estimate failed its check


def compare(
    run_dirs: list[str | Path],
    *,
    split: str | None = None,
    num_samples: int | None = None,
    precision: str | None = None,
    method: str | None = None,
    mix_methods: bool = False,
) -> list[Comparison]:
    """Rank evaluated runs by mean held-out log p(x), with paired differences to the best.

    The difference of run r to the best run b is the mean over datapoints of
    d_i = log p_r(x_i) - log p_b(x_i), with standard error sqrt(var(d) / N + MC), where MC is the
    Monte Carlo variance of both means: paired, like ArviZ's ``compare`` on elpd. Runs must have
    been evaluated on the same datapoints (data set, split, binarisation or dequantisation and
    its seed) with the same K; otherwise this raises.

    Each run's evaluation is the one of the setting (split, method, K, precision) that
    ``split``, ``method``, ``num_samples`` and ``precision`` select and every run holds; when
    several settings qualify (or none), this raises, naming them. With ``mix_methods``, each
    run's evaluation is the one the selectors pick from that run alone, and the runs may differ
    in their estimation method and K (their estimates are all lower bounds of log p(x), of
    different tightness): the table then names each run's method.
    """
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    runs = [RunDir(d).require(checkpoint=False) for d in run_dirs]
    resolved = [r.path.resolve() for r in runs]
    twice = sorted(
        {str(r.path) for r, a in zip(runs, resolved, strict=True) if resolved.count(a) > 1}
    )
    if twice:
        raise ConfigError(f"compare was given the same run more than once: {', '.join(twice)}")
    wanted = {"split": split, "num_samples": num_samples, "precision": precision, "method": method}
    if mix_methods:
        stored = [run.find_evaluation(**wanted) for run in runs]
    else:
        stored = _common_evaluations(runs, **wanted)
    evaluations = [e.summary for e in stored]
    first = evaluations[0]
    mixed = ("method", "num_samples", "method_settings")
    keys = [k for k in IDENTITY_KEYS if not (mix_methods and k in mixed)]
    for run, ev in zip(runs[1:], evaluations[1:], strict=True):
        differ = [k for k in keys if _identity_value(ev, k) != _identity_value(first, k)]
        if differ:
            detail = "; ".join(
                f"{k}: {_identity_value(first, k)!r} vs {_identity_value(ev, k)!r}" for k in differ
            )
            if set(differ) & set(TRAINING_DATA_KEYS):
                raise ConfigError(
                    f"cannot compare {runs[0].path} and {run.path}: they were trained and "
                    f"evaluated on different data ({detail}), so their log p(x) are not "
                    "comparable; compare runs trained on the same data"
                )
            mixed = " (or, for different methods, compare with --mix-methods)" * (
                "method" in differ
            )
            raise ConfigError(
                f"cannot compare {runs[0].path} and {run.path}: evaluated differently ({detail}); "
                "re-evaluate them alike (pyro-vae evaluate RUN --method M --num-samples K --split "
                f"S --precision P){mixed}"
            )
    per_point = []
    for kept in stored:
        idata = kept.inference_data()
        per_point.append(
            (
                torch.as_tensor(idata.log_likelihood["log_px"].values[0, 0]),
                torch.as_tensor(idata.sample_stats["stderr"].values[0, 0]),
            )
        )
    # a mean log p(x) of -inf is written as null: it ranks last
    order = sorted(range(len(runs)), key=lambda i: -_number(evaluations[i]["log_px"], -math.inf))
    best_lp, best_se = per_point[order[0]]
    rows = []
    for i in order:
        ev, (lp, se) = evaluations[i], per_point[i]
        d = lp - best_lp
        n = d.shape[0]
        mc = (torch.nan_to_num(se) ** 2 + torch.nan_to_num(best_se) ** 2).sum() / n**2
        diff_se = 0.0 if i == order[0] else math.sqrt(d.var().item() / n + mc.item())
        rows.append(
            Comparison(
                run=str(runs[i].path),
                log_px=_number(ev["log_px"], -math.inf),
                log_px_stderr=_number(ev.get("log_px_stderr")),
                elbo=_number(ev["elbo"], -math.inf),
                gap=_number(ev["gap"]),
                khat_max=_number(ev.get("khat_max")),
                frac_khat_above_threshold=_number(ev.get("frac_khat_above_threshold")),
                diff=d.mean().item(),
                diff_se=diff_se,
                label=f"{ev['prior']}/{ev['likelihood']}/{ev['guide']}/{ev['objective']}"
                + (f" [{stored[i].setting}]" if mix_methods else ""),
                setting=stored[i].setting,
                epochs_trained=ev.get("epochs_trained"),
                checkpoint_epochs=_checkpoint_epochs(runs[i]),
                method=ev.get("method", "iwae"),
                frac_unreliable=_number(ev.get("frac_unreliable")),
            )
        )
    return rows


def _checkpoint_epochs(run: RunDir) -> int | None:
    """Epochs the run's checkpoint holds now (None when it cannot be read)."""
    try:
        return int(run.load_checkpoint(_identity(run.read_config()), map_location="cpu")["epoch"])
    except (CheckpointError, ConfigError, KeyError, TypeError, ValueError):
        return None


def _common_evaluations(runs: list[RunDir], **wanted) -> list:
    """For each run, its evaluation of the one setting all runs hold among those ``wanted``
    selects (see :meth:`RunDir.select_evaluations`)."""
    matching = [{e.setting: e for e in run.select_evaluations(**wanted)} for run in runs]
    for run, kept in zip(runs, matching, strict=True):
        if not kept:
            run.find_evaluation(**wanted)  # raises, naming what the run holds
    common = sorted(set.intersection(*(set(m) for m in matching)))
    if len(common) == 1:
        return [m[common[0]] for m in matching]
    asked = describe_selection(wanted)
    if not common:
        held = "; ".join(
            f"{r.path}: {', '.join(sorted(m))}" for r, m in zip(runs, matching, strict=True)
        )
        raise ConfigError(
            f"the runs hold no evaluation of one setting{asked} in common ({held}); evaluate "
            "them alike (pyro-vae evaluate RUN --split S --method M --num-samples K --precision "
            "P), or compare different methods with --mix-methods"
        )
    raise ConfigError(
        f"the runs hold evaluations of {len(common)} settings{asked}: {', '.join(common)}; "
        "choose one (--split, --method, --num-samples, --precision)"
    )


def _number(value, null: float = math.nan) -> float:
    """A JSON number as a float; null (written for a number that is not finite, or a k-hat not
    computed) as ``null``: NaN, or -inf for a log-density whose weights were all zero."""
    return null if value is None else float(value)


def _fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals; "n/a" for NaN (undefined, e.g. k-hat at small K)."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def comparison_caveats(rows: list[Comparison]) -> list[str]:
    """One line for each run whose evaluation predates its checkpoint (a resumed run), and for
    each run whose estimate is unreliable (PSIS k-hat above the threshold) for some of its
    datapoints, naming the share: the ranking rests on those estimates."""
    threshold = arviz_compat.KHAT_THRESHOLD
    lines = []
    for r in rows:
        if (
            r.checkpoint_epochs is not None
            and r.epochs_trained is not None
            and r.epochs_trained != r.checkpoint_epochs
        ):
            lines.append(
                f"caveat: {r.run}: its evaluation {r.setting} was made after "
                f"{plural(r.epochs_trained, 'epoch')}, and the run has trained for "
                f"{plural(r.checkpoint_epochs, 'epoch')} since; evaluate it again for the "
                "current model"
            )
        if r.method == "ais":
            continue  # no importance weights: its error bars are over its chains
        if r.method == "auto":
            if r.frac_unreliable > 0:
                lines.append(
                    f"caveat: {r.run}: {100 * r.frac_unreliable:.1f}% of its datapoints are still "
                    "flagged after escalation (k-hat or error bar; a larger --max-seconds lets "
                    "AIS reach them)"
                )
            continue
        share = r.frac_khat_above_threshold
        if math.isnan(share):
            lines.append(f"caveat: {r.run}: k-hat was not computed (too few importance samples)")
        elif share > 0:
            most = "most of its" if share > 0.5 else "some of its"
            lines.append(
                f"caveat: {r.run}: {100 * share:.1f}% of its datapoints have k-hat > {threshold} "
                f"({most} estimates of log p(x) are unreliable lower bounds; more samples or a "
                "better proposal may change the ranking)"
            )
    return lines


def _identity_value(evaluation: dict[str, Any], key: str):
    if key == "method_settings" and key not in evaluation:  # before methods: IWAE with K
        return {"num_samples": evaluation.get("num_samples")}
    return evaluation.get(key, IDENTITY_DEFAULTS.get(key))


def format_comparison(rows: list[Comparison], markdown: bool = False) -> str:
    header = [
        "rank",
        "run",
        "model (prior/likelihood/guide/objective)",
        "log p(x)",
        "MC se",
        "ELBO",
        "gap",
        "k-hat max",
        "k-hat>0.7",
        "diff to best",
        "diff se",
    ]
    body = [
        [
            str(i + 1),
            r.run,
            r.label,
            _fixed(r.log_px, 3),
            _fixed(r.log_px_stderr, 3),
            _fixed(r.elbo, 3),
            _fixed(r.gap, 3),
            _fixed(r.khat_max, 2),
            _fixed(100 * r.frac_khat_above_threshold, 1) + "%"
            if not math.isnan(r.frac_khat_above_threshold)
            else "n/a",
            _fixed(r.diff, 3),
            _fixed(r.diff_se, 3),
        ]
        for i, r in enumerate(rows)
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[j]) for b in body)) for j, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if j < 3 else '>'}{w}}}" for j, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [header, *body])


def write_comparison_csv(rows: list[Comparison], path: str | Path) -> None:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dataclasses.asdict(rows[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in rows)
    atomic_write_text(Path(path), out.getvalue())


def plot(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str | None = None,
    num_samples: int | None = None,
    precision: str | None = None,
    method: str | None = None,
) -> list[Path]:
    """Draw every figure of a run into ``out_dir`` (default RUN_DIR/plots); return the paths.

    Figures that need an evaluation (bound vs K, k-hat, gap) are drawn from the run's one kept
    evaluation, or the one ``split``, ``num_samples`` and ``precision`` select (ambiguity raises).
    """
    from pyro_vae import plots

    run = RunDir(run_dir).require()
    config, vae, meta = load_run(run_dir, "cpu")
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    history = run.read_metrics()
    if history:
        figures["training"] = plots.training_curves(
            [r.epoch for r in history],
            [r.train_objective for r in history],
            [r.val_elbo for r in history],
            [r.beta for r in history],
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
    wanted = {"split": split, "num_samples": num_samples, "precision": precision, "method": method}
    if run.select_evaluations(**wanted) or any(v is not None for v in wanted.values()):
        kept = run.find_evaluation(**wanted)  # raises when it is ambiguous or missing
        ev, idata = kept.summary, kept.inference_data()
        if ev.get("epochs_trained") != meta["epoch"]:
            raise CheckpointError(
                f"the evaluation {kept.setting} of {run.path} was made after "
                f"{plural(ev.get('epochs_trained') or 0, 'epoch')}, but its checkpoint has "
                f"{meta['epoch']}: its "
                "figures would describe another model; evaluate it again "
                f"(pyro-vae evaluate {run.path})"
            )
        log_px = idata.log_likelihood["log_px"].values[0, 0]
        elbo = idata.log_likelihood["elbo"].values[0, 0]
        if "bounds_vs_k" in ev:  # importance sampling's; AIS has no L_K
            proposal = "refined proposals" if ev.get("method") == "refined" else "the guide"
            series = {f"L_K from {proposal} (mean over datapoints)": ev["bounds_vs_k"]}
            figures["bound_vs_k"] = plots.bound_vs_k(series, ev["elbo"])
        khat = idata.sample_stats["khat"].values[0, 0]
        if np.isfinite(khat).any():  # not computed below PSIS_MIN_SAMPLES
            figures["khat"] = plots.khat(khat)
        figures["gap"] = plots.gap_histogram(log_px - elbo)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, bbox_inches="tight" if name == "samples" else None)
        paths.append(path)
    return paths
