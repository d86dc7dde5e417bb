"""Shared by the experiment scripts: train variants of one base config, tabulate, plot."""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

from pyro_vae import jobs
from pyro_vae.cli import add_config_flags, config_from_flags
from pyro_vae.config import RunConfig

COLUMNS = [
    "variant",
    "data",
    "log_px",
    "log_px_stderr",
    "elbo",
    "gap",
    "ess_mean",
    "bits_per_dim",
    "khat_max",
    "frac_khat_above_threshold",
    "active_units",
    "seconds",
]


# The config fields every experiment offers as flags (pyro-vae train's, with its defaults).
CONFIG_FLAGS = (
    "data.dataset",
    "model.latent_dim",
    "model.hidden",
    "train.epochs",
    "train.eval_samples",
    "train.eval_method",
    "train.device",
    "train.seed",
)


def parser(
    description: str, default_out: str, defaults: RunConfig | None = None
) -> argparse.ArgumentParser:
    """The experiment's parser: ``--out`` and :data:`CONFIG_FLAGS` with ``defaults``' values
    (pyro-vae train's when None)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path(default_out))
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads of every run (torch.set_num_threads; default: OMP_NUM_THREADS, else "
        "one per core). Float sums round differently with another count, so runs to be "
        "compared want one",
    )
    add_config_flags(p, defaults or RunConfig(), CONFIG_FLAGS)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def base_config(args, defaults: RunConfig | None = None) -> RunConfig:
    """``defaults`` (pyro-vae train's when None) with the values of the flags; sets
    ``--threads`` for the rest of the process."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return config_from_flags(args, defaults or RunConfig())


def train_fresh(config: RunConfig, run_dir: Path, **kwargs):
    """Train ``config`` into ``run_dir``, which must not exist yet (an experiment never
    overwrites a run); returns the :class:`~pyro_vae.jobs.TrainResult` and the seconds taken."""
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: choose another --out")
    start = time.perf_counter()
    result = jobs.train(config, run_dir, progress=False, echo=lambda s: None, **kwargs)
    return result, time.perf_counter() - start


def run_variants(variants: dict[str, tuple[str, RunConfig]], out: Path) -> list[dict]:
    """Train and evaluate each ``name -> (data description, config)`` into ``out/runs/name``.

    Each row holds the table's COLUMNS and, under ``"evaluation"``, the run's
    :class:`~pyro_vae.records.Evaluation` (not written to the CSV).
    """
    rows = []
    for name, (data, config) in variants.items():
        result, seconds = train_fresh(config, out / "runs" / name)
        ev = result.evaluation
        row = {
            "variant": name,
            "data": data,
            "seconds": seconds,
            "evaluation": ev,
        }
        # an undefined number (e.g. k-hat at small K) is None in the evaluation, NaN here
        row |= {k: _number(getattr(ev, k)) for k in COLUMNS if k not in row}
        rows.append(row)
        print(
            f"  {name:22s} log p(x) {ev.log_px:9.3f}  ELBO {ev.elbo:9.3f}  "
            f"({row['seconds']:.0f} s)",
            file=sys.stderr,
        )
    return rows


def paired(a, b, same: bool = False) -> tuple[float, float]:
    """Mean over datapoints of a - b (two evaluations' per-point values on the same datapoints),
    and its standard error: the spread of the differences and both Monte Carlo errors. ``same``:
    both score one model (the same epoch of the same training), so the difference is 0."""
    if same:  # on a GPU two scorings of one model may differ in the last bits: not a difference
        return 0.0, 0.0
    d = a.log_px - b.log_px
    n = d.numel()
    mc = (torch.nan_to_num(a.stderr) ** 2 + torch.nan_to_num(b.stderr) ** 2).sum() / n**2
    return d.mean().item(), (d.var() / n + mc).sqrt().item()


def _number(value):
    return math.nan if value is None else value


def _percent(share: float | None) -> str:
    return "n/a" if share is None or math.isnan(share) else f"{100 * share:.1f}%"


def write_files(out: Path, columns: list[str], rows: list[dict], lines: list[str]) -> str:
    """Write ``rows`` (their ``columns``) to ``out/table.csv`` and ``lines`` to ``out/table.md``;
    return the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


def write_table(rows: list[dict], out: Path, title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| variant | data | log p(x) | MC stderr | ELBO | gap | mean ESS | k-hat > 0.7 | active "
        "| bits/dim |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bpd = "" if math.isnan(r["bits_per_dim"]) else f"{r['bits_per_dim']:.4f}"
        lines.append(
            f"| {r['variant']} | {r['data']} | {r['log_px']:.3f} | {r['log_px_stderr']:.3f} | "
            f"{r['elbo']:.3f} | {r['gap']:.3f} | {r['ess_mean']:.0f} | "
            f"{_percent(r['frac_khat_above_threshold'])} | {r['active_units']} | {bpd} |"
        )
    return write_files(out, COLUMNS, rows, lines)


def report_bars(
    rows: list[dict], out: Path, title: str, figure: str, value: str = "log_px"
) -> None:
    """Print and write the table (``table.csv``, ``table.md``) and the bar figure ``figure``."""
    print(write_table(rows, out, title))
    plot_bars(rows, out / figure, title, value=value)
    print(f"wrote {out}/table.csv, table.md, {figure}")


def plot_bars(rows: list[dict], path: Path, title: str, value: str = "log_px") -> None:
    """Per variant: log p(x) with its Monte Carlo error bar and the ELBO below it (the gap is the
    line between them), or bits/dim bars coloured by the data each variant scores."""
    from matplotlib.figure import Figure

    names = [r["variant"] for r in rows]
    fig = Figure(figsize=(max(6, 1.1 * len(rows) + 2), 4.2), dpi=120)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    if value == "bits_per_dim":
        kinds = list(dict.fromkeys(r["data"] for r in rows))
        colours = dict(
            zip(kinds, ("tab:gray", "tab:green", "tab:blue", "tab:orange"), strict=False)
        )
        for kind in kinds:
            sel = [(x, r) for x, r in zip(xs, rows, strict=True) if r["data"] == kind]
            ax.bar(
                [x for x, _ in sel],
                [r["bits_per_dim"] for _, r in sel],
                color=colours[kind],
                label=f"scores {kind}",
            )
        ax.set_ylabel("bits per dimension (lower is better)")
        ax.legend(loc="upper right", fontsize=8)
    else:
        for x, r in zip(xs, rows, strict=True):
            ax.plot([x, x], [r["elbo"], r["log_px"]], color="0.6", lw=2, zorder=1)
        ax.errorbar(
            xs,
            [r["log_px"] for r in rows],
            yerr=[r["log_px_stderr"] for r in rows],
            fmt="o",
            color="tab:blue",
            capsize=4,
            label="log p(x), importance-sampled",
        )
        ax.plot(xs, [r["elbo"] for r in rows], "s", mfc="white", color="tab:orange", label="ELBO")
        ax.set_ylabel("nats per datapoint (higher is better)")
        ax.legend(loc="best", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
