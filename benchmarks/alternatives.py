"""Speed-ups measured and not adopted: torch.compile of the networks, Pyro's JitTrace_ELBO.

  * ``torch.compile`` on the encoder and decoder networks only (the ELBO graph itself breaks on
    Pyro's effect handlers): evaluation with K=1000 on 100 images, and a training step at batch
    128, for the benchmark's 784-512-512-50 VAE;
  * Pyro's ``JitTrace_ELBO`` (``torch.jit.trace`` of the whole loss) against ``DeviceTrace_ELBO``
    on the framework-overhead network (784-16-4, batch 8), where a step is Python and dispatch.
Medians of interleaved repeats after warm-up (compilation excluded). Prints a table.

Usage: python benchmarks/alternatives.py [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pyro
import torch
from bench import DATA_DIM, HIDDEN, LATENT, cycling, load_images, median_seconds_per_call
from pyro.infer import SVI, JitTrace_ELBO

from pyro_vae.config import ModelConfig
from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.infer.optim import JointAdam
from pyro_vae.registry import build_vae


def _vae(cfg, name, device, compiled=False):
    vae = build_vae(cfg, DATA_DIM).to(device)
    vae.name = name
    if compiled:
        vae.encoder.net.forward = torch.compile(vae.encoder.net.forward)
        vae.decoder.forward = torch.compile(vae.decoder.forward)
    return vae


def _svi_cycling(svi, vae, batches, num_data):
    index = torch.arange(batches[0].shape[0], device=batches[0].device)
    return cycling(lambda xb: svi.step(xb, index=index, num_data=num_data), batches, vae)


def compile_rows(device, data, test) -> list[dict]:
    cfg = ModelConfig(latent_dim=LATENT, hidden=HIDDEN)
    pyro.clear_param_store()
    vaes = {"eager": _vae(cfg, "eager", device), "compiled": _vae(cfg, "compiled", device, True)}
    x = test[:100]

    def evaluate(vae):
        return lambda: importance_log_likelihood(
            vae.model, vae.guide, x, num_samples=1000, max_plate_nesting=1
        )

    batches = [data[i : i + 128] for i in range(0, 2048, 128)]
    steps = {
        name: _svi_cycling(
            DeviceSVI(vae.model, vae.guide, JointAdam({"lr": 1e-4}), DeviceTrace_ELBO()),
            vae,
            batches,
            2048,
        )
        for name, vae in vaes.items()
    }
    with pyro.validation_enabled(False):
        for name in vaes:  # warm-up, compilation included
            evaluate(vaes[name])()
            steps[name]()
            steps[name]()
        ev = median_seconds_per_call({n: evaluate(v) for n, v in vaes.items()}, 1, 5, device)
        tr = median_seconds_per_call(steps, 30, 5, device)
    return [
        {"what": "evaluate K=1000, 100 images (s)", **ev},
        {"what": "train step, batch 128 (ms)", **{k: 1e3 * v for k, v in tr.items()}},
    ]


def jit_row(device, data) -> dict:
    cfg = ModelConfig(latent_dim=4, hidden=(16,))
    batches = [data[i : i + 8] for i in range(0, 512, 8)]
    steps = {}
    for name, make in (
        (
            "DeviceTrace_ELBO",
            lambda v: DeviceSVI(v.model, v.guide, JointAdam({"lr": 1e-4}), DeviceTrace_ELBO()),
        ),
        (
            "JitTrace_ELBO",
            lambda v: SVI(
                v.model, v.guide, JointAdam({"lr": 1e-4}), JitTrace_ELBO(ignore_jit_warnings=True)
            ),
        ),
    ):
        vae = _vae(cfg, name, device)
        steps[name] = _svi_cycling(make(vae), vae, batches, 512)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
        median_seconds_per_call(steps, 20, 1, device)
        t = median_seconds_per_call(steps, 200, 5, device)
    return {"what": "overhead step, 784-16-4 batch 8 (us)", **{k: 1e6 * v for k, v in t.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    data, _ = load_images(2048, device)
    test, _ = load_images(100, device, split="test")
    rows = compile_rows(device, data, test)
    jit = jit_row(device, data)
    lines = ["| measurement | eager | torch.compile(networks) | ratio |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['eager']:.3g} | {r['compiled']:.3g} "
            f"| {r['compiled'] / r['eager']:.2f} |"
        )
    lines += [
        "",
        "| measurement | DeviceTrace_ELBO | JitTrace_ELBO | ratio |",
        "|---|---:|---:|---:|",
        f"| {jit['what']} | {jit['DeviceTrace_ELBO']:.0f} | {jit['JitTrace_ELBO']:.0f} "
        f"| {jit['JitTrace_ELBO'] / jit['DeviceTrace_ELBO']:.2f} |",
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"compile": rows, "jit": jit}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
