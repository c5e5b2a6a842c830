"""Which instances the health monitor watches, how it reaches them, and what it does when one
turns unhealthy.

Every serving instance in the journal is a target, with the health check its record carries (the
journal keeps it, so an agent that restarts watches what it adopts with the same check); an
instance with no connector-based check is watched for "running". An unhealthy instance is taken
out of its service's rotation (:meth:`agent.rollout.Deployer.set_rotation`) and ``wake`` is set so
the loop replaces it now rather than at the next poll; one that answers again goes back in.
Nothing here writes the journal: the monitor's threads only read it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.events import EventLog
from agent.health import HealthMonitor, HealthResult, HealthSpec, MonitorTarget
from agent.journal import InstanceRecord, Journal
from agent.rollout import Deployer, RolloutFailed
from agent.runtime import InstanceStatus, Runtime
from manifests.errors import KilnError

__all__ = ["LIVENESS_INTERVAL", "InstanceWatch"]

#: How often an instance without a health check is checked for "running" (seconds).
LIVENESS_INTERVAL = 2.0


class InstanceWatch:
    """The health monitor over the journal's serving instances (see the module docstring)."""

    def __init__(
        self,
        *,
        journal: Journal,
        deployer: Deployer,
        runtime: Runtime,
        events: EventLog,
        wake: threading.Event,
        on_error: Callable[[str, BaseException], None],
        clock: Callable[[], float],
    ) -> None:
        self.journal = journal
        self.deployer = deployer
        self.runtime = runtime
        self.events = events
        self.wake = wake
        self.monitor = HealthMonitor(
            targets=self.targets,
            on_unhealthy=self._on_unhealthy,
            on_healthy=self._on_healthy,
            on_error=on_error,
            clock=clock,
        )

    def start(self) -> None:
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()

    def state(self, instance_id: str) -> str | None:
        return self.monitor.state(instance_id)

    @property
    def running(self) -> bool:
        return self.monitor.running

    def targets(self) -> list[MonitorTarget]:
        out = []
        for rec in self.journal.state.instances:
            spec = spec_of(rec)
            if spec is not None and spec.kind.uses_connector and rec.port is not None:
                check = self._probe_for(rec, spec)
                out.append(
                    MonitorTarget(
                        id=rec.id,
                        interval=spec.interval,
                        timeout=spec.timeout,
                        retries=spec.retries,
                        check=check,
                    )
                )
            else:
                interval = LIVENESS_INTERVAL
                check = self._alive_for(rec)
                out.append(
                    MonitorTarget(id=rec.id, interval=interval, timeout=interval, retries=2, check=check)
                )
        return out

    def _probe_for(self, rec: InstanceRecord, spec: HealthSpec) -> Callable[[float], HealthResult]:
        def check(timeout: float) -> HealthResult:
            try:
                connect = self.deployer.connect_for(rec)
            except (KilnError, RolloutFailed) as exc:
                detail = exc.message if isinstance(exc, KilnError) else exc.reason
                return HealthResult(ok=False, detail=f"cannot reach: {detail}", latency=0.0)
            return self.deployer.probe(spec, connect, timeout)

        return check

    def _alive_for(self, rec: InstanceRecord) -> Callable[[float], HealthResult]:
        def check(timeout: float) -> HealthResult:
            del timeout
            try:
                status = self.runtime.state(rec.id).status
            except KilnError as exc:
                return HealthResult(ok=False, detail=exc.message, latency=0.0)
            ok = status is InstanceStatus.RUNNING
            return HealthResult(ok=ok, detail=f"no health check; instance is {status}", latency=0.0)

        return check

    def _on_unhealthy(self, iid: str, result: HealthResult | None) -> None:
        self.deployer.set_rotation(iid, False)
        self.events.emit(
            "unhealthy",
            instance=iid,
            out_of_rotation=not self.deployer.in_rotation(iid),
            detail=result.detail if result is not None else "",
        )
        self.wake.set()

    def _on_healthy(self, iid: str) -> None:
        self.deployer.set_rotation(iid, True)
        self.events.emit("healthy", instance=iid, in_rotation=self.deployer.in_rotation(iid))


def spec_of(rec: InstanceRecord) -> HealthSpec | None:
    """The health check an instance's journal record carries (None: none, or unreadable)."""
    if rec.health is None:
        return None
    try:
        return HealthSpec.from_dict(rec.health)
    except KilnError:
        return None
