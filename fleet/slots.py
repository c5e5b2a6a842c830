"""Rollout slots: a counting semaphore per group, in etcd.

Layout under a fleet's prefix ``P`` (``/kiln/fleet/NAME/``)::

    P/slots/GROUP/gate              rewritten by every acquisition (its mod_revision serializes them)
    P/slots/GROUP/holders/ID        one key per holder: {"id", "kind", "since", ...}

An acquisition reads the gate and the holders in one transaction (one revision), and writes its
holder key in a second transaction guarded by the gate's mod_revision: two hosts racing for the last
slot cannot both win, since the first write moves the gate. A holder key written under a lease
disappears when the lease expires (a host that died mid-rollout frees its slot after the TTL); a
FleetLock holder (a rebooting Zincati host) has no lease and holds until it says steady-state.
Removing holder keys only ever lowers the count, so it needs no guard.

Acquiring is recursive and owned, as FleetLock asks: a holder that already holds gets True again,
and only ``release(group, id)`` of that id frees it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fleet.errors import FleetError
from fleet.etcd import Compare, EtcdClient, KeyValue, Op
from manifests.errors import DocumentError

__all__ = ["Holder", "SlotSemaphore", "MAX_CAS_ATTEMPTS"]

MAX_CAS_ATTEMPTS = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    id: str
    group: str
    kind: str
    since: float
    lease: int
    revision: int


def holder_from(kv: KeyValue, group: str) -> Holder:
    try:
        doc = kv.json()
    except DocumentError:  # a damaged holder value still counts as a holder
        doc = {}
    since = doc.get("since")
    return Holder(
        id=kv.key.rsplit("/", 1)[-1],
        group=group,
        kind=str(doc.get("kind", "unknown")),
        since=float(since) if isinstance(since, int | float) else 0.0,
        lease=kv.lease,
        revision=kv.create_revision,
    )


class SlotSemaphore:
    """The slots of every group of one fleet."""

    def __init__(self, etcd: EtcdClient, prefix: str, *, clock: Any = time.time) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/") + "/slots/"
        self.clock = clock

    def _gate(self, group: str) -> str:
        return f"{self.prefix}{group}/gate"

    def _holders(self, group: str) -> str:
        return f"{self.prefix}{group}/holders/"

    def holders(self, group: str) -> tuple[Holder, ...]:
        _rev, kvs = self.etcd.range(self._holders(group), prefix=True)
        return tuple(holder_from(kv, group) for kv in kvs)

    def acquire(self, group: str, holder: str, *, limit: int, lease: int = 0, kind: str = "agent") -> bool:
        """Take a slot of ``group`` for ``holder`` if fewer than ``limit`` are held (or it holds one)."""
        gate, held = self._gate(group), self._holders(group)
        mine = held + holder
        for _ in range(MAX_CAS_ATTEMPTS):
            read = self.etcd.txn([], [Op.get(gate), Op.get(held, prefix=True)])
            gate_kvs, holder_kvs = read.ranges
            if any(kv.key == mine for kv in holder_kvs):
                return True
            if len(holder_kvs) >= limit:
                return False
            gate_rev = gate_kvs[0].mod_revision if gate_kvs else 0
            value = json.dumps(
                {"id": holder, "group": group, "kind": kind, "since": self.clock()}, sort_keys=True
            ).encode()
            won = self.etcd.txn(
                [Compare.unchanged(gate, gate_rev)],
                [Op.put(gate, holder.encode()), Op.put(mine, value, lease=lease)],
            )
            if won.succeeded:
                return True
        raise FleetError(
            f"slots of group '{group}': gave up after {MAX_CAS_ATTEMPTS} contended attempts",
            hint="too many hosts race for this group's slots at once; the next poll retries",
        )

    def release(self, group: str, holder: str) -> bool:
        """Free ``holder``'s slot of ``group``; False when it held none (not an error)."""
        mine = self._holders(group) + holder
        found = self.etcd.get(mine) is not None
        if found:
            self.etcd.delete(mine)
        return found
