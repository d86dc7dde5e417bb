"""Workflow checks: posterior predictive checks of two likelihoods and SBC of q(z|x) trained with
the ELBO and with IWAE.

Trains three runs of one base config: a Bernoulli likelihood on binarised data with Trace_ELBO,
a continuous likelihood on uniformly dequantised grey levels with Trace_ELBO, and the Bernoulli
model trained with the IWAE bound (k particles). Each gets ``pyro-vae check``'s posterior
predictive check on the test split and its SBC. IWAE is known to train a poorer q (Rainforth et
al. 2018): SBC says whether it is less calibrated. Writes runs/, table.csv, table.md,
sbc_coverage.png and each run's check figures into --out.

Usage: python experiments/workflow_checks.py [--dataset digits] [--epochs 100]
"""

from __future__ import annotations

import csv
import shutil
import sys

import numpy as np
from _common import base_config, parser, train_fresh
from matplotlib.figure import Figure

from pyro_vae import jobs

STATISTICS = ("mean_intensity", "on_pixels", "total_variation", "log_lik")


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/workflow_checks")
    p.add_argument("--continuous", default="gaussian-learned", help="the continuous likelihood")
    p.add_argument("--iwae-k", type=int, default=10, help="particles of the IWAE-trained run")
    p.add_argument("--num-datapoints", type=int, default=1000, help="test images checked")
    p.add_argument("--num-draws", type=int, default=100, help="replicates of each image")
    p.add_argument("--num-simulations", type=int, default=1000, help="SBC simulations")
    p.add_argument("--sbc-draws", type=int, default=99, help="SBC draws of q per simulation")
    p.add_argument("--sbc-proposals", type=int, default=1000, help="SBC importance resampling K")
    args = p.parse_args(argv)
    base = base_config(args)
    variants = {
        "bernoulli-trace": base.replace(model={"likelihood": "bernoulli"}),
        f"{args.continuous}-trace": base.replace(
            model={"likelihood": args.continuous},
            data={"binarize": "none", "dequantize": "uniform"},
        ),
        f"bernoulli-iwae{args.iwae_k}": base.replace(
            model={"likelihood": "bernoulli"},
            train={"elbo": "iwae", "num_particles": args.iwae_k},
        ),
    }
    rows, coverages, checked = [], {}, 0
    for name, config in variants.items():
        run_dir = args.out / "runs" / name
        result, trained = train_fresh(config, run_dir)
        pred = jobs.predictive(
            run_dir, num_datapoints=args.num_datapoints, num_draws=args.num_draws
        )
        sbc = jobs.sbc(
            run_dir,
            num_simulations=args.num_simulations,
            num_draws=args.sbc_draws,
            num_proposals=args.sbc_proposals,
        )
        checked = pred["num_datapoints"]  # the split may hold fewer than asked for
        print(jobs.format_predictive(pred), file=sys.stderr)
        print(jobs.format_sbc(sbc), file=sys.stderr)
        for figure in ("predictive-posterior-checks", "predictive-posterior-pixels", "sbc-ecdf"):
            shutil.copyfile(run_dir / "checks" / f"{figure}.png", args.out / f"{name}-{figure}.png")
        q, res = sbc["calibration"]["q"], sbc["calibration"].get("resampled")
        coverages[name] = np.array(q["coverage_90"])
        row = {
            "variant": name,
            "likelihood": config.model.likelihood,
            "objective": config.train.elbo,
            "log_px": result.evaluation.log_px,
            **{f"p_{s}": pred["statistics"][s]["p_value"] for s in STATISTICS},
            "extreme": " ".join(pred["extreme"]) or "none",
            "q_calibrated": sum(v == "calibrated" for v in q["verdict"]),
            "q_over": sum("over-confident" in v for v in q["verdict"]),
            "q_under": sum("under-confident" in v for v in q["verdict"]),
            "q_biased": sum("biased" in v for v in q["verdict"]),
            "q_coverage_90": float(np.mean(q["coverage_90"])),
            "resampled_calibrated": sum(v == "calibrated" for v in res["verdict"]) if res else "",
            "resampled_coverage_90": float(np.mean(res["coverage_90"])) if res else "",
            "ess_median": sbc["ess_median"],
            "coordinates": len(q["verdict"]),
            "train_seconds": trained,
            "check_seconds": pred["seconds"] + sbc["seconds"],
        }
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = (
        f"Workflow checks on {args.dataset}, {args.epochs} epochs; posterior predictive on "
        f"{checked} test images x {args.num_draws} replicates; SBC on "
        f"{args.num_simulations} simulations, L={args.sbc_draws}, K={args.sbc_proposals}"
    )
    table = write_markdown(rows, title)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    plot_coverage(coverages, args.out / "sbc_coverage.png", title)
    print(f"wrote {args.out}/table.csv, table.md, sbc_coverage.png and the runs' check figures")
    return 0


def write_markdown(rows: list[dict], title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| run | log p(x) | p: mean | p: on pixels | p: total variation | p: log p(x\\|z) | "
        "extreme | q: calibrated / over / under / biased | q: 90% coverage | resampled: "
        "calibrated, 90% coverage | median ESS |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|---:|",
    ]
    for r in rows:
        res = (
            f"{r['resampled_calibrated']}/{r['coordinates']}, {r['resampled_coverage_90']:.3f}"
            if r["resampled_coverage_90"] != ""
            else ""
        )
        lines.append(
            f"| {r['variant']} | {r['log_px']:.2f} | {r['p_mean_intensity']:.3f} | "
            f"{r['p_on_pixels']:.3f} | {r['p_total_variation']:.3f} | {r['p_log_lik']:.3f} | "
            f"{r['extreme']} | {r['q_calibrated']} / {r['q_over']} / {r['q_under']} / "
            f"{r['q_biased']} of {r['coordinates']} | {r['q_coverage_90']:.3f} | {res} | "
            f"{r['ess_median']:.0f} |"
        )
    return "\n".join(lines)


def plot_coverage(coverages: dict[str, np.ndarray], path, title: str) -> None:
    """Coverage of q's central 90% interval per latent coordinate, one bar group per run."""
    fig = Figure(figsize=(8, 3.6), dpi=120)
    ax = fig.subplots()
    width = 0.8 / len(coverages)
    for i, (name, cov) in enumerate(coverages.items()):
        ax.bar(np.arange(cov.size) + i * width, cov, width=width, label=name)
    n = next(iter(coverages.values())).size
    ax.axhline(0.9, color="k", linestyle="--", linewidth=1, label="nominal 0.9")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [f"z[{j}]" for j in range(n)], fontsize=7)
    ax.set_ylim(min(0.5, min(c.min() for c in coverages.values()) - 0.05), 1.0)
    ax.set_ylabel("coverage of q's 90% interval")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
