"""A run directory on disk: config.json, metrics.csv, checkpoint.pt, evaluations/.

Files are written atomically (a temporary file in the same directory, then ``os.replace``), so a
crash leaves the previous version intact. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import re
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_vae import arviz_compat
from pyro_vae.config import RunConfig
from pyro_vae.errors import CheckpointError, ConfigError, RunInUseError
from pyro_vae.records import Evaluation, PerPoint
from pyro_vae.training import EpochStats

CHECKPOINT_FORMAT = 1
# The files of a run that only ``train`` writes, holding the run's claim (RunDir.claim).
TRAINING_FILES = ("config.json", "checkpoint.pt", "best.pt", "metrics.csv")
METRIC_FIELDS = [f.name for f in dataclasses.fields(EpochStats)]
# The columns of metrics.csv before val_bound was recorded: read with val_bound None (an empty
# value, as it is written for an epoch where nothing watched the validation L_K).
EARLIER_METRIC_FIELDS = [name for name in METRIC_FIELDS if name != "val_bound"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: a crash or a
    failed write (a full disk, a read-only directory) leaves the previous version as it was, and
    raises :class:`~pyro_vae.errors.CheckpointError` saying so."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temporary(path, lambda name: Path(name).write_bytes(data))
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        kept = "; its previous version is kept" if path.exists() else ""
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}{kept}") from None


def _write_temporary(path: Path, write: Callable[[str], None]) -> str:
    """A temporary file beside ``path``, filled by ``write(name)``, flushed to disk and given the
    umask's permissions, for the caller to rename into place. Removed if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _write_unit(lock: Path, writes: list[tuple[Path, Callable[[str], None]]]) -> None:
    """Files that belong together, each ``(path, fill(name))``: every one written in full to a
    temporary name first, then all renamed into place in the order given (the one that names
    the others last), under an exclusive lock on ``lock``; the temporaries are removed whatever
    fails. Raises OSError."""
    temps: list[tuple[str, Path]] = []
    try:
        with locked(lock):
            remove_stale_temporaries(lock.parent)  # a killed writer's, which held this lock
            for path, fill in writes:
                temps.append((_write_temporary(path, fill), path))
            for i, (tmp, path) in enumerate(temps):
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    if i == 0:
                        raise
                    raise PartlyReplaced(e, [p for _, p in temps[:i]]) from e
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


# The temporary files of this module's writers (``_write_temporary``, ``check_writable``):
# ``.NAME.XXXXXXXX.tmp``, the suffix mkstemp's eight random characters.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is the name of one of this module's temporary files."""
    return bool(_TEMPORARY.match(path.name))


def remove_stale_temporaries(folder: Path, names: tuple[str, ...] | None = None) -> None:
    """Remove the temporary files a killed writer left in ``folder`` (those of the files named
    in ``names`` only, when given). Call it only while holding the lock that every writer of
    those files holds while its temporaries exist: any found then are stale."""

    def stale(p: Path) -> bool:
        return is_temporary(p) and (names is None or p.name[1:].rsplit(".", 2)[0] in names)

    try:
        leftovers = [p for p in folder.iterdir() if stale(p) and p.is_file()]
    except OSError:
        return
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink()


class PartlyReplaced(OSError):
    """A unit of files (:func:`_write_unit`) whose first files were renamed into place before a
    later rename failed: the previous unit is no longer whole.

    Attributes
    ----------
    replaced : list of Path
        The files already replaced.
    """

    def __init__(self, error: OSError, replaced: list[Path]):
        super().__init__(error.errno, error.strerror or str(error), error.filename)
        self.replaced = replaced


def _unit_failed(
    error: OSError, what: str, previous: Path, again: str, kind: str = "result"
) -> CheckpointError:
    """The error for a unit of files about ``what`` that could not be written: whether the
    previous ``kind`` (whose summary is ``previous``) is kept, or was left broken and how to
    make a whole one (``again``)."""
    if isinstance(error, PartlyReplaced):
        names = ", ".join(p.name for p in error.replaced)
        state = (
            f"; {names} had already been replaced, so the previous {kind} is no longer whole "
            f"(readers refuse it): {again}"
        )
    else:
        state = f"; the previous {kind} is kept" if previous.exists() else ""
    return CheckpointError(f"cannot write {what}: {error.strerror or error}{state}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`ConfigError` unless ``path`` can be written as a file: not a directory, and
    no part of its parent a file. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory; give the path of a file")
    _check_parents(p, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Raise :class:`ConfigError` unless ``path`` is a directory or can be created as one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a directory")
    _check_parents(p, what)
    return p


def _check_parents(p: Path, what: str) -> None:
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {p} lies under {parent}, which is a file")
            return


class _Damaged(Exception):
    def __init__(self, line: int, why: str):
        self.line, self.why = line, why


_CASTS = {"int": int, "float": float, "float | None": lambda text: float(text) if text else None}
_METRIC_TYPES = {f.name: _CASTS[f.type] for f in dataclasses.fields(EpochStats)}


def _metrics_row(line: int, fields: list[str], names: list[str]) -> EpochStats:
    if len(fields) != len(names):
        raise _Damaged(line, f"{len(fields)} values, expected {len(names)}")
    values = {}
    for name, text in zip(names, fields, strict=True):
        try:
            values[name] = _METRIC_TYPES[name](text)
        except ValueError:
            raise _Damaged(line, f"{name} = {text!r} is not a number") from None
    return EpochStats(**values)


def metrics_state(history: list[EpochStats]) -> list[dict[str, Any]]:
    """The epochs' records as a checkpoint keeps them (plain numbers), so that a crash between
    writing the checkpoint and metrics.csv loses no row: :func:`metrics_from_state` reads them
    back."""
    return [dataclasses.asdict(row) for row in history]


def metrics_from_state(saved, path: Path) -> list[EpochStats] | None:
    """The records :func:`metrics_state` kept in the checkpoint at ``path`` (None: a checkpoint
    of an earlier version, which kept none); raises :class:`~pyro_vae.errors.CheckpointError`
    for records that are not such."""
    if saved is None:
        return None
    rows = []
    try:
        if not isinstance(saved, list):
            raise _Damaged(0, f"a {type(saved).__name__}, not a list of epochs")
        for i, row in enumerate(saved, start=1):
            if not isinstance(row, dict) or set(row) != set(METRIC_FIELDS):
                raise _Damaged(i, f"fields {sorted(row) if isinstance(row, dict) else row!r:.60}")
            for name, value in row.items():
                if value is None and name == "val_bound":  # nothing watched it
                    continue
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if not number or (_METRIC_TYPES[name] is int and not isinstance(value, int)):
                    raise _Damaged(i, f"{name} = {value!r:.40} is not a number")
            rows.append(EpochStats(**row))
        if [r.epoch for r in rows] != list(range(1, len(rows) + 1)):
            raise _Damaged(0, "its epochs are not 1, 2, 3, ...")
    except _Damaged as e:
        where = f"record {e.line}: " if e.line else ""
        raise CheckpointError(
            f"{path} holds damaged epoch records ({where}{e.why}); restore it from a backup or "
            "train again into a new run directory"
        ) from None
    return rows


# A trained network's parameters are of order 1 to 100; beyond this one is damaged (or came from
# a run that diverged), and every estimate from it would overflow float32.
MAX_ABS_WEIGHT = 1e8


def _check_weights(path: Path, model) -> None:
    """Refuse a checkpoint whose parameters are not a dict of tensors, or hold NaN, infinite or
    absurdly large values (beyond :data:`MAX_ABS_WEIGHT`), naming the first such parameter."""
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"{path} holds no model parameters (model)")
    for name, value in model.items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        if not torch.isfinite(value).all():
            raise CheckpointError(
                f"{path}: parameter {name} holds NaN or infinite values; the checkpoint is "
                "damaged, or was saved from a run that diverged. Restore it from a backup or "
                "train again"
            )
        largest = value.abs().max().item()
        if largest > MAX_ABS_WEIGHT:
            raise CheckpointError(
                f"{path}: parameter {name} reaches {largest:.3g}, beyond any trained network's "
                f"({MAX_ABS_WEIGHT:g}); the checkpoint is damaged, or was saved from a run that "
                "diverged. Restore it from a backup or train again"
            )


def _damaged_member(data: bytes) -> str | None:
    """Why a checkpoint's zip archive fails its integrity check, or None when every member's
    CRC-32 matches."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        return f"not a readable zip archive: {e}"
    except Exception as e:  # a damaged header can fail in other ways while members are read
        return f"unreadable: {type(e).__name__}"
    return None if bad is None else f"member {bad} fails its CRC-32 check"


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class RunDir:
    """The files of one training run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    # the best epoch's checkpoint of a run with early stopping (train.patience > 0)
    best_path = property(lambda self: self.path / "best.pt")

    lock_path = property(lambda self: self.path / ".lock")

    def exists(self) -> bool:
        return self.config_path.is_file()

    def check_writable(self) -> None:
        """Raise :class:`~pyro_vae.errors.CheckpointError` unless a file can be created here and
        in each of the run's result folders that exists (evaluations/, checks/, bdmc/): before
        long work whose result would have nowhere to go."""
        folders = [self.path] + [
            f for f in (self.evaluations_dir, self.checks_dir, self.path / "bdmc") if f.is_dir()
        ]
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".writable.", suffix=".tmp")
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)  # a writer may have removed it as stale
            except OSError as e:
                raise CheckpointError(f"cannot write into {folder}: {e.strerror or e}") from None

    def holds_only_leftovers(self) -> bool:
        """Whether the directory holds nothing but a run's lock and temporary files: what a run
        killed before its config was written leaves (a new run may start in it)."""
        try:
            return self.path.is_dir() and all(
                p.name == self.lock_path.name or is_temporary(p) for p in self.path.iterdir()
            )
        except OSError:
            return False

    def remove_if_empty(self) -> None:
        """Remove the directory if it holds nothing but its lock file (a run that never began)."""
        try:
            if {p.name for p in self.path.iterdir()} <= {self.lock_path.name}:
                self.lock_path.unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass

    @contextlib.contextmanager
    def claim(self):
        """Hold this run directory exclusively for the duration of the block (a ``train``).

        An advisory lock (``flock``) on ``RUN_DIR/.lock``, created if absent: a second claim,
        from any process, raises :class:`~pyro_vae.errors.RunInUseError` at once. The operating
        system releases the lock when the holder exits, however it exits, so a killed run leaves
        no stale claim. Readers (evaluate, compare, plot) take no lock: every file is replaced
        atomically.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise RunInUseError(
                    f"{self.path} is in use by another training process ({holder}); wait for it "
                    "to finish or choose another run directory",
                    path=str(self.path),
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
            remove_stale_temporaries(self.path, TRAINING_FILES)  # only a claim's holder writes
            yield self
        finally:
            os.close(fd)  # releases the lock

    def require(self, checkpoint: bool = True) -> RunDir:
        """Raise a clear error unless this is a run directory (with a checkpoint, by default)."""
        if self.path.is_file():
            raise CheckpointError(f"{self.path} is a file, not a run directory")
        if not self.path.is_dir():
            raise CheckpointError(f"run directory not found: {self.path}")
        if not self.config_path.is_file():
            if self.holds_only_leftovers():
                raise CheckpointError(
                    f"{self.path} holds no run yet, only what a run stopped before writing its "
                    "config left: start that run again (without resuming), into this directory"
                )
            raise CheckpointError(f"{self.path} is not a pyro-vae run directory (no config.json)")
        if checkpoint and not self.checkpoint_path.is_file():
            raise CheckpointError(
                f"{self.path} has no checkpoint.pt: training never finished an epoch"
            )
        return self

    # config
    def write_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config.to_json() + "\n")

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_json(self.config_path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read {self.config_path}: {e}") from None
        except ConfigError as e:
            raise CheckpointError(f"{self.config_path}: {e}") from None

    # checkpoint
    def save_checkpoint(
        self, state: dict[str, Any], config: RunConfig, *, best: bool = False
    ) -> None:
        """Write the checkpoint atomically (``best``: the best epoch's, ``best.pt``)."""
        payload = {"format": CHECKPOINT_FORMAT, "config": config.to_json(), **state}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.best_path if best else self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(
        self, config: RunConfig, map_location=None, *, best: bool = False
    ) -> dict[str, Any]:
        """The checkpoint's state (``best``: the best epoch's), after checking every byte of it
        against the CRC-32 sums its zip archive stores (``torch.load`` does not), then its
        format and config."""
        path = self.best_path if best else self.checkpoint_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {path}") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
        damaged = _damaged_member(data)
        if damaged is not None:
            raise CheckpointError(
                f"checkpoint is corrupt: {path} ({damaged}); its bytes changed "
                "after it was written (disk or copy damage). Restore it from a backup, or train "
                "again into a new run directory"
            )
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{path} is corrupt or not a pyro-vae checkpoint ({type(e).__name__})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a pyro-vae checkpoint (format)")
        if _saved_config(state.get("config")) != config:
            raise CheckpointError(f"{path} was written for another config than {self.config_path}")
        _check_weights(path, state.get("model"))
        return state

    # metrics
    def write_metrics(self, rows: list[EpochStats]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))
        atomic_write_text(self.metrics_path, out.getvalue())

    def read_metrics(self, *, drop_damaged_tail: bool = False) -> list[EpochStats]:
        """The rows of metrics.csv ([] when there is none).

        A damaged row (torn by a crash, a missing or extra column, a value that is not a number,
        bytes that are not text) raises :class:`~pyro_vae.errors.CheckpointError` naming it; with
        ``drop_damaged_tail`` (for a resume, which rewrites the file) the rows from the first
        damaged one on are dropped instead.
        """
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            if drop_damaged_tail:
                return []
            raise CheckpointError(f"cannot read {self.metrics_path}: {e}") from None
        reader = csv.reader(io.StringIO(text))
        rows: list[EpochStats] = []
        try:
            header = next(reader, None)
            if header not in (METRIC_FIELDS, EARLIER_METRIC_FIELDS):
                raise _Damaged(1, f"its header is {header}, expected {METRIC_FIELDS}")
            line = 1
            for line, fields in enumerate(reader, start=2):  # noqa: B007 (used below)
                rows.append(_metrics_row(line, fields, header))
            if text and not text.endswith("\n"):  # every write ends its last row
                if rows:
                    rows.pop()
                raise _Damaged(line, "it was cut off before its end (a torn write)")
        except (_Damaged, csv.Error) as e:
            if drop_damaged_tail:
                return rows
            where = f"row {e.line}: {e.why}" if isinstance(e, _Damaged) else str(e)
            raise CheckpointError(
                f"{self.metrics_path} is damaged ({where}); a resume drops the damaged rows"
            ) from None
        return rows

    # evaluations
    evaluations_dir = property(lambda self: self.path / "evaluations")

    def evaluation_paths(self, evaluation: Evaluation) -> tuple[Path, Path]:
        """Where the evaluation with ``evaluation``'s setting lives: ``evaluations/SETTING.json``
        (the summary) and ``.nc`` (the per-datapoint values)."""
        stem = self.evaluations_dir / evaluation_setting(evaluation)
        return stem.with_suffix(".json"), stem.with_suffix(".nc")

    def write_evaluation(self, evaluation: Evaluation, idata) -> StoredEvaluation:
        """Keep an evaluation: its summary (strict JSON: NaN and infinities as null) and its
        per-datapoint values (an ArviZ InferenceData) as one unit, one per setting
        (:func:`evaluation_setting`: split, K, precision), replacing only an earlier evaluation
        of the same setting.

        Both files carry the same ``evaluation_id``; each is written to a temporary file of its
        own and renamed into place, under a short lock on ``evaluations/.lock``, so that
        concurrent evaluations replace a pair one after the other, never half of it. A crash
        between the two renames leaves ids that differ, which readers refuse.
        """
        evaluation_id = uuid.uuid4().hex
        evaluation = evaluation.replace(evaluation_id=evaluation_id, per_point=None)
        idata.attrs["evaluation_id"] = evaluation_id
        text = json.dumps(json_safe(evaluation.to_dict()), indent=2, allow_nan=False) + "\n"
        json_path, nc_path = self.evaluation_paths(evaluation)
        try:
            self.evaluations_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot write {self.evaluations_dir}: {e.strerror}") from None
        # Both files are written in full to temporary names first, and renamed into place only
        # then: a full disk or a crash while writing leaves the previous pair untouched.
        writes = [
            (nc_path, lambda n: arviz_compat.save_netcdf(idata, n)),
            (json_path, lambda n: Path(n).write_text(text)),
        ]
        try:
            _write_unit(self.evaluations_dir / ".lock", writes)
        except OSError as e:
            raise _unit_failed(
                e,
                f"{json_path.with_suffix('')}.json/.nc",
                json_path,
                f"evaluate this setting again ({json_path.stem})",
                "evaluation of this setting",
            ) from None
        return StoredEvaluation(self, evaluation, json_path, nc_path)

    def bdmc_paths(self, name: str) -> tuple[Path, Path]:
        """``RUN_DIR/bdmc/NAME.json`` (the summary) and ``.npz`` (simulated data, latents and
        per-datapoint bounds)."""
        folder = self.path / "bdmc"
        return folder / f"{name}.json", folder / f"{name}.npz"

    def write_bdmc(self, name: str, summary: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Keep a BDMC result: the arrays first, then the summary, each written whole (a crash
        leaves the previous pair or a new npz beside the previous summary, never a torn file)."""
        import io

        import numpy as np

        json_path, npz_path = self.bdmc_paths(name)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        text = json.dumps(json_safe(summary), indent=2, allow_nan=False)
        writes = [
            (npz_path, lambda n: Path(n).write_bytes(buffer.getvalue())),
            (json_path, lambda n: Path(n).write_text(text)),
        ]
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            _write_unit(json_path.parent / ".lock", writes)
        except OSError as e:
            raise _unit_failed(
                e, f"{json_path.with_suffix('')}.json/.npz", json_path, "run bdmc again"
            ) from None

    # workflow checks (pyro-vae check)
    checks_dir = property(lambda self: self.path / "checks")

    def check_paths(self, name: str, data_suffix: str) -> tuple[Path, Path]:
        """``RUN_DIR/checks/NAME.json`` (the summary) and ``NAME`` + ``data_suffix`` (its
        per-datapoint values)."""
        return self.checks_dir / f"{name}.json", self.checks_dir / f"{name}{data_suffix}"

    def write_check(
        self,
        name: str,
        summary: dict[str, Any],
        data: tuple[str, Callable[[str, str], None]],
        figures: dict[str, Any],
    ) -> list[Path]:
        """Keep a workflow check as one unit: its data (``(suffix, write(path, check_id))``),
        its figures (``checks/NAME-FIGURE.png``) and its summary, which gets a ``check_id``
        that the data carries too.

        The figures are drawn to memory first; then every file is written in full to a
        temporary name and only then renamed into place, the summary last, under a short lock
        on ``checks/.lock``, so that a failure before the renames leaves the previous check
        whole, and concurrent checks replace a unit one after the other. A crash between the
        renames leaves a summary whose ``check_id`` differs from its data's. Returns the paths,
        the summary's first.
        """
        check_id = uuid.uuid4().hex
        summary = {**summary, "check_id": check_id}
        suffix, write = data
        json_path, data_path = self.check_paths(name, suffix)
        pngs = {}
        for label, figure in figures.items():
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            pngs[self.checks_dir / f"{name}-{label}.png"] = buffer.getvalue()
        text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
        writes = [(data_path, lambda n: write(n, check_id))]
        writes += [(path, lambda n, b=png: Path(n).write_bytes(b)) for path, png in pngs.items()]
        writes.append((json_path, lambda n: Path(n).write_text(text)))
        try:
            self.checks_dir.mkdir(parents=True, exist_ok=True)
            _write_unit(self.checks_dir / ".lock", writes)
        except OSError as e:
            raise _unit_failed(
                e,
                str(json_path.with_suffix("")),
                json_path,
                f"run the check again ({name})",
                "check",
            ) from None
        return [json_path, data_path, *pngs]

    def evaluations(self) -> list[StoredEvaluation]:
        """Every evaluation kept in the run directory, in setting order.

        ``evaluation.json``/``evaluation.nc`` at the top of a run directory, as earlier versions
        wrote them, count as one more (unless an evaluation of the same setting replaced it).
        """
        found = {}
        paths = sorted(self.evaluations_dir.glob("*.json")) if self.evaluations_dir.is_dir() else []
        for json_path in paths:
            stored = StoredEvaluation(
                self, _read_summary(json_path, self.path), json_path, json_path.with_suffix(".nc")
            )
            found[stored.setting] = stored
        legacy = self.path / "evaluation.json"
        if legacy.is_file():
            stored = StoredEvaluation(
                self, _read_summary(legacy, self.path), legacy, self.path / "evaluation.nc"
            )
            found.setdefault(stored.setting, stored)
        return [found[k] for k in sorted(found)]

    def select_evaluations(self, **wanted) -> list[StoredEvaluation]:
        """The kept evaluations whose ``split``, ``num_samples``, ``precision`` and ``method``
        equal those of ``wanted`` that are not None; those of a last checkpoint beside a best
        one only with ``checkpoint="last"`` (:meth:`StoredEvaluation.matches`)."""
        return [e for e in self.evaluations() if e.matches(**wanted)]

    def find_evaluation(self, **wanted) -> StoredEvaluation:
        """The one kept evaluation matching ``wanted`` (see :meth:`select_evaluations`); raises
        :class:`~pyro_vae.errors.CheckpointError` when there is none or more than one."""
        matching = self.select_evaluations(**wanted)
        if len(matching) == 1:
            return matching[0]
        asked = describe_selection(wanted)
        if not matching:
            kept = ", ".join(e.setting for e in self.evaluations()) or "none"
            raise CheckpointError(
                f"{self.path} has no evaluation{asked} (kept: {kept}); run pyro-vae evaluate "
                f"{self.path} with that setting"
            )
        raise CheckpointError(
            f"{self.path} holds {len(matching)} evaluations{asked}: "
            f"{', '.join(e.setting for e in matching)}; choose one by its split, method, K and "
            "precision ({args.split}, {args.method}, {args.num_samples}, {args.precision})"
        )


EVALUATION_SELECTORS = ("split", "num_samples", "precision", "method")


def _saved_config(text) -> RunConfig | None:
    """The config a checkpoint was written for, read as config.json is (so a hyperparameter
    declared after the run was written takes its default in both); None when unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return RunConfig.from_json(text)
    except ConfigError:
        return None


def evaluation_setting(evaluation: Evaluation) -> str:
    """The name of an evaluation's setting: what one kept evaluation per setting means.

    ``test-K1000-fp32`` for IWAE from the guide (the names of earlier versions, which had only
    that method), ``test-refined-K1000-fp32`` and ``test-auto-K1000-fp32`` for the methods that
    take K importance samples, ``test-ais-T500-C16-fp32`` for AIS with T distributions and C
    chains; ``-firstN`` is added for an evaluation of the split's first N datapoints only, and
    ``-last`` for one of the last checkpoint of a run that keeps a best epoch's checkpoint.
    """
    from pyro_vae.infer.estimators import ESTIMATORS

    method, k = evaluation.method, evaluation.num_samples
    estimator = ESTIMATORS.get(method)
    if estimator is None:  # a method this version does not know
        middle = f"{method}-K{k}"
    else:
        middle = estimator.setting_name(k, evaluation.method_settings)
    subset = "" if evaluation.first is None else f"-first{evaluation.first}"
    last = "-last" if evaluation.checkpoint == "last" else ""
    return f"{evaluation.split}-{middle}-{evaluation.precision}{subset}{last}"


def describe_selection(wanted: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in wanted.items() if v is not None]
    return f" with {', '.join(parts)}" if parts else ""


@dataclasses.dataclass(frozen=True)
class StoredEvaluation:
    """One kept evaluation of a run: the evaluation and where its files are."""

    run: RunDir
    evaluation: Evaluation
    json_path: Path
    nc_path: Path

    @property
    def setting(self) -> str:
        return evaluation_setting(self.evaluation)

    def matches(
        self, split=None, num_samples=None, precision=None, method=None, checkpoint=None
    ) -> bool:
        """Whether the evaluation has the settings given (None: any). An evaluation of the last
        checkpoint of a run that keeps a best one (``evaluate --checkpoint last``) matches only
        ``checkpoint="last"``: the run's evaluations are otherwise those of its best epoch."""
        wanted = {
            "split": split,
            "num_samples": num_samples,
            "precision": precision,
            "method": method,
        }
        if (self.evaluation.checkpoint == "last") != (checkpoint == "last"):
            return False
        return all(v is None or getattr(self.evaluation, k) == v for k, v in wanted.items())

    def inference_data(self):
        """The per-datapoint values, refused unless they belong to this summary."""
        if not self.nc_path.is_file():
            raise CheckpointError(
                f"{self.nc_path} is missing beside {self.json_path}; run pyro-vae evaluate "
                f"{self.run.path} again"
            )
        try:
            idata = arviz_compat.load_netcdf(self.nc_path)
        except Exception as e:  # h5py/netCDF errors for truncated or foreign files vary
            raise CheckpointError(
                f"{self.nc_path} is damaged or not an evaluation ({type(e).__name__}); run "
                f"pyro-vae evaluate {self.run.path} again"
            ) from None
        _check_same_evaluation(self, idata)
        return idata

    def per_point(self) -> PerPoint:
        """The per-datapoint values (:meth:`inference_data`, checked) as tensors."""
        idata = self.inference_data()
        stats = idata.sample_stats

        def values(group, name):
            return torch.as_tensor(group[name].values[0, 0]) if name in group else None

        log_px = values(idata.log_likelihood, "log_px")
        from pyro_vae.infer.estimators import ESTIMATORS

        method = self.evaluation.method
        known = ESTIMATORS.get(method)
        stages = self.evaluation.method_summary.get("stages") or (
            known.stage_names() if known is not None else (method,)
        )
        codes = values(stats, "method")  # each datapoint's stage, as its index in ``stages``
        if codes is None:
            estimator = (self.evaluation.method,) * log_px.shape[0]
        else:
            estimator = tuple(stages[int(c)] for c in codes.tolist())
        common = ("ess", "stderr", "khat", "method", "draws")
        extras = {k: values(stats, k) for k in stats.data_vars if k not in common}
        if "reliable" in extras:
            extras["reliable"] = extras["reliable"].bool()
        return PerPoint(
            log_px=log_px,
            elbo=values(idata.log_likelihood, "elbo"),
            **{k: values(stats, k) for k in ("ess", "stderr", "khat", "draws")},
            estimator=estimator,
            extras=extras,
        )


def _read_summary(path: Path, run_path: Path) -> Evaluation:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    return Evaluation.from_dict(summary, where=str(path))


def _check_same_evaluation(stored: StoredEvaluation, idata) -> None:
    """Refuse a summary and per-datapoint values written by different evaluations."""
    evaluation = stored.evaluation
    json_id = evaluation.evaluation_id
    nc_id = idata.attrs.get("evaluation_id")
    problem = None
    if json_id != nc_id:
        problem = "they carry different evaluation ids"
    else:
        try:
            n = idata.log_likelihood["log_px"].shape[-1]
        except (KeyError, AttributeError):
            n = None
        if n is None:
            problem = f"{stored.nc_path.name} holds no per-datapoint log_px"
        elif n != evaluation.num_datapoints:
            problem = f"{evaluation.num_datapoints} datapoints in the summary, {n} per point"
        elif idata.attrs.get("num_samples") != evaluation.num_samples:
            problem = (
                f"K={evaluation.num_samples} in the summary, "
                f"K={idata.attrs.get('num_samples')} per point"
            )
    if problem:
        raise CheckpointError(
            f"{stored.json_path} and {stored.nc_path} are not one evaluation ({problem}), e.g. "
            f"after a crash or a full disk during evaluate; run pyro-vae evaluate "
            f"{stored.run.path} again"
        )


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive ``flock`` on ``path`` (created if absent), waited for, held for the block:
    the lock writers of a result folder hold (``evaluations/.lock``, ...)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
