"""The agent's side of a fleet: may this host start release V now, and what came of it.

:class:`FleetGate` is what the agent calls, behind a Protocol so that a host can coordinate
through etcd directly (:class:`EtcdGate`: waves, slots, halts) or through any FleetLock server
(:class:`FleetLockGate`: slots only, the protocol has no waves), and tests can pass their own.

The gate never blocks for long and never raises past the agent: an unreachable coordinator is a
"no" with its reason, and the host keeps what it runs (it never updates without a slot).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from fleet.errors import FleetError
from fleet.etcd import EtcdClient
from fleet.state import FleetStore
from fleet.waves import Decision, Progress, decide, evaluate
from manifests.errors import KilnError
from manifests.fleet import FleetConfig, Rollout

__all__ = ["FleetGate", "EtcdGate", "FleetLockGate", "CONFIG_KEY"]

CONFIG_KEY = "config"


class FleetGate(Protocol):
    def before(self, version: int, rollout: Rollout | None) -> Decision:
        """Whether to start ``version`` now; when allowed, this host holds a slot until :meth:`after`."""
        ...

    def after(self, version: int, *, ok: bool, detail: str = "") -> None:
        """The rollout of ``version`` ended (``ok``: healthy; else rolled back): free the slot."""
        ...

    def heartbeat(self, version: int | None, health: str) -> None:
        """The host is alive and runs ``version``."""
        ...

    def close(self) -> None: ...


def read_config(store: FleetStore) -> FleetConfig:
    """The fleet configuration ``kiln fleet serve`` stored (defaults when none was stored)."""
    kv = store.etcd.get(store.prefix + CONFIG_KEY)
    if kv is None:
        return FleetConfig(name=store.name)
    try:
        return FleetConfig.from_dict(kv.json())
    except (KilnError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise FleetError(f"fleet '{store.name}': its stored configuration is damaged: {exc}") from exc


def store_config(store: FleetStore, config: FleetConfig) -> None:
    store.etcd.put(
        store.prefix + CONFIG_KEY,
        json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":")).encode(),
    )


class EtcdGate:
    """Waves, slots and halts straight on etcd. One lease per gate, kept alive by a thread."""

    def __init__(
        self,
        etcd: EtcdClient,
        fleet: str,
        *,
        host: str,
        group: str,
        lease_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = FleetStore(etcd, fleet, clock=clock)
        self.host = host
        self.group = group
        self.clock = clock
        self._ttl = lease_ttl
        self._lease = 0
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._holding: int | None = None

    # -- the lease

    def _ensure_lease(self) -> int:
        if self._lease:
            return self._lease
        ttl = self._ttl or read_config(self.store).lease_ttl
        self._lease = self.store.etcd.grant(ttl)
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, args=(self._lease, ttl), daemon=True)
        self._keeper.start()
        return self._lease

    def _keep(self, lease: int, ttl: float) -> None:
        while not self._stop.wait(max(0.5, ttl / 3)):
            try:
                alive = self.store.etcd.keepalive(lease)
            except KilnError:
                continue
            if not alive:
                # expired (etcd unreachable for longer than the TTL): the slot is gone with it
                if self._lease == lease:
                    self._lease = 0
                return

    # -- the protocol

    def heartbeat(self, version: int | None, health: str) -> None:
        lease = self._ensure_lease()
        self.store.heartbeat(self.host, group=self.group, version=version, health=health, lease=lease)

    def before(self, version: int, rollout: Rollout | None) -> Decision:
        lease = self._ensure_lease()
        if rollout is not None:
            self.store.announce(version, rollout)
        config = read_config(self.store)
        snap = self.store.snapshot()
        record = snap.releases.get(version)
        progress = record.progress if record is not None else {}
        groups = snap.groups()
        groups[self.host] = self.group
        statuses = evaluate(
            (record.rollout if record is not None else None) or rollout or Rollout(),
            groups,
            progress,
            halted=record is not None and record.halt is not None,
            now=self.clock(),
        )
        decision = decide(self.host, statuses, progress)
        if not decision.allowed:
            return decision
        limit = config.max_for(self.group)
        if decision.parallel is not None:
            limit = min(limit, decision.parallel)
        if not self.store.slots.acquire(self.group, self.host, limit=limit, lease=lease):
            held = len(self.store.slots.holders(self.group))
            return Decision(
                allowed=False,
                reason=f"no free slot in group '{self.group}' ({held} of {limit} held)",
                wave=decision.wave,
            )
        self._holding = version
        self.store.progress(version, self.host, Progress.UPDATING, group=self.group)
        return decision

    def after(self, version: int, *, ok: bool, detail: str = "") -> None:
        state = Progress.DONE if ok else Progress.ROLLED_BACK
        self.store.progress(version, self.host, state, group=self.group, detail=detail)
        if not ok:
            self.store.halt(version, self.host, detail or "rolled back")
        self.store.slots.release(self.group, self.host)
        self._holding = None

    def close(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=2)
        if self._lease:
            with contextlib.suppress(KilnError):
                self.store.etcd.revoke(self._lease)
            self._lease = 0


class FleetLockGate:
    """Slots through a FleetLock server (``POST /v1/pre-reboot`` and ``/v1/steady-state``)."""

    def __init__(self, url: str, *, host: str, group: str, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.host = host
        self.group = group
        self._client = client or httpx.Client(timeout=5.0)

    def _post(self, path: str) -> tuple[int, dict[str, Any]]:
        body = {"client_params": {"id": self.host, "group": self.group}}
        try:
            resp = self._client.post(f"{self.url}{path}", json=body, headers={"fleet-lock-protocol": "true"})
        except httpx.HTTPError as exc:
            raise FleetError(f"FleetLock {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        content = resp.content[:65536]
        try:
            doc = json.loads(content) if content else {}
        except ValueError:
            doc = {}
        return resp.status_code, doc if isinstance(doc, dict) else {}

    def before(self, version: int, rollout: Rollout | None) -> Decision:
        try:
            status, doc = self._post("/v1/pre-reboot")
        except FleetError as exc:
            return Decision(allowed=False, reason=exc.message)
        if status == 200:
            return Decision(allowed=True, reason="FleetLock slot held")
        kind, value = str(doc.get("kind", f"http-{status}")), str(doc.get("value", ""))[:200]
        return Decision(allowed=False, reason=f"FleetLock refused: {kind}: {value}")

    def after(self, version: int, *, ok: bool, detail: str = "") -> None:
        status, doc = self._post("/v1/steady-state")
        if status != 200:
            raise FleetError(f"FleetLock steady-state refused: {doc.get('kind')}: {doc.get('value')}")

    def heartbeat(self, version: int | None, health: str) -> None:
        return None

    def close(self) -> None:
        self._client.close()
