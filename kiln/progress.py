"""Live progress on a terminal: rich bars for layers (files, bytes) and blobs (bytes, rate).

On a terminal (stderr is a tty, ``TERM`` is not ``dumb``, no ``--quiet``/``--json``), a
:class:`LiveProgress` shows one bar per layer being written or blob being pushed, with bytes and
rates; the plain progress lines are printed above the bars. Anywhere else nothing changes: plain
lines on stderr, one per step. ``NO_COLOR`` is honoured (rich reads it): bars without colour.

rich is imported only here, and only when a terminal will show it, so a piped or scripted
command does not pay for loading it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kiln.output import Output

__all__ = ["LiveProgress", "live_progress", "wants_live"]


def wants_live(out: Output) -> bool:
    """Whether live bars should be drawn: a terminal on stderr, and nothing asked for quiet."""
    if out.quiet or out.json_mode:
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return out.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LiveProgress:
    """Bars keyed by a name (a layer, a blob digest); safe to update from worker threads."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        """A plain progress line, printed above the bars."""
        self._progress.console.print(message, highlight=False, markup=False)

    def update(self, key: str, description: str, done: int, total: int) -> None:
        """Set bar ``key`` to ``done`` of ``total`` bytes (created on first use)."""
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self._progress.add_task(description, total=max(total, 1))
        self._progress.update(task, completed=done, total=max(total, 1), description=description)


@contextmanager
def live_progress(out: Output) -> Iterator[LiveProgress | None]:
    """A :class:`LiveProgress` while the block runs on a terminal, else ``None``."""
    if not wants_live(out):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(file=out.stderr if out.stderr is not sys.stderr else None, stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    live = LiveProgress(progress)
    previous = out.progress_sink
    out.progress_sink = live.say
    try:
        with progress:
            yield live
    finally:
        out.progress_sink = previous
