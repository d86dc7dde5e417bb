"""Comparing runs' evaluations datapoint by datapoint: paired differences, caveats, tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyro_vae.errors import ConfigError, library_name, name_options
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.jobs.evaluation import IDENTITY_KEYS, TRAINING_DATA_KEYS
from pyro_vae.jobs.housekeeping import checkpoint_epochs
from pyro_vae.runs import RunDir, atomic_write_text, check_output_file, describe_selection
from pyro_vae.text import plural


@dataclass(frozen=True)
class Comparison:
    """One run's row in :func:`compare`; differences are to the best run, datapoint by datapoint."""

    run: str
    log_px: float
    log_px_stderr: float
    elbo: float
    gap: float
    khat_max: float
    frac_khat_above_threshold: float
    diff: float  # mean of log p(x_i) - log p_best(x_i)
    diff_se: float  # its standard error over datapoints (and Monte Carlo)
    label: str
    setting: str = ""  # the evaluation's split, method, K and precision, e.g. test-K1000-fp32
    epochs_trained: int | None = None  # when the evaluation was made
    checkpoint_epochs: int | None = None  # the run's checkpoint now
    method: str = "iwae"  # the estimation method
    method_summary: dict = field(default_factory=dict)  # the method's own summary fields


def compare(
    run_dirs: list[str | Path],
    *,
    split: str | None = None,
    num_samples: int | None = None,
    precision: str | None = None,
    method: str | None = None,
    mix_methods: bool = False,
) -> list[Comparison]:
    """Rank evaluated runs by mean held-out log p(x), with paired differences to the best.

    The difference of run r to the best run b is the mean over datapoints of
    d_i = log p_r(x_i) - log p_b(x_i), with standard error sqrt(var(d) / N + MC), where MC is the
    Monte Carlo variance of both means: paired, like ArviZ's ``compare`` on elpd. Runs must have
    been evaluated on the same datapoints (data set, split, binarisation or dequantisation and
    its seed) with the same K; otherwise this raises.

    Each run's evaluation is the one of the setting (split, method, K, precision) that
    ``split``, ``method``, ``num_samples`` and ``precision`` select and every run holds; when
    several settings qualify (or none), this raises, naming them. With ``mix_methods``, each
    run's evaluation is the one the selectors pick from that run alone, and the runs may differ
    in their estimation method and K (their estimates are all lower bounds of log p(x), of
    different tightness): the table then names each run's method.
    """
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    runs = [RunDir(d).require(checkpoint=False) for d in run_dirs]
    resolved = [r.path.resolve() for r in runs]
    twice = sorted(
        {str(r.path) for r, a in zip(runs, resolved, strict=True) if resolved.count(a) > 1}
    )
    if twice:
        raise ConfigError(f"compare was given the same run more than once: {', '.join(twice)}")
    wanted = {"split": split, "num_samples": num_samples, "precision": precision, "method": method}
    if mix_methods:
        stored = [run.find_evaluation(**wanted) for run in runs]
    else:
        stored = _common_evaluations(runs, **wanted)
    evaluations = [e.evaluation for e in stored]
    first = evaluations[0]
    mixed = ("method", "num_samples", "method_settings")
    keys = [k for k in IDENTITY_KEYS if not (mix_methods and k in mixed)]
    for run, ev in zip(runs[1:], evaluations[1:], strict=True):
        differ = [k for k in keys if getattr(ev, k) != getattr(first, k)]
        if differ:
            detail = "; ".join(f"{k}: {getattr(first, k)!r} vs {getattr(ev, k)!r}" for k in differ)
            if set(differ) & set(TRAINING_DATA_KEYS):
                raise ConfigError(
                    f"cannot compare {runs[0].path} and {run.path}: they were trained and "
                    f"evaluated on different data ({detail}), so their log p(x) are not "
                    "comparable; compare runs trained on the same data"
                )
            mixed = " (or, for different methods, compare with {args.mix_methods})" * (
                "method" in differ
            )
            raise ConfigError(
                f"cannot compare {runs[0].path} and {run.path}: evaluated differently ({detail}); "
                "re-evaluate them alike (the same {args.method}, {args.num_samples}, "
                f"{{args.split}} and {{args.precision}}){mixed}"
            )
    per_point = [(p.log_px, p.stderr) for p in (kept.per_point() for kept in stored)]
    # a mean log p(x) of -inf (all weights zero) ranks last
    order = sorted(range(len(runs)), key=lambda i: -evaluations[i].log_px)
    best_lp, best_se = per_point[order[0]]
    rows = []
    for i in order:
        ev, (lp, se) = evaluations[i], per_point[i]
        d = lp - best_lp
        n = d.shape[0]
        mc = (torch.nan_to_num(se) ** 2 + torch.nan_to_num(best_se) ** 2).sum() / n**2
        diff_se = 0.0 if i == order[0] else math.sqrt(d.var().item() / n + mc.item())
        rows.append(
            Comparison(
                run=str(runs[i].path),
                log_px=ev.log_px,
                log_px_stderr=_nan_if_none(ev.log_px_stderr),
                elbo=ev.elbo,
                gap=ev.gap,
                khat_max=_nan_if_none(ev.khat_max),
                frac_khat_above_threshold=_nan_if_none(ev.frac_khat_above_threshold),
                diff=d.mean().item(),
                diff_se=diff_se,
                label=f"{ev.prior}/{ev.likelihood}/{ev.guide}/{ev.objective}"
                + (f" [{stored[i].setting}]" if mix_methods else ""),
                setting=stored[i].setting,
                epochs_trained=ev.epochs_trained,
                checkpoint_epochs=checkpoint_epochs(runs[i], best=ev.checkpoint == "best"),
                method=ev.method,
                method_summary=dict(ev.method_summary),
            )
        )
    return rows


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _common_evaluations(runs: list[RunDir], **wanted) -> list:
    """For each run, its evaluation of the one setting all runs hold among those ``wanted``
    selects (see :meth:`RunDir.select_evaluations`)."""
    matching = [{e.setting: e for e in run.select_evaluations(**wanted)} for run in runs]
    for run, kept in zip(runs, matching, strict=True):
        if not kept:
            run.find_evaluation(**wanted)  # raises, naming what the run holds
    common = sorted(set.intersection(*(set(m) for m in matching)))
    if len(common) == 1:
        return [m[common[0]] for m in matching]
    asked = describe_selection(wanted)
    if not common:
        held = "; ".join(
            f"{r.path}: {', '.join(sorted(m))}" for r, m in zip(runs, matching, strict=True)
        )
        raise ConfigError(
            f"the runs hold no evaluation of one setting{asked} in common ({held}); evaluate "
            "them alike (the same {args.split}, {args.method}, {args.num_samples} and "
            "{args.precision}), or compare different methods with {args.mix_methods}"
        )
    raise ConfigError(
        f"the runs hold evaluations of {len(common)} settings{asked}: {', '.join(common)}; "
        "choose one ({args.split}, {args.method}, {args.num_samples}, {args.precision})"
    )


def _fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals; "n/a" for NaN (undefined, e.g. k-hat at small K)."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def comparison_caveats(
    rows: list[Comparison], name: Callable[[str], str] = library_name
) -> list[str]:
    """One line for each run whose evaluation predates its checkpoint (a resumed run), and for
    each run whose estimate is unreliable (PSIS k-hat above the threshold) for some of its
    datapoints, naming the share: the ranking rests on those estimates. Options are named by
    ``name`` (config paths and keywords; the command line gives flags)."""
    lines = []
    for r in rows:
        if (
            r.checkpoint_epochs is not None
            and r.epochs_trained is not None
            and r.epochs_trained != r.checkpoint_epochs
        ):
            since = r.checkpoint_epochs - r.epochs_trained
            now = (
                f"the run has trained for {plural(since, 'epoch')} since (its checkpoint "
                f"holds {plural(r.checkpoint_epochs, 'epoch')})"
                if since > 0
                else f"its checkpoint now holds {plural(r.checkpoint_epochs, 'epoch')}"
            )
            lines.append(
                f"caveat: {r.run}: its evaluation {r.setting} was made after "
                f"{plural(r.epochs_trained, 'epoch')}, and {now}; evaluate it again for the "
                "current model"
            )
        estimator = ESTIMATORS.get(r.method)
        why = (
            None
            if estimator is None
            else estimator.caveat(r.method_summary, r.frac_khat_above_threshold)
        )
        if why is not None:
            lines.append(f"caveat: {r.run}: {why}")
    return [name_options(line, name) for line in lines]


def format_comparison(rows: list[Comparison], markdown: bool = False) -> str:
    header = [
        "rank",
        "run",
        "model (prior/likelihood/guide/objective)",
        "log p(x)",
        "MC se",
        "ELBO",
        "gap",
        "k-hat max",
        "k-hat>0.7",
        "diff to best",
        "diff se",
    ]
    body = [
        [
            str(i + 1),
            r.run,
            r.label,
            _fixed(r.log_px, 3),
            _fixed(r.log_px_stderr, 3),
            _fixed(r.elbo, 3),
            _fixed(r.gap, 3),
            _fixed(r.khat_max, 2),
            _fixed(100 * r.frac_khat_above_threshold, 1) + "%"
            if not math.isnan(r.frac_khat_above_threshold)
            else "n/a",
            _fixed(r.diff, 3),
            _fixed(r.diff_se, 3),
        ]
        for i, r in enumerate(rows)
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[j]) for b in body)) for j, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if j < 3 else '>'}{w}}}" for j, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [header, *body])


def check_table_path(path: str | Path, option: str = "args.csv") -> Path:
    """Raise :class:`~pyro_vae.errors.ConfigError` (about ``option``) unless a table can be
    written to ``path``: not empty, not a directory, in a directory that exists (none is
    created for it). Returns the path."""
    if not str(path).strip():
        raise ConfigError("is empty: give the path of a file", option=option)
    p = check_output_file(path, "{" + option + "}")
    folder = p.absolute().parent
    if not folder.is_dir():
        raise ConfigError(
            f"{p} lies in {folder}, which does not exist; create it first (no directory is "
            "made for a table)",
            option=option,
        )
    return p


def write_comparison_csv(rows: list[Comparison], path: str | Path) -> None:
    """The table as CSV, one column per field of :class:`Comparison`, written atomically into
    an existing directory (:func:`check_table_path`)."""
    import csv
    import io

    target = check_table_path(path, "args.csv")
    out = io.StringIO()
    records = [_csv_record(r) for r in rows]
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(target, out.getvalue())


def _csv_record(row: Comparison) -> dict:
    """A row's CSV columns: its fields, with the method's summary left out but for the share of
    datapoints still flagged (auto's ``frac_unreliable``, NaN for the other methods)."""
    record = dataclasses.asdict(row)
    summary = record.pop("method_summary")
    unreliable = summary.get("frac_unreliable")
    record["frac_unreliable"] = math.nan if unreliable is None else unreliable
    return record


def write_comparison_markdown(rows: list[Comparison], notes: list[str], path: str | Path) -> None:
    """The table as Markdown with ``notes`` (the settings compared, the caveats) below it, one
    paragraph each, written atomically into an existing directory (:func:`check_table_path`)."""
    target = check_table_path(path, "args.markdown")
    table = format_comparison(rows, markdown=True)
    atomic_write_text(target, table + "\n" + "".join(f"\n{line}\n" for line in notes))
