"""The jobs behind the command line: train a run, evaluate it, compare runs, draw figures.

Each job reads and writes a :class:`~pyro_vae.runs.RunDir` and returns plain results; printing is
left to the caller (``echo``), so the same jobs serve the CLI, scripts and tests. The objects they
work on are made by :func:`pyro_vae.build.build`. One module per job:
:mod:`~pyro_vae.jobs.loading` (a run's config and trained VAE), :mod:`~pyro_vae.jobs.training`
(train and resume), :mod:`~pyro_vae.jobs.evaluation` (log p(x) and its diagnostics, BDMC),
:mod:`~pyro_vae.jobs.comparison` (paired comparison of runs), :mod:`~pyro_vae.jobs.housekeeping`
(a run's kept evaluations: current or older, dropping them), :mod:`~pyro_vae.jobs.figures`
(samples, training curves) and :mod:`~pyro_vae.jobs.checks` (predictive checks and
simulation-based calibration).
"""

from pyro_vae.build import load_data, prepare_splits, resolve_device
from pyro_vae.jobs.checks import (
    check_predictive_settings,
    check_sbc_memory,
    check_sbc_settings,
    check_split,
    format_predictive,
    format_sbc,
    predictive,
    sbc,
)
from pyro_vae.jobs.comparison import (
    Comparison,
    check_table_path,
    compare,
    comparison_caveats,
    format_comparison,
    write_comparison_csv,
    write_comparison_markdown,
)
from pyro_vae.jobs.evaluation import bdmc, evaluate, format_bdmc, format_evaluation, khat_summary
from pyro_vae.jobs.figures import Plotted, Samples, plot, plots_dir, sample, samples_path
from pyro_vae.jobs.housekeeping import (
    KeptEvaluation,
    drop_evaluations,
    format_kept,
    kept_evaluations,
)
from pyro_vae.jobs.loading import CHECKPOINTS, load_run
from pyro_vae.jobs.training import TrainResult, train

__all__ = [
    "CHECKPOINTS",
    "check_predictive_settings",
    "check_table_path",
    "check_sbc_memory",
    "check_sbc_settings",
    "check_split",
    "Comparison",
    "KeptEvaluation",
    "Plotted",
    "Samples",
    "TrainResult",
    "bdmc",
    "compare",
    "drop_evaluations",
    "comparison_caveats",
    "evaluate",
    "format_bdmc",
    "format_comparison",
    "format_evaluation",
    "format_kept",
    "format_predictive",
    "format_sbc",
    "kept_evaluations",
    "khat_summary",
    "load_data",
    "load_run",
    "plot",
    "plots_dir",
    "predictive",
    "prepare_splits",
    "resolve_device",
    "sample",
    "samples_path",
    "sbc",
    "train",
    "write_comparison_csv",
    "write_comparison_markdown",
]
