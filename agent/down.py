"""``kiln agent down``: stop everything an agent runs on this host, journaled and idempotent.

The agent is not the data plane, and stopping the agent leaves its services serving (on purpose:
``docs/adr/0010-data-plane.md``). Taking a host's services down is this explicit operator step:

1. take the agent's state lock (a running agent is refused: stop it first);
2. journal the intent: every service's serving set becomes empty (the ids stay ``known``, so an
   interrupted ``down`` or a later agent still finds and stops them) and a ``down`` event;
3. stop the data planes (the embedded process and HAProxy, whichever runs): the addresses close;
4. stop every instance the journal knows or the runtime lists (runc also deletes the instance's
   network namespace and bundle); each id leaves ``known`` once its stop is confirmed; then the
   composed roots (read-only overlays) are unmounted;
5. a ``down`` event with what was stopped.

Nothing to stop is a no-op: no journal commit, no event, exit 0. The good release stays recorded,
so the next ``kiln agent run`` starts it again (its enforcement restores missing replicas).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agent.compose import unmount_strays
from agent.dataplane.embedded import ProcessDataPlane
from agent.dataplane.haproxy import HAProxyDataPlane
from agent.errors import STOP_FAILURES, AgentError, failure_detail
from agent.events import EventLog
from agent.journal import Journal
from agent.runtime import Runtime
from agent.standby import standby_of, with_standby
from agent.statedir import StateLock
from manifests.agentconfig import AgentConfig
from manifests.errors import KilnError

__all__ = ["DownReport", "down"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DownReport:
    stopped: tuple[str, ...]  # instance ids stopped
    failed: tuple[str, ...]  # instance ids whose stop failed (still known; run down again)
    dataplanes: tuple[str, ...]  # data planes that were running and were stopped

    @property
    def noop(self) -> bool:
        return not (self.stopped or self.failed or self.dataplanes)


def down(
    config: AgentConfig,
    *,
    runtime: Runtime | None = None,
    event_sink: Callable[[str], None] | None = None,
    stop_grace: float = 5.0,
) -> DownReport:
    """Stop every instance, the data plane and the namespaces of the agent on ``config.state``."""
    state_dir = Path(config.state)
    if not state_dir.exists():
        return DownReport(stopped=(), failed=(), dataplanes=())
    lock = StateLock(state_dir)
    lock.acquire()  # AgentBusy while an agent runs: stop it first
    try:
        journal = Journal(state_dir)
        if runtime is None:
            from agent.reconcile import make_runtime
            from agent.store import ContentStore

            runtime = make_runtime(config, ContentStore(state_dir))
        st = journal.state
        try:
            live = set(runtime.list())
        except KilnError as exc:
            raise AgentError(f"cannot list the instances to stop: {exc.message}") from None
        ids = sorted(live | set(st.known) | {r.id for r in st.instances})
        planes: list[ProcessDataPlane | HAProxyDataPlane] = [
            ProcessDataPlane(state_dir),
            HAProxyDataPlane(state_dir),
        ]
        serving = [p for p in planes if _runs(p)]
        if not ids and not serving and not st.instances:
            with contextlib.suppress(KilnError, OSError):
                unmount_strays(state_dir / "roots")  # composed roots nothing runs from
            return DownReport(stopped=(), failed=(), dataplanes=())
        events = EventLog(state_dir, sink=event_sink)
        events.emit("down", action="start", instances=len(ids))
        journal.commit(replace(st, instances=()).with_known(*ids))
        stopped_planes = tuple(p.kind for p in serving if p.stop())
        stopped, failed = [], []
        for iid in ids:
            try:
                runtime.stop(iid, grace=stop_grace)
            except STOP_FAILURES as exc:
                events.emit("error", what=f"down: stop {iid}", detail=failure_detail(exc))
                failed.append(iid)
                continue
            journal.commit(journal.state.without_known(iid))
            stopped.append(iid)
        if standby_of(journal.state):  # standby instances (keep_previous) were stopped with the rest
            journal.commit(with_standby(journal.state, ()))
        if not failed:
            with contextlib.suppress(KilnError, OSError):
                unmount_strays(state_dir / "roots")  # the composed roots: nothing runs from them now
        close = getattr(runtime, "close", None)
        if callable(close):
            with contextlib.suppress(KilnError):
                close()
        events.emit(
            "down", action="done", stopped=len(stopped), failed=len(failed), dataplanes=list(stopped_planes)
        )
        return DownReport(stopped=tuple(stopped), failed=tuple(failed), dataplanes=stopped_planes)
    finally:
        lock.release()


def _runs(plane: ProcessDataPlane | HAProxyDataPlane) -> bool:
    if isinstance(plane, ProcessDataPlane):
        try:
            return plane.hello() is not None or plane.pid_alive()
        except KilnError:  # it does not answer (stopped?): it exists, stop() kills it by pid
            return True
    return plane.running()
