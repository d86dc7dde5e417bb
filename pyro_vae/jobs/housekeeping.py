"""A run's kept evaluations: which are current (of the checkpoint the run holds now), which are
older, and dropping those no longer wanted."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.jobs.loading import training_identity
from pyro_vae.runs import RunDir, StoredEvaluation, locked
from pyro_vae.text import plural


@dataclass(frozen=True)
class KeptEvaluation:
    """One kept evaluation of a run, and whether it is of the run's current checkpoint.

    ``current`` is None when the checkpoint it scored cannot be read (missing or damaged)."""

    stored: StoredEvaluation
    checkpoint_epochs: int | None  # the epochs its checkpoint (best or last) holds now

    @property
    def setting(self) -> str:
        return self.stored.setting

    @property
    def current(self) -> bool | None:
        if self.checkpoint_epochs is None:
            return None
        return self.stored.evaluation.epochs_trained == self.checkpoint_epochs

    def describe(self) -> str:
        """``test-K1000-fp32 (after 3 epochs)``."""
        epochs = self.stored.evaluation.epochs_trained
        made = "" if epochs is None else f" (after {plural(epochs, 'epoch')})"
        return f"{self.setting}{made}"


def checkpoint_epochs(run: RunDir, best: bool = False) -> int | None:
    """Epochs the run's checkpoint (``best``: its best epoch's, which a best-epoch evaluation
    scored) holds now (None when it cannot be read)."""
    try:
        config = training_identity(run.read_config())
        return int(run.load_checkpoint(config, map_location="cpu", best=best)["epoch"])
    except (CheckpointError, ConfigError, KeyError, TypeError, ValueError):
        return None


def kept_evaluations(run_dir: str | Path) -> list[KeptEvaluation]:
    """Every evaluation the run keeps (:meth:`~pyro_vae.runs.RunDir.evaluations`), each with the
    epochs its checkpoint holds now, in setting order."""
    run = RunDir(run_dir).require(checkpoint=False)
    epochs: dict[bool, int | None] = {}
    kept = []
    for stored in run.evaluations():
        best = stored.evaluation.checkpoint == "best"
        if best not in epochs:
            epochs[best] = checkpoint_epochs(run, best=best)
        kept.append(KeptEvaluation(stored, epochs[best]))
    return kept


def newest(kept: list[StoredEvaluation]) -> StoredEvaluation:
    """The evaluation written last (its summary's modification time; ties by setting)."""
    return max(kept, key=lambda e: (e.json_path.stat().st_mtime_ns, e.setting))


def drop_evaluations(
    run_dir: str | Path, settings: list[str] | tuple[str, ...] = (), *, stale: bool = False
) -> list[str]:
    """Remove the kept evaluations named in ``settings`` (e.g. ``test-K1000-fp32``) and, with
    ``stale``, every one made before the checkpoint it scored was trained further. Returns the
    settings removed, in setting order.

    Each evaluation's summary (``.json``) goes first, then its per-datapoint values (``.nc``),
    under the lock that ``evaluate`` holds while it replaces an evaluation
    (``evaluations/.lock``): an interrupted drop leaves at most an ``.nc`` that no summary
    names, which nothing reads. A setting the run does not keep raises
    :class:`~pyro_vae.errors.ConfigError` before anything is removed."""
    kept = kept_evaluations(run_dir)
    by_setting = {k.setting: k for k in kept}
    unknown = [s for s in settings if s not in by_setting]
    if unknown:
        held = ", ".join(by_setting) or "none"
        raise ConfigError(
            f"{{args.drop}} {', '.join(unknown)}: {RunDir(run_dir).path} keeps no evaluation "
            f"of that setting (kept: {held})"
        )
    chosen = set(settings) | {k.setting for k in kept if stale and k.current is False}
    dropped = [k for k in kept if k.setting in chosen]
    folder = RunDir(run_dir).evaluations_dir
    path = folder
    try:
        with locked(folder / ".lock") if folder.is_dir() else contextlib.nullcontext():
            for k in dropped:
                for path in (k.stored.json_path, k.stored.nc_path):
                    path.unlink(missing_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot remove {path}: {e.strerror or e}") from None
    return [k.setting for k in dropped]


def format_kept(run_dir: str | Path, kept: list[KeptEvaluation]) -> str:
    """The kept evaluations, one a line: setting, method, K, log p(x) and whether current."""
    if not kept:
        return f"{RunDir(run_dir).path} keeps no evaluation"
    width = max(len(k.setting) for k in kept)
    lines = [f"{'setting':<{width}}  {'log p(x)':>10}  {'epochs':>6}  state"]
    for k in kept:
        ev = k.stored.evaluation
        epochs = "?" if ev.epochs_trained is None else str(ev.epochs_trained)
        if k.current is None:
            state = "its checkpoint cannot be read"
        elif k.current:
            state = "current"
        else:
            state = f"older: the checkpoint now holds {plural(k.checkpoint_epochs, 'epoch')}"
        lines.append(f"{k.setting:<{width}}  {ev.log_px:>10.3f}  {epochs:>6}  {state}")
    return "\n".join(lines)
