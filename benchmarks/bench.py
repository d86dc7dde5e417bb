"""Speed and memory of pyro_vae against hand-written PyTorch, in one process on one device.

Measures, for the same 784-512-512-50 MLP VAE, the same data held on the device and the same batch:
  * training throughput (images/s) of pyro_vae's SVI step with Trace_ELBO and TraceMeanField_ELBO,
    and of a hand-written PyTorch step computing the same ELBO (the reference limit), and the
    ratio reference / pyro (1.0 is parity, larger is slower);
    Both in float32 and with the networks in bfloat16 (``VAE.precision``; the reference runs its
    networks under the same autocast);
  * convolutional networks (``--net conv``: 32 and 64 channels, then 512 hidden, 50 latent) at
    batch 128: pyro_vae's step against the hand-written step of the same modules;
  * framework overhead: the same steps for a 784-16-4 network at batch 8, whose arithmetic is
    negligible, so the time is Python and operator dispatch: the floor of a step on a GPU, where
    the kernels themselves take microseconds;
  * evaluation: importance_log_likelihood with K samples on N test images, batched, against the
    same estimator called one datapoint at a time (how per-point evaluation code works), the
    peak memory of the batched call, and the batched call with the networks in bfloat16 (time,
    and its difference from float32 on the same draws).
Times are medians of repeats after warm-up. Data: Fashion-MNIST (dynamically binarised once;
training images for training, test images for evaluation) when the files are found offline,
else random binary images of the same shape.

Usage: python benchmarks/bench.py [--device cpu|cuda] [--quick] [--json PATH]
       [--eval-points N] [--peak-tflops P]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.optim
import torch
import torch.nn.functional as F

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import DataError
from pyro_vae.infer import (
    DeviceSVI,
    DeviceTrace_ELBO,
    DeviceTraceMeanField_ELBO,
    importance_log_likelihood,
)
from pyro_vae.infer.optim import JointAdam
from pyro_vae.registry import build_elbo, build_vae

LATENT, HIDDEN, DATA_DIM = 50, (512, 512), 784
IMAGE_SHAPE = (28, 28)
CONV = {"net": "conv", "channels": (32, 64), "hidden": (512,)}
ELBOS = {"trace": DeviceTrace_ELBO, "meanfield": DeviceTraceMeanField_ELBO}


def load_images(n: int, device: torch.device, split: str = "train") -> tuple[torch.Tensor, str]:
    from pyro_vae.data import load_dataset

    try:
        x = load_dataset("fashion-mnist", download=False).split(split)[:n]
        source = "fashion-mnist (binarised)"
    except DataError:
        x = torch.rand(n, DATA_DIM)
        source = "random binary images (fashion-mnist not found)"
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(x, generator=g).to(device), source


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds_per_call(fns: dict, calls: int, repeats: int, device) -> dict[str, float]:
    """Interleaved timing: each repeat times ``calls`` calls of every function in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


class ReferenceStep:
    """The same VAE step written directly in PyTorch: the speed limit for this network."""

    def __init__(self, vae, lr: float, num_data: int, analytic_kl: bool):
        self.vae = vae
        self.enc, self.dec = vae.encoder.net, vae.decoder
        params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt = torch.optim.Adam(params, lr=lr)
        self.num_data = num_data
        self.analytic_kl = analytic_kl

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        loc, log_var = self.enc(x).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_px_z = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        if self.analytic_kl:
            kl = 0.5 * (scale**2 + loc**2 - 1.0 - log_var).sum(-1)
        else:  # one-sample estimate log q(z|x) - log p(z), as Trace_ELBO
            kl = (-0.5 * eps**2 - torch.log(scale) + 0.5 * z**2).sum(-1)
        loss = -(log_px_z - kl).sum() * (self.num_data / x.shape[0])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # as DeviceSVI: no gradients held between steps
        return loss.detach()


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def bench_train(
    device,
    batch_sizes,
    steps,
    repeats,
    data,
    precisions=PRECISIONS,
    cfg=None,
    label="",
    measure_memory=True,
) -> list[dict]:
    """Training rows for ``cfg`` (default: the benchmark's network)."""
    cfg = cfg or ModelConfig(latent_dim=LATENT, hidden=HIDDEN)
    rows = []
    for batch_size in batch_sizes:
        for elbo_name, precision in itertools.product(ELBOS, precisions):
            steppers = train_steppers(
                device, batch_size, elbo_name, precisions[precision], data, cfg
            )
            with pyro.validation_enabled(False):
                median_seconds_per_call(steppers, 5, 1, device)  # warm-up
                t = median_seconds_per_call(steppers, steps, repeats, device)
                memory = {
                    name: train_peak_mb(device, steppers, name, (batch_size, elbo_name, precision))
                    if measure_memory
                    else math.nan
                    for name in ("pyro", "ref")
                }
            row = {
                "batch_size": batch_size,
                "elbo": elbo_name,
                "precision": precision,
                "pyro_images_per_s": batch_size / t["pyro"],
                "reference_images_per_s": batch_size / t["ref"],
                "ratio": t["pyro"] / t["ref"],
                "pyro_ms_per_step": 1e3 * t["pyro"],
                "reference_ms_per_step": 1e3 * t["ref"],
                "pyro_per_param_adam_ms_per_step": 1e3 * t["per_param"],
                "per_param_ratio": t["per_param"] / t["ref"],
                "pyro_peak_memory_mb": memory["pyro"],
                "reference_peak_memory_mb": memory["ref"],
            }
            rows.append(row)
            print(
                f"  {label}train batch {batch_size:5d} {elbo_name:9s} {precision}: "
                f"pyro {row['pyro_ms_per_step']:7.2f} "
                f"ms/step, reference {row['reference_ms_per_step']:7.2f} ms/step, "
                f"ratio {row['ratio']:.2f}",
                file=sys.stderr,
            )
    return rows


def train_steppers(device, batch_size, elbo_name, precision, data, cfg) -> dict:
    """Step functions, each with its own freshly initialised VAE: pyro_vae's SVI ("pyro"), the
    same with Pyro's per-parameter Adam ("per_param"), and the hand-written step ("ref")."""
    n = data.shape[0]
    batches = minibatches(data, batch_size)
    elbo_cls = ELBOS[elbo_name]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_vae(cfg, DATA_DIM, image_shape=IMAGE_SHAPE).to(device)
    svi = DeviceSVI(vae.model, vae.guide, JointAdam({"lr": 1e-4}), elbo_cls(max_plate_nesting=1))
    vae_pp = build_vae(cfg, DATA_DIM, image_shape=IMAGE_SHAPE).to(device)
    vae_pp.name = "per_param"
    svi_pp = DeviceSVI(
        vae_pp.model, vae_pp.guide, pyro.optim.Adam({"lr": 1e-4}), elbo_cls(max_plate_nesting=1)
    )
    ref_vae = build_vae(cfg, DATA_DIM, image_shape=IMAGE_SHAPE).to(device)
    ref = ReferenceStep(ref_vae, 1e-4, n, analytic_kl=elbo_name == "meanfield")
    index = torch.arange(batch_size, device=data.device)

    def svi_step(svi):
        return lambda xb: svi.step(xb, index=index, num_data=n)

    return {
        "pyro": cycling(svi_step(svi), batches, vae, precision),
        "per_param": cycling(svi_step(svi_pp), batches, vae_pp, precision),
        "ref": cycling(ref, batches, ref_vae, precision),
    }


def minibatches(data: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The whole minibatches of ``data``, in order (a partial last one left out)."""
    return [data[i : i + batch_size] for i in range(0, data.shape[0] - batch_size + 1, batch_size)]


def train_peak_mb(device, steppers, name, spec) -> float:
    """Peak memory of 3 training steps beyond what is held before them (parameters, optimizer
    state, data): CUDA's allocator peak, or on a CPU the RSS high-water mark in a fresh child."""
    if device.type == "cuda":
        steppers[name]()
        sync(device)
        with PeakMemory(device) as mem:
            for _ in range(3):
                steppers[name]()
            sync(device)
        return mem.mb
    batch_size, elbo_name, precision = spec
    return _child_mb(["--peak-memory-train", f"{batch_size},{elbo_name},{precision},{name}"])


def cpu_train_peak_child(batch_size: int, elbo_name: str, precision: str, name: str) -> float:
    """In this (fresh) process: peak RSS growth of 3 training steps after 3 warm-up steps, MB."""
    _return_freed_memory()
    device = torch.device("cpu")
    data = load_images(max(2048, 2 * batch_size), device)[0]
    cfg = ModelConfig(latent_dim=LATENT, hidden=HIDDEN)
    step = train_steppers(device, batch_size, elbo_name, PRECISIONS[precision], data, cfg)[name]
    with pyro.validation_enabled(False):
        for _ in range(3):
            step()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS:")
        for _ in range(3):
            step()
    return _status_mb("VmHWM:") - before


def cycling(step, batches, vae, precision=None):
    """A no-argument function calling ``step`` on the next minibatch, with ``vae``'s networks in
    ``precision``."""
    count = [0]

    def run():
        count[0] += 1
        with vae.precision(precision):
            step(batches[count[0] % len(batches)])

    return run


def bench_overhead(device, steps, repeats, data) -> dict:
    """Step times of a network too small to compute much: Python and dispatch per step."""
    cfg = ModelConfig(latent_dim=4, hidden=(16,))
    rows = bench_train(
        device,
        (8,),
        steps,
        repeats,
        data[:512],
        {"fp32": None},
        cfg,
        label="overhead: ",
        measure_memory=False,
    )
    return {
        "network": f"{DATA_DIM}-16-4 MLP",
        "batch_size": 8,
        "rows": [
            {
                "elbo": r["elbo"],
                "pyro_us_per_step": 1e3 * r["pyro_ms_per_step"],
                "reference_us_per_step": 1e3 * r["reference_ms_per_step"],
                "ratio": r["ratio"],
            }
            for r in rows
        ],
    }


def bench_conv(device, steps, repeats, data) -> dict:
    """Step times of the convolutional networks against the hand-written step of the same
    modules, batch 128, float32."""
    cfg = ModelConfig(latent_dim=LATENT, **CONV)
    rows = bench_train(
        device,
        (128,),
        steps,
        repeats,
        data,
        {"fp32": None},
        cfg,
        label="conv: ",
        measure_memory=False,
    )
    return {
        "network": "conv 32-64 channels, 512 hidden, 50 latent, 28x28 images",
        "batch_size": 128,
        "rows": [
            {k: r[k] for k in ("elbo", "pyro_ms_per_step", "reference_ms_per_step", "ratio")}
            for r in rows
        ],
    }


def bench_conv_layout(device, particles, steps, repeats, data) -> dict:
    """An IWAE training step of the convolutional networks with ``particles`` samples per image
    (the decoder sees ``particles`` x 128 images), with the transposed convolutions on
    channels_last activations (as pyro_vae runs them on a CPU) against the default layout:
    two VAEs built alike, timed in turn."""
    cfg = ModelConfig(latent_dim=LATENT, **CONV)
    batches = minibatches(data, 128)
    index = torch.arange(128, device=data.device)
    steppers = {}
    pyro.clear_param_store()
    for layout in ("channels_last", "default"):
        pyro.set_rng_seed(0)
        vae = build_vae(cfg, DATA_DIM, image_shape=IMAGE_SHAPE).to(device)
        vae.name = f"layout_{layout}"
        vae.decoder.channels_last_on_cpu = layout == "channels_last"
        elbo = build_elbo(TrainConfig(elbo="iwae", num_particles=particles))
        svi = DeviceSVI(vae.model, vae.guide, JointAdam({"lr": 1e-4}), elbo)
        steppers[layout] = cycling(
            lambda xb, svi=svi: svi.step(xb, index=index, num_data=data.shape[0]), batches, vae
        )
    with pyro.validation_enabled(False):
        median_seconds_per_call(steppers, 1, 1, device)  # warm-up
        t = median_seconds_per_call(steppers, steps, repeats, device)
    row = {
        "network": "conv 32-64 channels, 512 hidden, 50 latent, 28x28 images",
        "batch_size": 128,
        "particles": particles,
        "channels_last_ms_per_step": 1e3 * t["channels_last"],
        "default_ms_per_step": 1e3 * t["default"],
        "speedup": t["default"] / t["channels_last"],
    }
    print(
        f"  conv IWAE k={particles}: channels_last {row['channels_last_ms_per_step']:.0f} "
        f"ms/step, default layout {row['default_ms_per_step']:.0f} ms/step, "
        f"speedup {row['speedup']:.2f}",
        file=sys.stderr,
    )
    return row


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return float(line.split()[1]) / 1024  # kB -> MB
    return math.nan


def _return_freed_memory() -> None:
    """Make glibc's malloc give every large freed block back to the system.

    Once its mmap threshold has adapted, malloc keeps freed large blocks for reuse, and reused
    memory never raises the RSS high-water mark: a step could then appear to need nothing. A
    fixed threshold (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``) maps and unmaps each large block.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the high-water mark may undercount


def cpu_peak_child(num_samples: int, num_points: int) -> float:
    """In this (fresh) process: peak RSS growth of one batched estimate, in MB.

    A fresh process holds no memory freed by earlier work, which the allocator would reuse
    unseen by the RSS high-water mark; so the CPU peak is measured in a child process.
    """
    _return_freed_memory()
    device = torch.device("cpu")
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(latent_dim=LATENT, hidden=HIDDEN), DATA_DIM)
    x = load_images(num_points, device, split="test")[0]
    # a small estimate first: one-time initialisation (thread pools, kernels) is not the estimator's
    importance_log_likelihood(vae.model, vae.guide, x[:8], num_samples=64, max_plate_nesting=1)
    # VmHWM is the all-time peak (loading the data set set it); reset it to the current RSS
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS:")
    importance_log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, max_plate_nesting=1)
    return _status_mb("VmHWM:") - before


def cpu_peak_mb(num_samples: int, num_points: int) -> float:
    return _child_mb(["--peak-memory", f"{num_samples},{num_points}"])


def _child_mb(args: list[str]) -> float:
    """Run this script with ``args`` in a fresh process; its last line is a number of MB."""
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"bench: peak-memory child failed: {r.stderr[-500:]}", file=sys.stderr)
        return math.nan


class PeakMemory:
    """Peak CUDA memory allocated in a block (CPU peaks: :func:`cpu_peak_mb`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = math.nan

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base


def bench_evaluate(device, num_samples, num_points, loop_points, repeats, data) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(latent_dim=LATENT, hidden=HIDDEN), DATA_DIM).to(device)
    x = data[:num_points]

    def batched():
        importance_log_likelihood(
            vae.model, vae.guide, x, num_samples=num_samples, max_plate_nesting=1
        )

    def loop():
        for i in range(loop_points):
            importance_log_likelihood(
                vae.model, vae.guide, x[i : i + 1], num_samples=num_samples, max_plate_nesting=1
            )

    def batched_bf16():
        with vae.precision(torch.bfloat16):
            batched()

    importance_log_likelihood(vae.model, vae.guide, x[:8], num_samples=64, max_plate_nesting=1)
    sync(device)
    with PeakMemory(device) as mem:
        batched()
        sync(device)
    peak_mb = mem.mb if device.type == "cuda" else cpu_peak_mb(num_samples, num_points)
    bf16_diff = bf16_difference(vae, x[: min(num_points, 200)], num_samples)
    fns = {"batched": batched, "loop": loop, "bf16": batched_bf16}
    t = median_seconds_per_call(fns, 1, repeats, device)
    batched_s = t["batched"]
    loop_s = t["loop"] / loop_points * num_points
    flops = (
        2
        * num_samples
        * num_points
        * sum(a * b for a, b in zip((LATENT, *HIDDEN), (*HIDDEN, DATA_DIM), strict=True))
    )
    result = {
        "num_samples": num_samples,
        "num_datapoints": num_points,
        "batched_s": batched_s,
        "loop_s": loop_s,
        "loop_points_timed": loop_points,
        "repeats": repeats,
        "speedup": loop_s / batched_s,
        "peak_memory_mb": peak_mb,
        "decoder_tflops": flops / batched_s / 1e12,
        "tflops": flops / batched_s / 1e12,  # counts the decoder's matmuls, the bulk of the work
        "bf16_batched_s": t["bf16"],
        "bf16_tflops": flops / t["bf16"] / 1e12,
        "bf16_speedup": batched_s / t["bf16"],
        **bf16_diff,
    }
    print(
        f"  evaluate K={num_samples} N={num_points}: batched {batched_s:.2f} s, per-point loop "
        f"{loop_s:.2f} s (timed on {loop_points} points), speedup {result['speedup']:.2f}x, "
        f"peak {peak_mb:.0f} MB; bf16 {t['bf16']:.2f} s",
        file=sys.stderr,
    )
    return result


def bf16_difference(vae, x, num_samples) -> dict:
    """log p(x) with the networks in bf16 minus float32, on the same random draws."""
    estimates = []
    for precision in (None, torch.bfloat16):
        pyro.set_rng_seed(1)
        with vae.precision(precision):
            estimates.append(
                importance_log_likelihood(
                    vae.model, vae.guide, x, num_samples=num_samples, max_plate_nesting=1
                )
            )
    full, low = estimates
    d = low.log_px - full.log_px
    return {
        "bf16_diff_points": x.shape[0],
        "bf16_mean_diff_log_px": d.mean().item(),
        "bf16_max_abs_diff_log_px": d.abs().max().item(),
        "bf16_mean_stderr_log_px": full.stderr.mean().item(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="about a minute on a 2-core CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--eval-points",
        type=int,
        default=None,
        help="test images of the evaluation (default: 100 quick, 1000 on CPU, 10000 on CUDA)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak for this precision, recorded beside the achieved rate",
    )
    parser.add_argument(
        "--peak-memory",
        default=None,
        metavar="K,N",
        help="only print the peak memory (MB) of one CPU estimate with K samples on N images",
    )
    parser.add_argument(
        "--peak-memory-train",
        default=None,
        metavar="B,ELBO,PRECISION,STEP",
        help="only print the peak memory (MB) of CPU training steps (STEP: pyro, per_param, ref)",
    )
    parser.add_argument(
        "--conv-layout",
        type=int,
        default=None,
        metavar="K",
        help="only time the conv networks' IWAE step with K particles in both activation layouts",
    )
    args = parser.parse_args(argv)
    if args.conv_layout is not None:
        if args.conv_layout < 1:
            parser.error(f"--conv-layout: K must be at least 1, got {args.conv_layout}")
        data = load_images(10000, torch.device("cpu"))[0]
        bench_conv_layout(torch.device("cpu"), args.conv_layout, steps=3, repeats=3, data=data)
        return 0
    if args.peak_memory:
        k, n = (int(v) for v in args.peak_memory.split(","))
        print(cpu_peak_child(k, n))
        return 0
    if args.peak_memory_train:
        batch_size, elbo_name, precision, name = args.peak_memory_train.split(",")
        print(cpu_train_peak_child(int(batch_size), elbo_name, precision, name))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    data, source = load_images(10000, device)
    test_data, _ = load_images(10000, device, split="test")
    default_points = 100 if args.quick else 10000 if device.type == "cuda" else 1000
    points = args.eval_points or default_points
    on_cpu = device.type == "cpu"  # the layout is a CPU choice (ConvDecoderNet)
    if args.quick:
        train_rows = bench_train(device, (128,), steps=20, repeats=3, data=data)
        overhead = bench_overhead(device, steps=50, repeats=3, data=data)
        conv = bench_conv(device, steps=5, repeats=3, data=data)
        layout = bench_conv_layout(device, 5, steps=3, repeats=3, data=data) if on_cpu else None
        evaluation = bench_evaluate(device, 5000, points, 10, 3, test_data)
    else:
        train_rows = bench_train(device, (128, 1024), steps=30, repeats=5, data=data)
        overhead = bench_overhead(device, steps=200, repeats=5, data=data)
        conv = bench_conv(device, steps=20, repeats=5, data=data)
        layout = bench_conv_layout(device, 50, steps=3, repeats=3, data=data) if on_cpu else None
        evaluation = bench_evaluate(device, 5000, points, 100, 3, test_data)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    results = {
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "data": source,
        "network": f"{DATA_DIM}-{'-'.join(map(str, HIDDEN))}-{LATENT} MLP, Bernoulli likelihood",
        "quick": args.quick,
        "train": train_rows,
        "overhead": overhead,
        "conv": conv,
        "conv_layout": layout,
        "evaluate": evaluation | {"peak_tflops": args.peak_tflops},
    }
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def format_table(r: dict) -> str:
    lines = [
        f"device {r['device']} ({r['device_name']}, {r['threads']} threads), torch {r['torch']}, "
        f"pyro {r['pyro']}; {r['network']}; data: {r['data']}",
        "",
        "| batch | ELBO | networks | pyro_vae ms/step | reference ms/step | pyro_vae images/s "
        "| reference images/s | ratio | ratio, Pyro's per-param Adam "
        "| peak MB, pyro_vae / reference |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in r["train"]:
        lines.append(
            f"| {t['batch_size']} | {t['elbo']} | {t.get('precision', 'fp32')} "
            f"| {t['pyro_ms_per_step']:.2f} | {t['reference_ms_per_step']:.2f} "
            f"| {t['pyro_images_per_s']:,.0f} | {t['reference_images_per_s']:,.0f} "
            f"| {t['ratio']:.2f} | {t['per_param_ratio']:.2f} "
            f"| {t['pyro_peak_memory_mb']:.0f} / {t['reference_peak_memory_mb']:.0f} |"
        )
    o = r["overhead"]
    lines += [
        "",
        f"Framework overhead ({o['network']}, batch {o['batch_size']}):",
        "",
        "| ELBO | pyro_vae us/step | reference us/step | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in o["rows"]:
        lines.append(
            f"| {row['elbo']} | {row['pyro_us_per_step']:.0f} "
            f"| {row['reference_us_per_step']:.0f} | {row['ratio']:.2f} |"
        )
    c = r["conv"]
    lines += [
        "",
        f"Convolutional networks ({c['network']}, batch {c['batch_size']}, fp32):",
        "",
        "| ELBO | pyro_vae ms/step | reference ms/step | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in c["rows"]:
        lines.append(
            f"| {row['elbo']} | {row['pyro_ms_per_step']:.1f} "
            f"| {row['reference_ms_per_step']:.1f} | {row['ratio']:.2f} |"
        )
    if r.get("conv_layout"):
        c = r["conv_layout"]
        lines += [
            "",
            f"Convolutional networks, IWAE k={c['particles']} (the decoder on {c['particles']} x "
            f"{c['batch_size']} images): channels_last activations "
            f"{c['channels_last_ms_per_step']:.0f} ms/step, the default layout "
            f"{c['default_ms_per_step']:.0f} ms/step, speedup {c['speedup']:.2f}",
        ]
    e = r["evaluate"]
    peak = f"{e['peak_tflops']:g}" if e.get("peak_tflops") else "n/a"
    lines += [
        "",
        "| K | points | batched s | TFLOP/s (peak) | per-point loop s | speedup | peak memory MB "
        "| bf16 s | bf16 speedup | bf16 - fp32 log p(x), mean / max abs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {e['num_samples']} | {e['num_datapoints']} | {e['batched_s']:.2f} "
        f"| {e['tflops']:.3f} ({peak}) | {e['loop_s']:.2f} | {e['speedup']:.2f} "
        f"| {e['peak_memory_mb']:.0f} | {e['bf16_batched_s']:.2f} | {e['bf16_speedup']:.2f} "
        f"| {e['bf16_mean_diff_log_px']:+.4f} / {e['bf16_max_abs_diff_log_px']:.4f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
