"""Progress bars: when to show them, and steps reported from worker processes.

The Python API shows no bar unless asked (``progress=True``); the command line shows one only when
stderr is a terminal (a log file gets no bars), and ``--progress`` / ``--no-progress`` force it.
Sweeps and the lab advance their bar by optimisation steps, also inside a batch that a worker
process is training (:class:`StepReports`), not only when a batch finishes.
"""

from __future__ import annotations

import argparse
import queue as _queue
import sys
import time
from typing import Callable, Optional


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (default: a bar only when stderr is a terminal)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on or off (default: on only when stderr is a terminal)")


def show_progress(flag: Optional[bool], quiet: bool = False) -> bool:
    """The bar's state from ``--progress/--no-progress`` (None: stderr is a terminal) and ``--quiet``."""
    if flag is not None:
        return flag
    return not quiet and sys.stderr.isatty()


class StepReports:
    """Steps done by batches trained in other processes, as fractions of runs for one bar.

    The parent makes one (``manager`` from ``multiprocessing.Manager()``), hands
    :meth:`callback` ``(key, runs, steps)`` to each batch's worker as its ``on_step``, and calls
    :meth:`drain` while waiting and :meth:`finish` when a batch is done. A worker sends at most
    one message per ``every`` seconds.
    """

    def __init__(self, manager, bar, every: float = 0.25):
        self.queue = manager.Queue() if manager is not None else None
        self.bar, self.every = bar, every
        self.shown: dict = {}  # key -> runs' worth of steps shown on the bar

    def callback(self, key, runs: int, steps: int) -> Optional[Callable[[int], None]]:
        """A picklable ``on_step(n)`` for the batch ``key`` of ``runs`` runs doing ``steps`` steps."""
        return None if self.queue is None else _Reporter(self.queue, key, runs / steps if steps > 0 else 0.0, self.every)

    def drain(self) -> None:
        """Move every report waiting in the queue onto the bar."""
        if self.queue is None:
            return
        while True:
            try:
                key, runs = self.queue.get_nowait()
            except (_queue.Empty, EOFError, OSError):
                return
            self._show(key, runs)

    def finish(self, key, runs: int) -> None:
        """Batch ``key`` is written: its runs are done, whatever its last report said."""
        self.drain()
        self._show(key, runs)

    def _show(self, key, runs: float) -> None:
        before = self.shown.get(key, 0.0)
        if runs > before:
            self.shown[key] = runs
            self.bar.update(runs - before)


class _Reporter:
    """The worker side of :class:`StepReports` (pickled into the worker process)."""

    def __init__(self, queue, key, runs_per_step: float, every: float):
        self.queue, self.key, self.runs_per_step, self.every = queue, key, runs_per_step, every
        self.steps, self.sent = 0, 0.0

    def __call__(self, n: int) -> None:
        self.steps += n
        now = time.monotonic()
        if now - self.sent >= self.every:
            self.sent = now
            try:
                self.queue.put((self.key, self.steps * self.runs_per_step))
            except (OSError, EOFError):  # the parent has gone; the work goes on
                pass
