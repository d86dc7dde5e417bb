"""Scaling of training and evaluation: epoch time against data set size, evaluation time against K.

Both should be linear: an epoch is N / B identical steps, and the estimator draws K particles in
passes of fixed size. Prints a table, writes JSON and a two-panel PNG with least-squares lines.

Usage: python benchmarks/scaling.py [--device cpu|cuda] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from bench import DATA_DIM, HIDDEN, LATENT, load_images, sync

from pyro_vae.config import ModelConfig
from pyro_vae.infer import DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.registry import build_vae
from pyro_vae.training import Trainer


def epoch_seconds(data, sizes, device, repeats=3) -> list[float]:
    out = []
    for n in sizes:
        pyro.clear_param_store()
        vae = build_vae(ModelConfig(latent_dim=LATENT, hidden=HIDDEN), DATA_DIM).to(device)
        trainer = Trainer(
            vae,
            data[:n],
            elbo=DeviceTrace_ELBO(max_plate_nesting=1),
            lr=1e-4,
            batch_size=128,
            progress=False,
            log_every=10**9,
        )
        trainer.train_epoch()  # warm-up
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            trainer.train_epoch()
            sync(device)
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out


def eval_seconds(data, ks, device, points=100, repeats=3) -> list[float]:
    pyro.clear_param_store()
    vae = build_vae(ModelConfig(latent_dim=LATENT, hidden=HIDDEN), DATA_DIM).to(device)
    x = data[:points]
    importance_log_likelihood(vae.model, vae.guide, x, num_samples=64, max_plate_nesting=1)
    out = []
    for k in ks:
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            importance_log_likelihood(vae.model, vae.guide, x, num_samples=k, max_plate_nesting=1)
            sync(device)
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out


def linear_fit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, intercept, 1 - ss_res / ss_tot


def plot(result, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    axes = fig.subplots(1, 2)
    for ax, key, xlabel, title in (
        (axes[0], "train", "training images N", "One epoch (batch 128) against N"),
        (
            axes[1],
            "evaluate",
            "K (importance samples per datapoint)",
            f"log p(x) of {result['evaluate']['points']} images against K",
        ),
    ):
        xs, ys = result[key]["x"], result[key]["seconds"]
        slope, intercept, r2 = linear_fit(xs, ys)
        ax.plot(xs, ys, "o", label="measured (median of 3)")
        ax.plot(xs, [slope * x + intercept for x in xs], "-", label=f"least squares, R^2={r2:.4f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Scaling on {result['device']} ({result['network']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="fewer, smaller sizes")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("scaling: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    data, source = load_images(16000, device)
    sizes = [1000, 2000, 4000] if args.quick else [1000, 2000, 4000, 8000, 16000]
    ks = [100, 500, 1000] if args.quick else [100, 500, 1000, 2000, 5000]
    train = epoch_seconds(data, sizes, device)
    evaluate = eval_seconds(data, ks, device)
    result = {
        "device": args.device,
        "data": source,
        "network": f"{DATA_DIM}-{'-'.join(map(str, HIDDEN))}-{LATENT} MLP",
        "train": {"x": sizes, "seconds": train, "r2": linear_fit(sizes, train)[2]},
        "evaluate": {
            "x": ks,
            "seconds": evaluate,
            "points": 100,
            "r2": linear_fit(ks, evaluate)[2],
        },
    }
    print("| N | epoch s |\n|---:|---:|")
    print("\n".join(f"| {n} | {t:.3f} |" for n, t in zip(sizes, train, strict=True)))
    print(f"\nlinear fit R^2 = {result['train']['r2']:.4f}\n\n| K | evaluation s |\n|---:|---:|")
    print("\n".join(f"| {k} | {t:.3f} |" for k, t in zip(ks, evaluate, strict=True)))
    print(f"\nlinear fit R^2 = {result['evaluate']['r2']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
