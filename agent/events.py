"""Structured events: one JSON object per line in ``STATE/events.jsonl`` (and to a callback).

Every refusal is an event ``{"event": "refused", "reason": ..., "detail": ..., "version": ...}``;
rollouts, rollbacks, replacements and recoveries are events too. The file is append-only and
capped: past :data:`MAX_EVENTS_BYTES` it is rotated to ``events.jsonl.1`` (one generation kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manifests.bounded import JsonCaps, read_json_object
from manifests.errors import DocumentError
from manifests.files import open_regular

__all__ = ["EVENTS_FILE", "MAX_EVENTS_BYTES", "EventLog", "read_events"]

EVENTS_FILE = "events.jsonl"
MAX_EVENTS_BYTES = 8 * 1024 * 1024
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINE_CAPS = JsonCaps(max_bytes=MAX_EVENTS_BYTES, max_depth=16, max_number=64)


class EventLog:
    """Appends events; ``sink`` (e.g. a stderr printer) sees every line too."""

    def __init__(
        self,
        state_dir: Path,
        *,
        sink: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_dir) / EVENTS_FILE
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(self._clock(), 3), **fields}
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        with self._lock:
            with contextlib.suppress(OSError):
                if self.path.exists() and self.path.stat().st_size > MAX_EVENTS_BYTES:
                    os.replace(self.path, self.path.with_name(EVENTS_FILE + ".1"))
            # Best effort: a damaged log (a directory, FIFO or link where the file belongs, a full
            # disk) must not stop what emits; the sink still sees the line.
            with contextlib.suppress(OSError, DocumentError):
                _append(self.path, (line + "\n").encode())
        if self._sink is not None:
            self._sink(line)
        return record


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, _APPEND, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DocumentError(f"{path}: not a regular file")
        os.write(fd, data)
    finally:
        os.close(fd)


def read_events(state_dir: Path, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The last ``limit`` events (for tests and ``kiln agent status``)."""
    path = Path(state_dir) / EVENTS_FILE
    try:
        with open_regular(path) as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - MAX_EVENTS_BYTES))
            lines = fh.read().splitlines()
    except (FileNotFoundError, DocumentError):
        return []
    out: list[dict[str, Any]] = []
    for raw in lines[-limit:]:
        # A damaged line (cut by a crash, or garbage) is skipped, whatever its shape.
        with contextlib.suppress(DocumentError):
            out.append(read_json_object(raw, what=EVENTS_FILE, caps=_LINE_CAPS))
    return out
