"""Run every experiment script with one budget and collect their tables.

``--budget small``: digits, 100 epochs, K=1000 (K=5000 for iwae_training); about 5 minutes
on a 2-core CPU. ``--budget full``: Fashion-MNIST, 50 epochs, 512-512 networks, K=5000: for a GPU.
Writes each script's output under --out and all tables into --out/results.md.

Usage: python experiments/run_all.py [--budget small|full] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "ppca_bound.py",
    "elbo_vs_iwae.py",
    "swap_priors.py",
    "swap_likelihoods.py",
    "iwae_training.py",
    "seed_recipe.py",
)
BUDGETS = {
    "small": {"--dataset": "digits", "--epochs": "100", "--eval-samples": "1000"},
    "full": {
        "--dataset": "fashion-mnist",
        "--epochs": "50",
        "--eval-samples": "5000",
        "--hidden": "512,512",
        "--latent-dim": "50",
    },
}
OVERRIDES = {("iwae_training.py", "small"): {"--eval-samples": "5000"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    p.add_argument("--out", type=Path, default=Path("experiments/out"))
    p.add_argument("--scripts", default=",".join(SCRIPTS), help="comma-separated subset")
    p.add_argument("--extra", default="", help="extra arguments for every training script")
    args = p.parse_args(argv)
    sections = [f"# Experiments, budget '{args.budget}'", ""]
    for script in args.scripts.split(","):
        out = args.out / Path(script).stem
        cmd = [sys.executable, str(HERE / script), "--out", str(out)]
        if script != "ppca_bound.py":
            options = BUDGETS[args.budget] | OVERRIDES.get((script, args.budget), {})
            cmd += [item for pair in options.items() for item in pair]
            cmd += args.extra.split() if args.extra else []
        print(f"== {script}", file=sys.stderr)
        start = time.perf_counter()
        r = subprocess.run(cmd)
        if r.returncode != 0:
            print(f"run_all: {script} failed (exit {r.returncode})", file=sys.stderr)
            return r.returncode
        minutes = (time.perf_counter() - start) / 60
        sections += [
            f"## {script} ({minutes:.1f} min)",
            "",
            "`python experiments/" + " ".join([script, *cmd[2:]]) + "`",
            "",
            (out / "table.md").read_text(),
            "",
        ]
    (args.out / "results.md").write_text("\n".join(sections))
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
