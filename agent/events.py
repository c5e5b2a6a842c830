"""Structured events: one JSON object per line in ``STATE/events.jsonl`` (and to a callback).

Every refusal is an event ``{"event": "refused", "reason": ..., "detail": ..., "version": ...}``;
rollouts, rollbacks, replacements and recoveries are events too. The file is append-only and
capped: past :data:`MAX_EVENTS_BYTES` it is rotated to ``events.jsonl.1`` (one generation kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EVENTS_FILE", "MAX_EVENTS_BYTES", "EventLog", "read_events"]

EVENTS_FILE = "events.jsonl"
MAX_EVENTS_BYTES = 8 * 1024 * 1024


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
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if self._sink is not None:
            self._sink(line)
        return record


def read_events(state_dir: Path, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The last ``limit`` events (for tests and ``kiln agent status``)."""
    path = Path(state_dir) / EVENTS_FILE
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - MAX_EVENTS_BYTES))
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for raw in lines[-limit:]:
        with contextlib.suppress(ValueError):
            doc = json.loads(raw)
            if isinstance(doc, dict):
                out.append(doc)
    return out
