"""The importance estimator against exact math: IWAE bounds L_K on probabilistic PCA.

For PPCA, log p(x) is known in closed form. With a deliberately wrong guide the bound L_K must rise
monotonically towards it as K grows; with the exact posterior as guide it must equal it for every K.
Writes ``table.csv``, ``table.md`` and ``bound_vs_k.png`` into ``--out`` and prints the table.

Usage: python experiments/ppca_bound.py [--out DIR] [--ks 1,10,100,1000,5000] [--points 200]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.infer import importance_log_likelihood
from pyro_vae.models import ProbabilisticPCA


def run(ks: list[int], points: int, repeats: int, seed: int) -> list[dict]:
    ppca = ProbabilisticPCA(d=5, D=20, s2=0.5, seed=seed)
    x = ppca.sample_data(points, seed=seed + 1)
    exact = ppca.log_px(x)
    rows = []
    for guide_name, guide in (("wrong", ppca.wrong_guide), ("exact", ppca.exact_guide)):
        for k in ks:
            estimates, ess = [], []
            for rep in range(repeats):
                pyro.set_rng_seed(seed + rep)
                r = importance_log_likelihood(ppca.model, guide, x, num_samples=k)
                estimates.append(r.log_px.mean().item())
                ess.append(r.ess.mean().item())
            mean = sum(estimates) / repeats
            spread = torch.tensor(estimates).std().item() if repeats > 1 else float("nan")
            rows.append(
                {
                    "guide": guide_name,
                    "K": k,
                    "L_K": mean,
                    "L_K_sd_over_repeats": spread,
                    "exact": exact.mean().item(),
                    "gap_to_exact": exact.mean().item() - mean,
                    "ess_mean": sum(ess) / repeats,
                }
            )
    return rows


def write(rows: list[dict], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| guide | K | L_K (nats) | exact log p(x) | exact - L_K | mean ESS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['guide']} | {r['K']} | {r['L_K']:.3f} | {r['exact']:.3f} | "
            f"{r['gap_to_exact']:.3f} | {r['ess_mean']:.1f} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    plot(rows, out / "bound_vs_k.png")
    return table


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for guide, style in (("wrong", "o-"), ("exact", "s--")):
        sel = [r for r in rows if r["guide"] == guide]
        ax.plot([r["K"] for r in sel], [r["L_K"] for r in sel], style, label=f"L_K, {guide} guide")
    ax.axhline(rows[0]["exact"], color="k", lw=1, label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples per datapoint)")
    ax.set_ylabel("mean log p(x) estimate (nats)")
    ax.set_title("IWAE bound vs K on probabilistic PCA (d=5, D=20)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/out/ppca_bound"))
    parser.add_argument("--ks", default="1,10,100,1000,5000", help="comma-separated K values")
    parser.add_argument("--points", type=int, default=200, help="datapoints")
    parser.add_argument("--repeats", type=int, default=3, help="independent repeats per K")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ks = sorted({int(k) for k in args.ks.split(",")})
    except ValueError:
        parser.error(f"--ks must be comma-separated integers, got '{args.ks}'")
    if ks[0] < 1 or args.points < 1 or args.repeats < 1:
        parser.error("K, --points and --repeats must be positive")
    rows = run(ks, args.points, args.repeats, args.seed)
    print(write(rows, args.out))
    print(f"wrote {args.out}/table.csv, table.md, bound_vs_k.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
