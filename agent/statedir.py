"""The agent's state directory and the lock that makes one agent its only writer.

::

    STATE/agent.lock     flock(LOCK_EX) held by the running agent for its whole life
    STATE/journal.json   agent.journal          STATE/releases/   agent.releases
    STATE/root           agent.trust            STATE/roots/      agent.unpack (+ quarantine/)
    STATE/source.json    agent.journal          STATE/events.jsonl agent.events
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import AgentError

__all__ = ["LOCK_FILE", "AgentBusy", "StateLock"]

LOCK_FILE = "agent.lock"


class AgentBusy(AgentError):
    """Another agent process holds the state directory."""


class StateLock:
    """An exclusive, non-blocking ``flock`` on ``STATE/agent.lock`` (released by :meth:`release`
    or when the process dies)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentBusy(
                f"{self.state_dir}: another kiln agent is running on this state directory",
                hint="use `kiln agent status`, or stop the running agent first",
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
