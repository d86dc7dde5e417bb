"""Evaluating a run: log p(x) and its diagnostics, written as one evaluation; the BDMC
sandwich; and their printed summaries."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import arviz_compat, registry
from pyro_vae.build import load_data, prepare_splits
from pyro_vae.config import RunConfig
from pyro_vae.distributed import SINGLE, World, broadcast_object, estimate, sharded
from pyro_vae.errors import ConfigError
from pyro_vae.infer.ais import (
    AIS,
    ais_log_likelihood,
    latent_rows,
    reverse_ais_log_likelihood,
)
from pyro_vae.infer.diagnostics import active_units, bounds_vs_k, guide_means, kl_per_dimension
from pyro_vae.infer.estimators import get, settings_for
from pyro_vae.infer.importance import IWAE
from pyro_vae.infer.latent import LatentSpace
from pyro_vae.jobs.loading import load_run
from pyro_vae.memory import free_memory_bytes
from pyro_vae.records import Evaluation, PerPoint
from pyro_vae.runs import RunDir
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
    "first",
    "precision",
    "method",
    "method_settings",
)


# ... of which these are fixed by training: re-evaluating cannot make them agree.
TRAINING_DATA_KEYS = ("dataset", "binarize", "binarize_seed", "dequantize", "levels")


def evaluate(
    run_dir: str | Path,
    *,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    split: str = "test",
    device: str = "auto",
    precision: str = "fp32",
    progress: bool | str = False,
    method: str = IWAE.name,
    first: int | None = None,
    checkpoint: str | None = None,
    world: World = SINGLE,
    **settings,
) -> Evaluation | None:
    """log p(x) against the ELBO on a split, kept in the run directory as
    ``evaluations/SETTING.json`` and ``.nc`` (one evaluation per setting: another split, method,
    K or precision adds one; the same setting replaces its earlier one).

    ``method`` (a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`) and ``settings`` (the
    fields of its ``Settings``; a setting it does not take is refused) choose the estimator:
    ``iwae``, the default, is importance sampling from the guide with K = ``num_samples``, the
    fastest; ``auto`` certifies each datapoint's estimate (importance sampling from the guide
    where PSIS passes it, refined proposals, then AIS; see
    :func:`~pyro_vae.infer.escalate.auto_log_likelihood`). The
    method and its settings are recorded in the evaluation, and :func:`compare` does not rank
    evaluations of different methods together unless asked.

    The split is binarised (if the run binarises) with the run's fixed ``binarize_seed`` and the
    estimator is seeded with the run's seed, so evaluating twice gives the same numbers.
    ``precision="bf16"`` runs the networks in bfloat16 (faster on hardware with bf16 matrix
    units; log-densities stay float32): an approximation of the float32 estimate, recorded in the
    summary, and :func:`compare` refuses to rank it against float32 evaluations.

    ``first`` evaluates the first ``first`` datapoints of the split only: a cheaper estimate
    of the same quantity on a subset, kept as a setting of its own (``test-K1000-fp32-first500``)
    and never ranked against the whole split. When the split holds no more than ``first``, the
    whole split is evaluated, and kept as an evaluation without ``first``.

    A run trained with early stopping is scored at its best epoch's checkpoint; ``checkpoint=
    "last"`` scores its last one instead, kept as a setting of its own (``test-K1000-fp32-last``),
    and ``"best"`` insists on the best one (see :func:`~pyro_vae.jobs.loading.load_run`).

    Every method runs in seeded blocks of fixed size (:mod:`pyro_vae.infer.driver`): with
    ``world`` holding several ranks (a torchrun launch), the ranks share the blocks
    (:func:`~pyro_vae.distributed.estimate`), and the numbers are the same, bit for bit, whatever
    the number of processes or the free memory; ``processes`` records it; rank 0 writes and
    returns the evaluation,
    the other ranks return None. Every rank reads the run directory: on several machines it
    must be on a filesystem they share.
    """
    dtype = registry.build_precision(precision)
    estimator = get(method)
    chosen = settings_for(method, num_samples=num_samples, chunk_size=chunk_size, **settings)
    config, vae, meta = load_run(run_dir, device, checkpoint)
    if world.is_main:
        RunDir(run_dir).check_writable()  # before the computation, whose result must go somewhere
    data = prepare_splits(config, load_data(config, world), vae.likelihood, (split,), fixed=True)
    x = data[split]
    if first is not None:
        if first < 1:
            raise ConfigError(f"must be at least 1, got {first}", option="args.first")
        if first >= x.shape[0]:  # the whole split: the same setting as without it
            first = None
        else:
            x = x[:first]
    x = x.to(next(vae.parameters()).device)
    k = estimator.draws_per_point(chosen)
    if estimator.has_khat and world.is_main:  # K x N log weights for k-hat, on rank 0
        check_log_weights_fit(k, x.shape[0])
    if hasattr(chosen, "ais_chains"):
        check_chains_fit(chosen.ais_chains, config, meta["data_dim"], x.device)
    pyro.set_rng_seed(config.train.seed)  # guide means drawn by sampling (flows) repeat
    start = time.perf_counter()
    with vae.precision(dtype):
        result = estimate(
            estimator,
            chosen,
            vae.model,
            vae.guide,
            x,
            seed=config.train.seed,
            world=world,
            max_plate_nesting=1,
            progress=progress,
        )
    if result is None:  # a rank other than 0: its blocks went to rank 0
        return None
    seconds = time.perf_counter() - start
    per_point = PerPoint.of(result)
    with torch.no_grad():
        q = vae.encoder(x)
        n_active, _ = active_units(guide_means(q).cpu())
        prior = vae.marginal_prior  # None with a layer above z: its p(z|z2) has no KL here
        kl = None if prior is None else kl_per_dimension(q, prior)
    n = x.shape[0]
    summary: dict[str, Any] = {
        "log_px": per_point.log_px.mean().item(),
        "log_px_stderr": (per_point.stderr.pow(2).sum().sqrt() / n).item() if k > 1 else None,
        "log_px_std": per_point.log_px.std().item() if n > 1 else 0.0,
        "elbo": per_point.elbo.mean().item(),
        "gap": (per_point.log_px - per_point.elbo).mean().item(),
        "ess_mean": per_point.ess.mean().item(),
        "ess_min": per_point.ess.min().item(),
        **khat_summary(result.khat, k, estimator.khat_note(k)),
    }
    if result.log_weights is not None:
        bounds = bounds_vs_k(result.log_weights, BOUND_KS + (k,))
        summary["bounds_vs_k"] = {str(kk): v.mean().item() for kk, v in bounds.items()}
    summary.update(
        {
            "active_units": n_active,
            "latent_dim": vae.latent_dim,
            "kl_per_dim": None if kl is None else [round(v, 6) for v in kl.cpu().tolist()],
            "method": method,
            "method_settings": chosen.recorded(),
            "method_summary": estimator.summary(result, chosen),
            "num_samples": k,
            "num_datapoints": n,
            "first": first,
            "precision": precision,
            "dataset": config.data.dataset,
            "split": split,
            "binarize": config.data.binarize,
            "binarize_seed": config.data.binarize_seed,
            "dequantize": config.data.dequantize,
            "levels": meta.get("levels"),
            **run_fields(config, meta),
            "seconds": seconds,
            "processes": world.size if world.is_distributed else None,
        }
    )
    bpd = bits_per_dim(summary["log_px"], meta["data_dim"], vae.likelihood, config, meta)
    if bpd is not None:
        summary["bits_per_dim"] = bpd
    evaluation = Evaluation(**summary)
    attrs = {
        k: getattr(evaluation, k)
        for k in IDENTITY_KEYS + ("likelihood", "prior", "guide", "objective", "seed")
        if k != "method_settings"  # a dict: in the json summary only
    }
    stats = per_point.stats(estimator.stage_names())
    idata = arviz_compat.to_inference_data(
        {"log_px": per_point.log_px.numpy(), "elbo": per_point.elbo.numpy()}, stats, attrs
    )
    stored = RunDir(run_dir).write_evaluation(evaluation, idata)
    return stored.evaluation.replace(per_point=per_point)


def bdmc(
    run_dir: str | Path,
    *,
    num_datapoints: int = 100,
    num_samples: int = 1000,
    device: str = "auto",
    progress: bool | str = False,
    world: World = SINGLE,
    **settings,
) -> dict[str, Any] | None:
    """The BDMC sandwich of a run's model on ``num_datapoints`` datapoints simulated from it.

    Forward AIS gives a stochastic lower bound and reverse AIS from the simulated latents an
    upper bound of each simulated datapoint's log p(x) (:func:`pyro_vae.infer.bdmc`); IWAE from
    the guide with K = ``num_samples`` is reported on the same data, below the upper bound.
    ``settings`` (``ais_steps``, ``ais_chains``, ``ais_leapfrog``) are AIS's, as for
    :func:`evaluate`. Kept in ``RUN_DIR/bdmc/bdmc-T{steps}-C{chains}.json`` with the simulated
    data, latents and per-datapoint bounds in ``.npz`` beside it.

    With ``world`` holding several ranks (a torchrun launch), rank 0 simulates the data and
    sends it to the others; the ranks share both directions of AIS and the IWAE estimate in
    seeded blocks (:func:`~pyro_vae.distributed.sharded`; the two directions from streams of
    their own), so the numbers do not depend on the number of processes; ``processes``
    records it, and rank 0 writes and returns the summary (the other ranks return None).
    """
    chosen = settings_for(AIS.name, **settings)
    iwae_settings = settings_for(IWAE.name, num_samples=num_samples)
    if num_datapoints < 1:
        raise ConfigError(f"must be at least 1, got {num_datapoints}", option="args.num_datapoints")
    if num_datapoints > MAX_BDMC_DATAPOINTS:
        raise ConfigError(
            f"must be at most {MAX_BDMC_DATAPOINTS}, got {num_datapoints} (each is simulated, "
            "kept in memory with its latents, and run through AIS in both directions)",
            option="args.num_datapoints",
        )
    check_log_weights_fit(num_samples, num_datapoints)
    config, vae, meta = load_run(run_dir, device)
    check_chains_fit(chosen.ais_chains, config, meta["data_dim"], next(vae.parameters()).device)
    run = RunDir(run_dir)
    if world.is_main:
        run.check_writable()
    param = next(vae.parameters())
    x_like = torch.zeros(num_datapoints, meta["data_dim"], dtype=param.dtype, device=param.device)
    pyro.set_rng_seed(config.train.seed)
    start = time.perf_counter()
    ais = {**chosen.ais(), "max_plate_nesting": 1}
    result = _sandwich(vae, x_like, ais, config.train.seed, world, progress)
    ais_seconds = time.perf_counter() - start
    iwae = estimate(
        get(IWAE.name),
        iwae_settings,
        vae.model,
        vae.guide,
        result.x,
        seed=config.train.seed,
        world=world,
        max_plate_nesting=1,
        progress=progress,
    )
    if iwae is None:  # a rank other than 0: its blocks went to rank 0
        return None
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
        "method_settings": chosen.recorded(),
        **run_fields(config, meta),
        "seconds": ais_seconds,
        "processes": world.size if world.is_distributed else None,
    }
    name = f"bdmc-T{chosen.ais_steps}-C{chosen.ais_chains}"
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


# The streams of BDMC's two directions in a launch (block_seed's ``stream``; IWAE has 0).
BDMC_LOWER, BDMC_UPPER = 1, 2


def _sandwich(vae, x_like, ais: dict[str, Any], seed: int, world: World, progress):
    """BDMC's simulation (on rank 0, sent to the other ranks of a launch) and its two directions
    of AIS in seeded blocks (:func:`~pyro_vae.infer.driver.by_blocks`, shared among the ranks
    of a launch): the same numbers in one process or several. The whole sandwich on rank 0; on
    the others the simulated data, without bounds."""
    from pyro_vae.infer import BDMCResult
    from pyro_vae.infer.latent import simulate

    simulated = None
    if world.is_main:
        x, latents = simulate(vae.model, x_like)
        simulated = x.cpu(), {k: v.cpu() for k, v in latents.items()}
    x, latents = broadcast_object(simulated, world) if world.is_distributed else simulated
    x = x.to(x_like.device)
    latents = {k: v.to(x_like.device) for k, v in latents.items()}

    def forward(rows: torch.Tensor):
        return ais_log_likelihood(vae.model, vae.guide, rows, batch_size=rows.shape[0], **ais)

    def reverse(index: torch.Tensor):  # a block's row indices: it needs the rows' latents too
        first, stop = int(index[0]), int(index[-1]) + 1
        rows = x[first:stop]
        space = LatentSpace(vae.model, vae.guide, rows, max_plate_nesting=1)
        start = latent_rows(latents, space, first, stop, x.shape[0])
        return reverse_ais_log_likelihood(
            vae.model, vae.guide, rows, start, batch_size=stop - first, **ais
        )

    bar = {"progress": progress}
    lower = sharded(forward, x, seed=seed, world=world, stream=BDMC_LOWER, desc="AIS", **bar)
    index = torch.arange(x.shape[0], device=x.device)
    desc = "reverse AIS"
    upper = sharded(reverse, index, seed=seed, world=world, stream=BDMC_UPPER, desc=desc, **bar)
    return BDMCResult(x=x, latents=latents, lower=lower, upper=upper)


def run_fields(config: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation or a BDMC result records of the run it scored."""
    return {
        "likelihood": config.model.likelihood,
        "prior": config.model.prior,
        "guide": config.model.guide,
        "objective": config.train.elbo,
        "epochs_trained": meta["epoch"],
        "checkpoint": meta.get("checkpoint"),
        "seed": config.train.seed,
    }


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


# Datapoints simulated by one BDMC run (pyro-vae bdmc --num-datapoints).
MAX_BDMC_DATAPOINTS = 100_000
# Values one AIS chain holds per number of its network's units: the state, its momentum and
# gradient, and the activations of a forward and backward pass (float32), with room to spare.
_CHAIN_COPIES = 8


def check_chains_fit(chains: int, config: RunConfig, data_dim: int, device) -> None:
    """Refuse an AIS run whose ``chains`` for one datapoint (AIS's smallest block) would not fit
    in the device's free memory: each holds its latent state, momentum and gradient and the
    networks' activations."""
    m = config.model
    units = m.latent_dim + (m.top_latent_dim or 0) + data_dim + 2 * sum(m.hidden)
    need = chains * units * 4 * _CHAIN_COPIES
    free = free_memory_bytes(torch.device(device))
    if free is not None and need > free:
        raise ConfigError(
            f"{chains} AIS chains per datapoint need about {need / 1e9:.3g} GB for one "
            f"datapoint's states and activations, more than the {free / 1e9:.3g} GB free; "
            "choose fewer chains",
            option="estimator.ais_chains",
        )


def check_log_weights_fit(num_samples: int, num_datapoints: int) -> None:
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


def khat_summary(
    khat: torch.Tensor, num_samples: int, no_khat: str | None = None
) -> dict[str, Any]:
    """The k-hat fields of an evaluation. Below :data:`~pyro_vae.arviz_compat.PSIS_MIN_SAMPLES`
    importance samples PSIS has no tail to fit, and a method without importance weights (AIS,
    whose estimator says why in ``no_khat``) has none: the fields are None and ``khat_note``
    says why. Datapoints without a k-hat (NaN: AIS's, under ``auto``) are neither averaged nor
    counted above the threshold."""
    threshold = arviz_compat.KHAT_THRESHOLD
    finite = khat[torch.isfinite(khat)]
    if no_khat or num_samples < arviz_compat.PSIS_MIN_SAMPLES or not finite.numel():
        if no_khat:
            why = no_khat
        elif num_samples >= arviz_compat.PSIS_MIN_SAMPLES:
            why = "no datapoint's final estimate has importance weights (all reached AIS)"
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
    unreliable = int((finite > threshold).sum())
    return {
        "khat_mean": finite.mean().item(),
        "khat_max": finite.max().item(),
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


def _data_label(ev: Evaluation) -> str:
    if ev.dequantize != "none":
        return f"dequantize={ev.dequantize}"
    return f"binarize={ev.binarize}"


def _estimator_label(ev: Evaluation) -> str:
    """``K=1000 importance samples``, ``AIS with 16 chains x 500 distributions``, ..."""
    return get(ev.method).describe(ev.num_samples, ev.method_settings)


def format_evaluation(ev: Evaluation) -> str:
    """A short, readable summary of :func:`evaluate`'s result."""
    stderr = ev.log_px_stderr
    if stderr is not None and math.isfinite(stderr):
        error_bar = f"(± {stderr:.3f} Monte Carlo stderr)"
    elif ev.num_samples == 1:
        error_bar = "(no Monte Carlo stderr from one sample)"
    else:  # written as null: infinite, where some datapoint got no weight at all
        error_bar = "(Monte Carlo stderr unbounded: some datapoints' weights are all zero)"
    lines = [
        f"{ev.dataset} ({ev.split} split, {_data_label(ev)}), "
        f"{'the first ' if ev.first is not None else ''}"
        f"{plural(ev.num_datapoints, 'datapoint')}, {_estimator_label(ev)}, "
        f"{plural(ev.epochs_trained, 'epoch')}"
        + (" (the best epoch's checkpoint)" if ev.checkpoint == "best" else "")
        + (" (the last checkpoint, not the best epoch's)" if ev.checkpoint == "last" else "")
        + (f", networks in {ev.precision}:" if ev.precision != "fp32" else ":"),
        f"  log p(x)  {ev.log_px:10.3f} nats  {error_bar}",
        f"  ELBO      {ev.elbo:10.3f} nats",
        f"  gap       {ev.gap:10.3f} nats  (log p(x) - ELBO, estimates KL(q || posterior))",
        f"  ESS       {ev.ess_mean:10.1f} of {ev.num_samples} on average (min {ev.ess_min:.1f})",
    ]
    if ev.method_summary:
        lines += get(ev.method).summary_lines(ev.method_summary, ev.num_datapoints, ev.num_samples)
    if ev.khat_note:
        lines.append(f"  k-hat     {ev.khat_note}")
    elif ev.khat_max is not None:
        above = ev.num_khat_above_threshold
        verdict = "reliable" if above == 0 else "NOT reliable for these"
        lines.append(
            f"  k-hat     {ev.khat_mean:10.2f} mean, {ev.khat_max:.2f} max; "
            f"{above} of {ev.num_datapoints} datapoints above "
            f"{ev.khat_threshold} ({verdict})"
        )
    if ev.bounds_vs_k is not None:
        bounds = ", ".join(f"L_{k} {v:.2f}" for k, v in ev.bounds_vs_k.items())
        lines.append(f"  bound/K   {bounds}")
    if ev.active_units is not None:
        lines.append(f"  active    {ev.active_units} of {ev.latent_dim} latent dimensions")
    if ev.bits_per_dim is not None:
        lines.append(f"  bits/dim  {ev.bits_per_dim:10.4f}")
    return "\n".join(lines)
