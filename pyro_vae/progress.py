"""Progress reports for long work: a bar on a terminal, plain lines in a log, or nothing.

Long loops (training epochs, the estimator's passes) take a ``progress`` argument:

* ``True`` or ``"bar"``: a tqdm bar on stderr (for a terminal);
* ``"lines"``: a plain line on stderr every ``interval`` seconds, with the count, the share done,
  the time so far and an estimate of the time left (for logs, where a bar is unreadable);
* ``False``, ``None`` or ``"off"``: nothing.

Nothing is printed unless the caller asks for it. ``$PYRO_VAE_PROGRESS_SECONDS`` sets the
interval between plain lines (default 10 s).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

from pyro_vae.text import noun_plural

MODES = ("bar", "lines", "off")
LINE_INTERVAL = 10.0  # seconds between plain progress lines
INTERVAL_ENV = "PYRO_VAE_PROGRESS_SECONDS"


def line_interval() -> float:
    """Seconds between plain progress lines: ``$PYRO_VAE_PROGRESS_SECONDS`` or 10 (0: a line at
    every update). A value that is not a finite number of seconds, 0 or more, is named in one
    warning line on stderr (once per value) and the default is used."""
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return LINE_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value
    if text not in _WARNED:
        _WARNED.add(text)
        print(
            f"pyro-vae: warning: {INTERVAL_ENV}={text!r} is not a number of seconds (0 or more); "
            f"progress lines every {LINE_INTERVAL:g} s",
            file=sys.stderr,
            flush=True,
        )
    return LINE_INTERVAL


_WARNED: set[str] = set()  # the invalid values already named


def progress_mode(progress: bool | str | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a ``progress`` argument."""
    if progress is True:
        return "bar"
    if progress is False or progress is None:
        return "off"
    if progress in MODES:
        return progress
    raise ValueError(f"progress must be True, False or one of {MODES}, got {progress!r}")


def progress_bar(
    total: int,
    desc: str,
    unit: str,
    progress: bool | str | None,
    *,
    interval: float | None = None,
    stream: TextIO | None = None,
):
    """A context manager with ``update(n=1)`` and ``set_postfix(**values)`` for ``total`` units."""
    mode = progress_mode(progress)
    if mode == "lines":
        interval = line_interval() if interval is None else interval
        return LineProgress(total, desc, unit, interval=interval, stream=stream)
    return tqdm(total=total, desc=desc, unit=unit, disable=mode == "off", leave=False)


class LineProgress:
    """Plain progress lines, at most one every ``interval`` seconds, and one at the end when any
    was printed: ``log p(x): 120/480 passes (25%), 38 s, about 114 s left``."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        *,
        interval: float = LINE_INTERVAL,
        stream: TextIO | None = None,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.units = noun_plural(unit)
        self.interval = interval
        self.stream = stream
        self.count = 0
        self.postfix = ""
        self.printed = 0
        self.closed_stream = False
        self._start = time.monotonic()
        self._last = self._start

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.interval and self.count < self.total:
            self._last = now
            elapsed = now - self._start
            left = elapsed * (self.total - self.count) / self.count
            self._write(
                f"{self.count}/{self.total} {self.units} ({100 * self.count / self.total:.0f}%), "
                f"{elapsed:.0f} s, about {left:.0f} s left"
            )

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self, finished: bool = True) -> None:
        if self.printed and finished:
            elapsed = time.monotonic() - self._start
            self._write(f"{self.count}/{self.total} {self.units}, done in {elapsed:.0f} s")

    def _write(self, text: str) -> None:
        """Print one line; a stream its reader has closed (``2>&1 | head``) silences the report,
        never the work it reports on."""
        if self.closed_stream:
            return
        extra = f"  {self.postfix}" if self.postfix else ""
        stream = self.stream if self.stream is not None else sys.stderr
        try:
            print(f"{self.desc}: {text}{extra}", file=stream, flush=True)
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed here
            self.closed_stream = True
            return
        self.printed += 1
