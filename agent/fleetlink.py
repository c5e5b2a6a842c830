"""The agent's link to its fleet: ask before starting a release, report how it went, heartbeat.

A thin, failure-proof wrapper around a :class:`fleet.gate.FleetGate`. Coordination must never stop
the agent: anything the gate raises (etcd or the FleetLock server unreachable, a damaged key)
becomes a "not now" with the reason, and the host keeps what it runs. It never starts a release
without the fleet's yes.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.gate import EtcdGate, FleetGate, FleetLockGate
from fleet.waves import Decision
from manifests.agentconfig import AgentConfig
from manifests.errors import KilnError
from manifests.release import Release

__all__ = ["FleetLink", "make_gate"]


def make_gate(config: AgentConfig) -> FleetGate | None:
    """The gate the agent configuration names, or None for a host outside any fleet."""
    link = config.fleet
    if link is None:
        return None
    if link.etcd is not None:
        from fleet.etcd import EtcdClient

        return EtcdGate(EtcdClient(link.etcd), link.name, host=link.host, group=config.group)
    assert link.fleetlock is not None  # noqa: S101 - the config allows exactly one of the two
    return FleetLockGate(link.fleetlock, host=link.host, group=config.group)


class FleetLink:
    """Calls into ``gate``; every failure is reported through ``emit`` and answered safely."""

    def __init__(self, gate: FleetGate, emit: Callable[..., object]) -> None:
        self.gate = gate
        self.emit = emit
        self._last_wait: tuple[int, str] | None = None

    def before(self, release: Release) -> Decision:
        try:
            decision = self.gate.before(release.version, release.rollout)
        except KilnError as exc:
            decision = Decision(allowed=False, reason=f"the fleet is unreachable: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - coordination never stops the agent
            decision = Decision(allowed=False, reason=f"the fleet gate failed: {type(exc).__name__}: {exc}")
        if decision.allowed:
            self._last_wait = None
            self.emit("fleet_slot", version=release.version, detail=decision.reason)
        elif self._last_wait != (release.version, decision.reason):
            # one event per new reason, not one per poll
            self._last_wait = (release.version, decision.reason)
            self.emit("waiting", version=release.version, detail=decision.reason)
        return decision

    def after(self, version: int, *, ok: bool, detail: str) -> None:
        try:
            self.gate.after(version, ok=ok, detail=detail)
        except Exception as exc:  # noqa: BLE001 - the slot's lease frees it if this never arrives
            self.emit("error", what="fleet report", detail=f"{type(exc).__name__}: {exc}")

    def heartbeat(self, version: int | None, health: str) -> None:
        try:
            self.gate.heartbeat(version, health)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat only hides the host for a while
            self.emit("error", what="fleet heartbeat", detail=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        try:
            self.gate.close()
        except Exception as exc:  # noqa: BLE001 - closing must not fail the agent's stop
            self.emit("error", what="fleet close", detail=f"{type(exc).__name__}: {exc}")
