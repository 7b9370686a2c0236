"""Progress of the block steps: what a step reports, and how it is shown.

A step calls :func:`advance` once per block it has finished (``segment``,
``face-pairs``, ``apply-lut``).  Where that goes is the caller's choice: by
default nowhere; the local runner and the step CLIs install a sink with
:func:`reporting` (in a worker process the sink forwards to the parent over
a queue).  :class:`Progress` shows the count of one step: a bar on a
terminal, else a one-line log record every ``PYSTITCH_PROGRESS_SECONDS``
(default 30) seconds and at every tenth of the work — what a batch
scheduler's log or a workflow engine's task log keeps.

This module imports nothing of pystitch and nothing heavy (tqdm on demand).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger("pystitch.progress")

#: ``sink(step, blocks)``: where :func:`advance` reports (None: nowhere)
_sink: Callable[[str, int], None] | None = None


def advance(step: str, blocks: int = 1) -> None:
    """Report ``blocks`` more finished blocks of ``step`` (a no-op unless a
    caller installed a sink)."""
    sink = _sink
    if sink is not None and blocks:
        sink(step, blocks)


def set_sink(sink: Callable[[str, int], None] | None) -> None:
    """Install ``sink`` for this process (a worker installs one for its life)."""
    global _sink
    _sink = sink


@contextmanager
def reporting(sink: Callable[[str, int], None]) -> Iterator[None]:
    """Send :func:`advance` to ``sink`` inside the ``with`` block."""
    global _sink
    old, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = old


def interval_seconds() -> float:
    """Seconds between two progress records off a terminal (``PYSTITCH_PROGRESS_SECONDS``)."""
    text = os.environ.get("PYSTITCH_PROGRESS_SECONDS", "30")
    try:
        return max(0.0, float(text))
    except ValueError:
        return 30.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``'1:15'``, ``4000`` -> ``'1:06:40'``, ``3.2`` -> ``'3.2 s'``.

    >>> format_duration(3.24), format_duration(75.3), format_duration(4000)
    ('3.2 s', '1:15', '1:06:40')
    """
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The count of one step's blocks, shown as a bar (``bar=True``, a
    terminal) or as log records (``pystitch.progress`` at INFO).

    Workers report blocks as they finish them (:meth:`add`); a finished task
    tells how many blocks it held (:meth:`task_done`), which corrects the
    count for blocks a step did not report.  Thread-safe.
    """

    def __init__(self, step: str, total: int, *, bar: bool = False, records: bool = True,
                 interval: float | None = None) -> None:
        self.step = step
        self.total = int(total)
        self.interval = interval_seconds() if interval is None else interval
        self.records = records and not bar
        self.start = time.perf_counter()
        self._reported = 0
        self._completed = 0
        self._shown = 0
        self._last_record = self.start
        self._last_tenth = 0
        self._lock = threading.Lock()
        self._bar = None
        if bar and self.total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=step, unit="block", leave=False, dynamic_ncols=True)

    @property
    def done(self) -> int:
        return min(self.total, max(self._reported, self._completed))

    def add(self, step: str, blocks: int = 1) -> None:
        """``blocks`` more finished blocks reported by a step (others' are ignored)."""
        if step != self.step:
            return
        with self._lock:
            self._reported += blocks
            self._show()

    def task_done(self, blocks: int) -> None:
        """A task of ``blocks`` blocks has finished."""
        with self._lock:
            self._completed += blocks
            self._show()

    def line(self) -> str:
        done, total = self.done, self.total
        elapsed = time.perf_counter() - self.start
        pct = 100.0 * done / total if total else 100.0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        return (f"{self.step}: {done}/{total} blocks ({pct:.0f}%), {rate:.3g} blocks/s, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta) if done < total else '0 s'}")

    def _show(self) -> None:
        done = self.done
        if done <= self._shown:
            return
        if self._bar is not None:
            self._bar.update(done - self._shown)
        self._shown = done
        if not self.records:
            return
        now = time.perf_counter()
        tenth = int(10 * done / self.total) if self.total else 10
        if done == self.total or tenth > self._last_tenth or now - self._last_record >= self.interval:
            self._last_tenth, self._last_record = tenth, now
            log.info("%s", self.line())

    def close(self) -> float:
        """Stop showing; returns the step's wall time in seconds."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        return time.perf_counter() - self.start

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
