"""Standby instances: a release's previous instances, kept running out of rotation for a while.

A service with ``keep_previous: 5m`` does not stop the instances a rollout replaced: they leave
the serving set (the address stops sending them requests, as before) but keep running for five
minutes, recorded in the journal as standby with the wall-clock time they expire. A rollback in
that window finds instances of exactly the spec it needs already running and healthy (one probe)
and only switches the address back to them. After the window, or when a newer rollout sets other
instances of the service aside, they are drained and stopped like any retired instance.

The standby list lives in the journal's ``extra`` mapping under ``standby`` (every id in it stays
in ``known`` while it runs, so a crash never leaks one, and recovery does not take them for
strays). Nothing here acts: :class:`agent.rollout.Deployer` sets instances aside, adopts and
expires them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent.journal import InstanceRecord, JournalError, JournalState

__all__ = ["STANDBY_KEY", "Standby", "standby_of", "with_standby"]

STANDBY_KEY = "standby"


@dataclass(frozen=True, slots=True, kw_only=True)
class Standby:
    record: InstanceRecord
    until: float  # wall-clock seconds

    def to_dict(self) -> dict[str, Any]:
        return {"until": self.until, "instance": self.record.to_dict()}


def standby_of(st: JournalState) -> tuple[Standby, ...]:
    """The journal's standby instances (an unreadable entry is dropped: its id is still known,
    so the next reconcile stops it as a stray)."""
    raw = st.extra.get(STANDBY_KEY)
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        try:
            out.append(Standby(record=InstanceRecord.from_dict(item["instance"]), until=float(item["until"])))
        except (KeyError, TypeError, ValueError, JournalError):
            continue
    return tuple(out)


def with_standby(st: JournalState, items: Iterable[Standby]) -> JournalState:
    extra = {k: v for k, v in st.extra.items() if k != STANDBY_KEY}
    entries = [s.to_dict() for s in items]
    if entries:
        extra[STANDBY_KEY] = entries
    return replace(st, extra=extra)
