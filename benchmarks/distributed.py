"""Training and evaluation on one process against two (torchrun, gloo) on one machine, in one run.

The bench model (784-512-512-50 MLP, Bernoulli likelihood, Trace_ELBO) is trained for one
warm-up epoch and then timed for one epoch of global minibatches of 128 rows; then its IWAE
evaluation in seeded blocks (K importance samples on the test images) is timed. First in one
process with all the machine's threads, then in two processes of half the threads each,
launched by torchrun. Prints ms per step, evaluation seconds and the ratios.

Usage: python benchmarks/distributed.py [--rows N] [--eval-rows M] [--num-samples K]
[--threads T] [--json PATH]
(internally, ``--worker OUT`` is one process's part).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
from bench import DATA_DIM, HIDDEN, LATENT, load_images

from pyro_vae.config import ModelConfig
from pyro_vae.distributed import (
    estimate,
    init_process_group,
    world_from_env,
)
from pyro_vae.infer import DeviceTrace_ELBO
from pyro_vae.infer.ais import AIS
from pyro_vae.infer.importance import IWAE
from pyro_vae.registry import build_vae
from pyro_vae.training import Trainer

BATCH = 128
ROOT = Path(__file__).resolve().parents[1]


def worker(
    out: Path,
    rows: int,
    threads: int,
    eval_rows: int,
    num_samples: int,
    ais_rows: int,
    ais_steps: int,
) -> None:
    """Time one epoch on this process (of one, or of a torchrun launch)."""
    torch.set_num_threads(threads)
    world = world_from_env()
    device = torch.device("cpu")
    init_process_group(world, device)
    x, source = load_images(rows, device)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(latent_dim=LATENT, hidden=HIDDEN), DATA_DIM)
    trainer = Trainer(
        vae,
        x,
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        lr=1e-4,
        batch_size=BATCH,
        log_every=10**9,
        world=world,
        seed=0,
    )
    with pyro.validation_enabled(False):
        trainer.train_epoch()  # warm-up
        start = time.perf_counter()
        trainer.train_epoch()
        seconds = time.perf_counter() - start
        test, _ = load_images(eval_rows, device, split="test")
        start = time.perf_counter()
        iwae = IWAE.Settings(num_samples=num_samples)
        estimate(IWAE(), iwae, vae.model, vae.guide, test, seed=0, world=world)
        eval_seconds = time.perf_counter() - start
        ais = AIS.Settings(ais_steps=ais_steps, ais_chains=16)
        start = time.perf_counter()
        estimate(AIS(), ais, vae.model, vae.guide, test[:ais_rows], seed=0, world=world)
        ais_seconds = time.perf_counter() - start
    if world.is_main:
        steps = trainer.steps_per_epoch
        out.write_text(
            json.dumps(
                {
                    "ms_per_step": 1000 * seconds / steps,
                    "steps": steps,
                    "eval_seconds": eval_seconds,
                    "ais_seconds": ais_seconds,
                    "data": source,
                }
            )
        )
    if world.is_distributed:
        torch.distributed.destroy_process_group()


def run(command: list[str], out: Path, env: dict) -> dict:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=128 * 40, help="training rows (default 5120)")
    parser.add_argument("--eval-rows", type=int, default=512, help="test images (default 512)")
    parser.add_argument("--num-samples", type=int, default=1000, help="K (default 1000)")
    parser.add_argument("--ais-rows", type=int, default=128, help="AIS test images (default 128)")
    parser.add_argument("--ais-steps", type=int, default=50, help="AIS steps T (default 50)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(
            args.worker,
            args.rows,
            args.threads,
            args.eval_rows,
            args.num_samples,
            args.ais_rows,
            args.ais_steps,
        )
        return 0
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    here = Path(__file__).resolve()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"pyro_vae_distributed_{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    sizes = ["--rows", str(args.rows), "--eval-rows", str(args.eval_rows)]
    sizes += ["--num-samples", str(args.num_samples)]
    sizes += ["--ais-rows", str(args.ais_rows), "--ais-steps", str(args.ais_steps)]
    one = run(
        [
            sys.executable,
            str(here),
            *sizes,
            "--threads",
            str(args.threads),
            "--worker",
            str(scratch / "one.json"),
        ],
        scratch / "one.json",
        env,
    )
    half = max(1, args.threads // 2)
    two = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(here),
            *sizes,
            "--threads",
            str(half),
            "--worker",
            str(scratch / "two.json"),
        ],
        scratch / "two.json",
        {**env, "OMP_NUM_THREADS": str(half)},
    )
    result = {
        "batch": BATCH,
        "rows": args.rows,
        "threads": args.threads,
        "one_process_ms_per_step": one["ms_per_step"],
        "two_processes_ms_per_step": two["ms_per_step"],
        "ratio_two_over_one": two["ms_per_step"] / one["ms_per_step"],
        "eval_rows": args.eval_rows,
        "num_samples": args.num_samples,
        "one_process_eval_seconds": one["eval_seconds"],
        "two_processes_eval_seconds": two["eval_seconds"],
        "eval_ratio_two_over_one": two["eval_seconds"] / one["eval_seconds"],
        "ais_rows": args.ais_rows,
        "ais_steps": args.ais_steps,
        "one_process_ais_seconds": one["ais_seconds"],
        "two_processes_ais_seconds": two["ais_seconds"],
        "ais_ratio_two_over_one": two["ais_seconds"] / one["ais_seconds"],
        "data": one["data"],
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    print(
        f"training, global batch {BATCH}, {one['steps']} steps: one process x {args.threads} "
        f"threads {one['ms_per_step']:.2f} ms/step, two processes x {half} threads "
        f"{two['ms_per_step']:.2f} ms/step (gloo), ratio {result['ratio_two_over_one']:.2f}"
    )
    print(
        f"IWAE evaluation in seeded blocks, K={args.num_samples} on {args.eval_rows} test "
        f"images: one process {one['eval_seconds']:.2f} s, two processes "
        f"{two['eval_seconds']:.2f} s, ratio {result['eval_ratio_two_over_one']:.2f}"
    )
    print(
        f"AIS evaluation in seeded blocks, T={args.ais_steps}, 16 chains on {args.ais_rows} "
        f"test images: one process {one['ais_seconds']:.2f} s, two processes "
        f"{two['ais_seconds']:.2f} s, ratio {result['ais_ratio_two_over_one']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
