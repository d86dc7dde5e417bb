"""How far bfloat16 networks move the estimate: log p(x) with the networks in fp32 and in bf16.

Trains the quick-start model (or takes a trained run with ``--run``), then estimates log p(x) on the
test split twice with the same seed, so both use the same random numbers: once with the networks in
float32 and once in bfloat16 (``VAE.precision``). Prints the mean and largest per-datapoint
difference beside the Monte Carlo standard error, and the time of each. Writes ``table.md``.

Usage: python experiments/precision.py [--run RUN_DIR] [--out DIR] [--eval-samples K]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import jobs
from pyro_vae.cli import add_config_flags, config_from_flags
from pyro_vae.config import RunConfig
from pyro_vae.infer import importance_log_likelihood


def compare_precisions(run_dir: Path, num_samples: int, split: str = "test") -> dict:
    config, vae, _ = jobs.load_run(run_dir)
    data = jobs.prepare_splits(config, jobs.load_data(config), vae.likelihood, (split,))
    x = data[split].to(next(vae.parameters()).device)
    results, seconds = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        pyro.set_rng_seed(config.train.seed)
        start = time.perf_counter()
        with vae.precision(dtype):
            results[name] = importance_log_likelihood(
                vae.model, vae.guide, x, num_samples=num_samples, max_plate_nesting=1
            )
        seconds[name] = time.perf_counter() - start
    diff = results["bf16"].log_px - results["fp32"].log_px
    n = x.shape[0]
    return {
        "points": n,
        "num_samples": num_samples,
        "log_px_fp32": results["fp32"].log_px.mean().item(),
        "log_px_bf16": results["bf16"].log_px.mean().item(),
        "mean_diff": diff.mean().item(),
        "max_abs_diff": diff.abs().max().item(),
        "stderr_of_mean": (results["fp32"].stderr.pow(2).sum().sqrt() / n).item(),
        "mean_stderr_per_point": results["fp32"].stderr.mean().item(),
        "seconds_fp32": seconds["fp32"],
        "seconds_bf16": seconds["bf16"],
    }


def format_table(r: dict) -> str:
    return "\n".join(
        [
            "| networks | log p(x) | seconds |",
            "|---|---:|---:|",
            f"| fp32 | {r['log_px_fp32']:.4f} | {r['seconds_fp32']:.2f} |",
            f"| bf16 | {r['log_px_bf16']:.4f} | {r['seconds_bf16']:.2f} |",
            "",
            f"bf16 - fp32 on the same draws, {r['points']} test points, K={r['num_samples']}: "
            f"mean {r['mean_diff']:+.5f} nats, largest per point {r['max_abs_diff']:.5f} nats; "
            f"Monte Carlo stderr of the mean {r['stderr_of_mean']:.5f}, per point "
            f"{r['mean_stderr_per_point']:.5f} on average.",
        ]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None, help="a trained run (default: train one)")
    p.add_argument("--out", type=Path, default=Path("experiments/out/precision"))
    add_config_flags(p, RunConfig(), ("train.eval_samples", "train.epochs"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run
    if run_dir is None:
        run_dir = args.out / "run"
        if not (run_dir / "checkpoint.pt").is_file():
            config = config_from_flags(args, RunConfig())
            jobs.train(config, run_dir, evaluate_at_end=False, progress=False, echo=lambda s: None)
    table = format_table(compare_precisions(run_dir, args.eval_samples))
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
