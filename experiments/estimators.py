"""log p(x) against compute for every estimator: IWAE, refined IWAE, AIS and auto, with BDMC.

For each model (an ELBO-trained and an IWAE-trained one, given with ``--runs`` or trained here on
``--dataset``), on the same test datapoints: IWAE from the guide at K = ``--iwae-ks``, importance
sampling from refined proposals at K = ``--refined-k``, AIS at ``--ais-steps`` distributions
(on the first ``--ais-points`` of them) and ``auto`` (escalating where k-hat or the error bar flags
a datapoint); each with its mean log p(x), the share of datapoints with k-hat > 0.7 (where the
method has importance weights), and its cost in seconds per 1,000 datapoints. On ``--bdmc-points``
datapoints simulated from each model, the BDMC sandwich (forward and reverse AIS at
``--bdmc-steps``) bounds log p(x) from both sides, with IWAE and refined IWAE on the same data.

Writes ``table.csv``, ``table.md`` and ``estimators.png`` (log p(x) against seconds per 1,000
datapoints, one panel per model, the BDMC upper bound of the simulated data beside it).

Usage: python experiments/estimators.py [--runs ELBO_RUN IWAE_RUN] [--out DIR] [--points N] ...
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import pyro

from pyro_vae import jobs
from pyro_vae.cli import add_config_flags, config_from_flags
from pyro_vae.config import RunConfig
from pyro_vae.infer import (
    ais_log_likelihood,
    auto_log_likelihood,
    bdmc,
    importance_log_likelihood,
    refined_log_likelihood,
)
from pyro_vae.infer.estimator import psis_khat as khat_of

# The models this experiment trains when not given --runs: pyro-vae train's config, smaller.
TRAINING = RunConfig().replace(model={"latent_dim": 8, "hidden": (128, 128)}, train={"epochs": 50})

COLUMNS = [
    "model",
    "data",
    "method",
    "setting",
    "points",
    "log_px",
    "log_px_se",
    "frac_khat_above_0.7",
    "frac_unreliable",
    "seconds_per_1000",
    "vs_refined",
    "vs_upper",
]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _row(model, data, method, setting, log_px, seconds, *, khat=None, unreliable=None, se=None):
    n = log_px.shape[0]
    return {
        "model": model,
        "data": data,
        "method": method,
        "setting": setting,
        "points": n,
        "log_px": float(log_px.mean()),
        "log_px_se": float(se) if se is not None else float(log_px.std() / math.sqrt(n)),
        "frac_khat_above_0.7": math.nan if khat is None else float((khat > 0.7).double().mean()),
        "frac_unreliable": math.nan if unreliable is None else float(unreliable),
        "seconds_per_1000": 1000 * seconds / n,
    }


def measure(name: str, run_dir: Path, args) -> list[dict]:
    """Every estimator on one trained run's test points and on data simulated from it."""
    config, vae, _ = jobs.load_run(run_dir, args.device)
    data = jobs.prepare_splits(
        config, jobs.load_data(config), vae.likelihood, ("test",), fixed=True
    )
    x = data["test"][: args.points].to(next(vae.parameters()).device)
    model, guide, m = vae.model, vae.guide, {"max_plate_nesting": 1}
    rows = []
    pyro.set_rng_seed(args.seed)
    r, s = _timed(
        lambda: refined_log_likelihood(
            model, guide, x, num_samples=args.refined_k, keep_log_weights=True, **m
        )
    )
    refined = r.log_px
    rows.append(
        _row(
            name, "test", "refined", f"K={args.refined_k}", r.log_px, s, khat=khat_of(r.log_weights)
        )
    )
    rows[-1]["vs_refined"] = 0.0
    print(_line(rows[-1]), flush=True)
    for k in args.iwae_ks:
        r, s = _timed(
            lambda k=k: importance_log_likelihood(
                model, guide, x, num_samples=k, keep_log_weights=True, **m
            )
        )
        khat = khat_of(r.log_weights) if k >= 21 else None
        rows.append(_row(name, "test", "iwae", f"K={k}", r.log_px, s, khat=khat))
        rows[-1]["vs_refined"] = float((r.log_px - refined).mean())
        print(_line(rows[-1]), flush=True)
    xa = x[: args.ais_points]
    for steps in args.ais_steps:
        r, s = _timed(
            lambda steps=steps: ais_log_likelihood(model, guide, xa, num_steps=steps, **m)
        )
        rows.append(_row(name, "test", "ais", f"T={steps}", r.log_px, s))
        rows[-1]["vs_refined"] = float((r.log_px - refined[: args.ais_points]).mean())
        print(_line(rows[-1]), flush=True)
    r, s = _timed(
        lambda: auto_log_likelihood(
            model,
            guide,
            x,
            khat=khat_of,
            num_samples=args.refined_k,
            smc={"num_particles": args.auto_smc_particles},
            max_seconds=args.auto_seconds,
            **m,
        )
    )
    counts = r.counts()
    setting = f"K={args.refined_k}; " + ", ".join(f"{v} {k}" for k, v in counts.items())
    rows.append(
        _row(
            name,
            "test",
            "auto",
            setting,
            r.log_px,
            s,
            unreliable=float((~r.extras["reliable"]).double().mean()),
        )
    )
    rows[-1]["vs_refined"] = float((r.log_px - refined).mean())
    print(_line(rows[-1]), flush=True)

    like = x[: args.bdmc_points]
    b, s = _timed(lambda: bdmc(model, guide, like, num_steps=args.bdmc_steps, **m))
    half = s / 2  # forward and reverse cost alike
    steps = f"T={args.bdmc_steps}"
    rows.append(_row(name, "simulated", "bdmc lower (AIS)", steps, b.lower.log_px, half))
    rows.append(_row(name, "simulated", "bdmc upper (reverse AIS)", steps, b.upper.log_px, half))
    for row in rows[-2:]:
        print(_line(row), flush=True)
    k = max(args.iwae_ks)
    r, s = _timed(
        lambda: importance_log_likelihood(
            model, guide, b.x, num_samples=k, keep_log_weights=True, **m
        )
    )
    rows.append(_row(name, "simulated", "iwae", f"K={k}", r.log_px, s, khat=khat_of(r.log_weights)))
    r, s = _timed(
        lambda: refined_log_likelihood(
            model, guide, b.x, num_samples=args.refined_k, keep_log_weights=True, **m
        )
    )
    rows.append(
        _row(
            name,
            "simulated",
            "refined",
            f"K={args.refined_k}",
            r.log_px,
            s,
            khat=khat_of(r.log_weights),
        )
    )
    for row in rows[-2:]:
        row["vs_upper"] = row["log_px"] - float(b.upper.log_px.mean())
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    extra = "".join(f"  {k} {row[k]:+.4f}" for k in ("vs_refined", "vs_upper") if k in row)
    return (
        f"{row['model']:>6} {row['data']:>9} {row['method']:>24} {row['setting']:>14}: "
        f"{row['log_px']:10.3f} ± {row['log_px_se']:.3f}, k-hat>0.7 "
        f"{_share(row['frac_khat_above_0.7'])}, {row['seconds_per_1000']:8.1f} s/1000{extra}"
    )


def _share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _signed(value) -> str:
    return "" if value is None else f"{value:+.3f}"


def format_table(rows: list[dict]) -> str:
    header = (
        "| model | data | method | setting | points | log p(x) | ± | k-hat > 0.7 | still flagged "
        "| s / 1000 points | vs refined | vs BDMC upper |"
    )
    lines = [header, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['data']} | {r['method']} | {r['setting']} | {r['points']} | "
            f"{r['log_px']:.3f} | {r['log_px_se']:.3f} | {_share(r['frac_khat_above_0.7'])} | "
            f"{_share(r['frac_unreliable'])} | {r['seconds_per_1000']:.1f} | "
            f"{_signed(r.get('vs_refined'))} | {_signed(r.get('vs_upper'))} |"
        )
    return "\n".join(lines)


def read_table(path: Path) -> list[dict]:
    """Rows of a table.csv written by this script, numbers as floats (empty cells dropped)."""
    rows = []
    for raw in csv.DictReader(path.read_text().splitlines()):
        row = {}
        for k, v in raw.items():
            if v == "":
                continue
            try:
                row[k] = float(v) if k not in ("model", "data", "method", "setting") else v
            except ValueError:
                row[k] = v
        rows.append(row)
    return rows


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    styles = {"iwae": "o-", "ais": "s-", "refined": "D", "auto": "*"}
    for ax, model in zip(axes[0], models, strict=True):
        test = [r for r in rows if r["model"] == model and r["data"] == "test"]
        for method, style in styles.items():
            pts = [r for r in test if r["method"] == method]
            if not pts:
                continue
            xs = [r["seconds_per_1000"] for r in pts]
            ys = [r["vs_refined"] for r in pts]
            label = {"ais": f"AIS ({int(pts[0]['points'])} points)"}.get(method, method)
            ax.plot(xs, ys, style, label=label, markersize=9 if method == "auto" else 6)
            for r, xv, yv in zip(pts, xs, ys, strict=True):
                if method in ("iwae", "ais"):
                    ax.annotate(
                        r["setting"],
                        (xv, yv),
                        fontsize=7,
                        xytext=(3, -9),
                        textcoords="offset points",
                    )
        values = [r["vs_refined"] for r in test if "vs_refined" in r]
        if values:  # zoom on the estimates near the refined one; say which fall below
            low = max(min(values), -1.5)
            ax.set_ylim(low - 0.1, max(values) + 0.1)
            off = [r for r in test if r.get("vs_refined", 0.0) < low - 0.1]
            if off:
                text = ", ".join(
                    f"{r['method']} {r['setting']} {r['vs_refined']:+.2f}" for r in off
                )
                ax.text(
                    0.02,
                    0.97,
                    f"below the axis: {text}",
                    transform=ax.transAxes,
                    fontsize=7,
                    va="top",
                )
        ax.set_xscale("log")
        ax.set_xlabel("seconds per 1,000 test points")
        ax.set_ylabel("log p(x) estimate - refined IWAE, same datapoints (nats)")
        ax.axhline(0.0, color="grey", lw=0.8)
        upper = [r for r in rows if r["model"] == model and r["method"].startswith("bdmc upper")]
        lower = [r for r in rows if r["model"] == model and r["method"].startswith("bdmc lower")]
        title = f"{model}-trained model"
        if upper and lower:
            sim = [r for r in rows if r["model"] == model and r["data"] == "simulated"]
            vs = ", ".join(f"{r['method']} {r['vs_upper']:+.3f}" for r in sim if "vs_upper" in r)
            title += (
                f"\nsimulated data: BDMC gap {upper[0]['log_px'] - lower[0]['log_px']:.3f} nats"
                f"\nbelow its upper bound: {vs}"
            )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _train(name: str, objective: str, args) -> Path:
    run_dir = args.out / "runs" / name
    if (run_dir / "checkpoint.pt").is_file():
        return run_dir
    train = {"elbo": objective}
    if objective == "iwae":
        train["num_particles"] = 5
    config = config_from_flags(args, TRAINING).replace(train=train)
    jobs.train(config, run_dir, evaluate_at_end=False, progress=False, echo=lambda s: None)
    return run_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, nargs=2, default=None, metavar=("ELBO_RUN", "IWAE_RUN"))
    p.add_argument("--out", type=Path, default=Path("experiments/out/estimators"))
    add_config_flags(
        p,
        TRAINING,
        (
            "data.dataset",
            "train.epochs",
            "model.latent_dim",
            "model.hidden",
            "train.device",
            "train.seed",
        ),
    )
    p.add_argument("--points", type=int, default=200, help="test datapoints (default 200)")
    p.add_argument("--iwae-ks", type=_ints, default=[1, 10, 100, 1000, 5000])
    p.add_argument("--refined-k", type=int, default=1000)
    p.add_argument("--ais-steps", type=_ints, default=[10, 100, 1000])
    p.add_argument("--ais-points", type=int, default=50, help="test datapoints for AIS")
    p.add_argument("--auto-smc-particles", type=int, default=64)
    p.add_argument("--auto-seconds", type=float, default=None)
    p.add_argument("--bdmc-points", type=int, default=50)
    p.add_argument("--bdmc-steps", type=int, default=500)
    p.add_argument(
        "--replot", action="store_true", help="only redraw the figure from OUT/table.csv"
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        figure(read_table(args.out / "table.csv"), args.out / "estimators.png")
        return 0
    if args.runs is None:
        runs = {"ELBO": _train("elbo", "trace", args), "IWAE": _train("iwae", "iwae", args)}
    else:
        runs = dict(zip(("ELBO", "IWAE"), args.runs, strict=True))
    rows = []
    for name, run_dir in runs.items():
        rows.extend(measure(name, run_dir, args))
    with open(args.out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = format_table(rows)
    (args.out / "table.md").write_text(table + "\n")
    figure(rows, args.out / "estimators.png")
    print(table)
    print(f"wrote {args.out / 'table.csv'}, table.md and estimators.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
