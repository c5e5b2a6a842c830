"""The agent: fetch, verify, pull, unpack, roll out, enforce; restartable from its journal at any point.

:class:`Agent` wires the parts together and runs the loop; each part is its own module:

::

    agent.statedir       the state directory's lock (one agent per state directory)
    agent.trust          the trust root (first install, N -> N+1 rotation)
    agent.releasesource  where releases and images come from (a Protocol; the config's source)
    agent.releases       accepted releases kept locally (rollbacks need no network)
    agent.prepare        verify image signatures, pull by digest, unpack read-only roots
    agent.rollout        instances and traffic switches (converge, replace, retire)
    agent.enforce        drift detection and repair
    agent.watch          the health monitor over every serving instance (agent.health probes)
    agent.gc             blobs, roots and per-instance volumes nothing uses any more
    agent.journal        crash-safe state;  agent.events / agent.metrics  what happened

Its lifecycle is explicit: ``Agent(config, ...)`` only stores what it is given (no I/O);
:meth:`Agent.open` takes the state lock and opens the journal, the store, the runtime and the
trust root; :meth:`Agent.start` recovers from a crash and starts the health monitor;
:meth:`Agent.run` reconciles until stopped; :meth:`Agent.close` lets go of everything.

One :meth:`Agent.reconcile_once`:

1. **fetch** the channel's release envelope from the :class:`~agent.releasesource.ReleaseSource`
   (size-capped); unreachable: an ``unavailable`` event, the source state records the reason
   (``auth``, ``unreachable``, ``not-found``, ``parse``), and everything verified keeps running;
2. **verify** it (:func:`signing.release.check_release`: threshold signatures over the exact bytes,
   expiry, channel, version not lower than the highest accepted); a version that already failed
   ``max_attempts`` times is skipped;
3. for every service: **verify the image signature** and required attestations, **pull it by
   digest** into the content store and **unpack** it into a read-only root (:mod:`agent.prepare`).
   Nothing starts until every service of the release passed (no mix-and-match);
4. **roll out** its services in parallel, each independently (:meth:`agent.rollout.Deployer.converge_all`);
   the release becomes ``good`` when every service's health held for its grace. A failure of
   any service returns every service to the previous good release, from the local store (no
   network), and counts an attempt;
5. **enforce** (:mod:`agent.enforce`): drifted, dead, too old or unhealthy instances are replaced.

Every refusal is an event ``refused`` with its reason (``signature``, ``threshold``, ``expired``,
``rollback``, ``digest``, ``identity``, ``policy``, ``unpack``, ``parse``, ``internal``), counted,
and kept as the journal's ``last_refusal``; the previous state keeps serving.

**The loop never dies.** Each step runs under a last-resort guard: an exception that is not a
kiln error (a bug, or a shape of hostile input nobody foresaw) becomes a refusal with reason
``internal`` naming the step, the services keep serving, a rollout it interrupted is rolled back,
the release version it happened on counts a failed attempt (so the same bytes are skipped after
``max_attempts``), and :meth:`Agent.run` backs off (the poll interval doubles per consecutive
internal refusal, up to :data:`MAX_BACKOFF`).

:meth:`Agent.start` recovers from a crash: instances the runtime has (or the journal knows) that
are not serving are stopped, unpacks the crash interrupted are removed, and an interrupted rollout
is rolled back to the release it started from. Every reconcile stops such strays again first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent.chaos import Candidate, ChaosMonkey
from agent.compose import unmount_strays
from agent.dataplane import DataPlane, make_dataplane
from agent.dataplane.inprocess import InProcessDataPlane
from agent.enforce import Enforcer
from agent.errors import STOP_FAILURES, AgentError, failure_detail
from agent.events import EventLog
from agent.gc import Collector
from agent.journal import (
    Journal,
    JournalState,
    Refusal,
    ReleaseRef,
    SourceState,
    read_source_state,
    write_source_state,
)
from agent.metrics import Metrics
from agent.netns import connect_in_netns
from agent.poll import ReleasePoller
from agent.prepare import Preparer
from agent.releases import ReleaseStore
from agent.releasesource import ConfigReleaseSource, ReleaseSource, source_reason
from agent.rollout import ConnectorFactory, Deployer, Prepared, RolloutFailed
from agent.runtime import Runtime
from agent.snapshots import SnapshotStore
from agent.standby import standby_of, with_standby
from agent.statedir import AgentBusy, StateLock
from agent.status import status_document
from agent.store import ContentStore, StoreLimits
from agent.trust import ROOT_FILE, TrustKeeper
from agent.unpack import UnpackLimits
from agent.watch import InstanceWatch
from manifests.agentconfig import AgentConfig, RuntimeKind
from manifests.chaos import RATE_HINT, Chaos, parse_rate
from manifests.digest import Digest
from manifests.errors import DocumentError, KilnError, VerificationError
from manifests.release import Release, Strategy
from manifests.trustroot import TrustRoot
from manifests.vocabulary import Outcome, Reason
from signing.release import check_release, claimed_version

if TYPE_CHECKING:
    from agent.fleetlink import FleetLink
    from fleet.gate import FleetGate

__all__ = [
    "ROOT_FILE",
    "MAX_BACKOFF",
    "AgentBusy",
    "ReconcileResult",
    "Agent",
    "make_runtime",
    "status_document",
]

#: The longest wait between reconciles while steps keep failing with an internal error (seconds).
MAX_BACKOFF = 300.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileResult:
    """What one reconcile did: its :class:`~manifests.vocabulary.Outcome`, the recorded
    :class:`~manifests.vocabulary.Reason` of a refusal; ``replaced`` counts instances enforcement
    replaced."""

    outcome: Outcome
    version: int | None = None
    reason: Reason | None = None
    detail: str = ""
    replaced: int = 0


class InternalFault(Exception):
    """An unexpected exception in a reconcile step (wrapped by the last-resort guard)."""

    def __init__(self, step: str, exc: BaseException) -> None:
        detail = f"{step}: {type(exc).__name__}: {exc}"
        super().__init__(detail[:500])
        self.step = step
        self.detail = detail[:500]


def make_runtime(config: AgentConfig, store: ContentStore) -> Runtime:
    if config.runtime is RuntimeKind.DOCKER:
        from agent.docker_runtime import DockerRuntime
        from agent.qemu import QemuRuntime, RoutedRuntime

        return RoutedRuntime(
            DockerRuntime(store, config.state, base_url=config.docker_host), QemuRuntime(config.state)
        )
    from agent.qemu import QemuRuntime, RoutedRuntime
    from agent.runc import RuncRuntime

    return RoutedRuntime(RuncRuntime(config.state), QemuRuntime(config.state))


def _netns_connector(path: str, port: int) -> Callable[[float], Any]:
    def connect(timeout: float) -> Any:
        return connect_in_netns(path, "127.0.0.1", port, timeout)

    return connect


def _dataplane_for(config: AgentConfig, connector: ConnectorFactory) -> DataPlane:
    """The config's data plane; a test's injected connector keeps forwarding in this process."""
    if connector is not _netns_connector:
        return InProcessDataPlane(connector)
    return make_dataplane(config.dataplane, config.state)


class Agent:
    """One host agent over one state directory (see the module docstring)."""

    journal: Journal
    store: ContentStore
    runtime: Runtime
    deployer: Deployer
    preparer: Preparer
    enforcer: Enforcer
    trust: TrustKeeper
    root: TrustRoot
    monitor: InstanceWatch
    collector: Collector

    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime: Runtime | None = None,
        source: ReleaseSource | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        connector: ConnectorFactory = _netns_connector,
        event_sink: Callable[[str], None] | None = None,
        health_deadline: float = 60.0,
        drain_timeout: float = 10.0,
        stop_grace: float = 5.0,
        lock: bool = True,
        dataplane: DataPlane | None = None,
        fleet: FleetGate | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(config.state)
        self.roots_dir = self.state_dir / "roots"
        self.releases_dir = self.state_dir / "releases"
        self.wall = wall
        self.metrics = Metrics()
        self.events = EventLog(self.state_dir, sink=event_sink, clock=lambda: wall().timestamp())
        self.releases = ReleaseStore(self.releases_dir)
        self.busy = threading.Lock()  # one operation at a time (loop, status-endpoint rollback)
        self.wake = threading.Event()  # set by the health monitor: something needs replacing now
        self._reconcile_now = False  # with ``wake``: a whole reconcile now (SIGHUP, POST /reconcile)
        self.poller = ReleasePoller()  # polls download the envelope only when the channel tag moved
        self._lock = StateLock(self.state_dir) if lock else None
        self._runtime_arg = runtime
        self._source_arg = source
        self._clock = clock
        self._sleep = sleep
        self._connector = connector
        self._dataplane_arg = dataplane
        self._health_deadline = health_deadline
        self._drain_timeout = drain_timeout
        self._stop_grace = stop_grace
        self._opened = False
        self._faults: list[InternalFault] = []
        self._pending_refusal: Refusal | None = None  # from a thread that may not commit
        self.source_state = SourceState()
        self._fleet_arg = fleet
        self.fleet: FleetLink | None = None
        self.chaos: ChaosMonkey | None = None
        self._chaos_from_release: Chaos | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> Agent:
        """Take the state lock and open the journal, store, runtime and trust root (idempotent)."""
        if self._opened:
            return self
        if self._lock is not None:
            self._lock.acquire()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # a damaged journal is set aside (and said so below) rather than keeping the agent down
            self.journal = Journal(self.state_dir, recover=True)
            self.store = ContentStore(self.state_dir, limits=StoreLimits.from_agent(self.config.limits))
            self.snapshots = SnapshotStore(self.state_dir)
            self.releases.open()
            self.runtime = (
                self._runtime_arg if self._runtime_arg is not None else make_runtime(self.config, self.store)
            )
            bundle = getattr(self.runtime, "bundle_digest", None)
            self.deployer = Deployer(
                runtime=self.runtime,
                journal=self.journal,
                events=self.events,
                metrics=self.metrics,
                connector=self._connector,
                clock=self._clock,
                sleep=self._sleep,
                wall=lambda: self.wall().timestamp(),
                bundle_digest=bundle if callable(bundle) else (lambda _i: None),
                health_deadline=self._health_deadline,
                drain_timeout=self._drain_timeout,
                stop_grace=self._stop_grace,
                dataplane=self._dataplane_arg or _dataplane_for(self.config, self._connector),
            )
            self.preparer = Preparer(
                store=self.store,
                snapshots=self.snapshots,
                roots_dir=self.roots_dir,
                limits=lambda: UnpackLimits.from_agent(self.config.limits),  # the config in force
                metrics=self.metrics,
                wall=self.wall,
                source=lambda: self.source,
            )
            self.monitor = InstanceWatch(
                journal=self.journal,
                deployer=self.deployer,
                runtime=self.runtime,
                events=self.events,
                wake=self.wake,
                on_error=lambda what, exc: self._internal(InternalFault(f"health {what}", exc), loop=False),
                clock=self._clock,
            )
            self.enforcer = Enforcer(
                runtime=self.runtime,
                journal=self.journal,
                deployer=self.deployer,
                events=self.events,
                preparer=self.preparer,
                releases=self.releases,
                roots_dir=self.roots_dir,
                snapshots=self.snapshots,
                wall=lambda: self.wall().timestamp(),
                health_state=self.monitor.state,
            )
            self.collector = Collector(
                state_dir=self.state_dir,
                roots_dir=self.roots_dir,
                store=self.store,
                snapshots=self.snapshots,
                releases=self.releases,
                journal=self.journal,
                enforcer=self.enforcer,
                events=self.events,
            )
            if self.journal.damaged is not None:
                aside, why = self.journal.damaged
                self.events.emit("journal_damaged", detail=why, moved_to=str(aside))
            self.trust = TrustKeeper(self.state_dir, first_root=self.config.trust_root, journal=self.journal)
            self.root = self.trust.load()
            self.source_state = read_source_state(self.state_dir)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        if self._fleet_arg is not None or self.config.fleet is not None:
            from agent.fleetlink import FleetLink, make_gate  # fleet's httpx only for fleet hosts

            gate = self._fleet_arg if self._fleet_arg is not None else make_gate(self.config)
            self.fleet = FleetLink(gate, self.events.emit) if gate is not None else None
        self._opened = True
        return self

    @property
    def source(self) -> ReleaseSource:
        """The injected source, or the one the (current) config names."""
        if self._source_arg is not None:
            return self._source_arg
        return ConfigReleaseSource(self.config, staging=self.state_dir / "tmp", poller=self.poller)

    def close(self, *, stop_instances: bool = False) -> None:
        """Stop the health monitor and the traffic switches (and, if asked, every instance);
        release the state lock."""
        if not self._opened:
            return
        self.monitor.stop()
        if stop_instances:
            for name in sorted({r.service for r in self.journal.state.instances}):
                self.deployer.stop_service(name)
            still = []  # ids whose stop failed stay known: the next start or `kiln agent down` retries
            for iid in self.journal.state.known:
                try:
                    self.runtime.stop(iid, grace=self.deployer.stop_grace)
                except STOP_FAILURES as exc:
                    self.events.emit("error", what=f"stop {iid}", detail=failure_detail(exc))
                    still.append(iid)
            self.journal.commit(with_standby(replace(self.journal.state, known=tuple(still)), ()))
            self.deployer.dataplane.stop()
            with contextlib.suppress(KilnError, OSError):
                unmount_strays(self.roots_dir)  # nothing runs from the composed roots any more
        self.deployer.close()
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        close = getattr(self.runtime, "close", None)
        if callable(close) and stop_instances:
            close()
        if self._lock is not None:
            self._lock.release()
        self._opened = False

    def __enter__(self) -> Agent:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trust root ------------------------------------------------------------------------------

    def trust_update(self, envelope: bytes) -> TrustRoot:
        """Install root N+1 (signed by a threshold of root N's root keys and its own)."""
        self.open()
        try:
            new = self.trust.update(self.root, envelope, now=self.wall())
        except VerificationError as exc:
            self._refuse(exc, version=None, what="trust root")
            raise
        self.root = new
        self.events.emit("root_updated", root_version=new.version)
        return new

    # -- releases kept locally -------------------------------------------------------------------

    def load_release(self, ref: ReleaseRef) -> Release:
        """A release accepted earlier, from ``STATE/releases`` (its bytes re-hashed)."""
        return self.releases.load(ref)

    def _release_or_none(self, ref: ReleaseRef | None) -> Release | None:
        release, err = self.releases.load_or_none(ref)
        if err is not None and ref is not None:
            self.events.emit("error", what=f"load release v{ref.version}", detail=err.message)
        return release

    def _prepare(self, release: Release, *, fetch: bool) -> dict[str, Prepared]:
        return self.preparer.prepare(release, root=self.root, fetch=fetch)

    # -- refusals --------------------------------------------------------------------------------

    def _refuse(self, exc: VerificationError, *, version: int | None, what: str = "release") -> Reason:
        reason = exc.reason.recorded
        self._record_refusal(reason, exc.message, version=version, what=what)
        return reason

    def _record_refusal(self, reason: Reason, detail: str, *, version: int | None, what: str) -> None:
        self.metrics.count_refusal(reason)
        self.events.emit("refused", reason=reason, detail=detail, version=version, what=what)
        refusal = Refusal(reason=reason, detail=detail, version=version, at=self.wall().timestamp())
        self.journal.commit(replace(self.journal.state, last_refusal=refusal))

    def _internal(self, fault: InternalFault, *, version: int | None = None, loop: bool = True) -> None:
        """The last-resort guard's refusal: event, metric, journal (never raises).

        Only the loop's thread commits the journal; a fault in another thread (the health
        monitor, the status endpoint) is committed by the next reconcile.
        """
        with contextlib.suppress(Exception):
            self.metrics.count_refusal(Reason.INTERNAL)
            self.events.emit(
                "refused", reason=Reason.INTERNAL, detail=fault.detail, version=version, what=fault.step
            )
            refusal = Refusal(
                reason=Reason.INTERNAL, detail=fault.detail, version=version, at=self.wall().timestamp()
            )
            if loop:
                self._faults.append(fault)
                self.journal.commit(replace(self.journal.state, last_refusal=refusal))
            else:
                self._pending_refusal = refusal

    def _guard(self, step: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; kiln errors and failed rollouts pass, anything else becomes InternalFault."""
        try:
            return fn()
        except (KilnError, RolloutFailed, InternalFault):
            raise
        except Exception as exc:
            raise InternalFault(step, exc) from exc

    @contextlib.contextmanager
    def _step(self, step: str, *, io: bool = False) -> Iterator[None]:
        """The guard as a block; ``io=True``: an OSError is the network's or the disk's fault
        (the step reports it as unavailable), not an internal one."""
        try:
            yield
        except (KilnError, RolloutFailed, InternalFault):
            raise
        except Exception as exc:
            if io and isinstance(exc, OSError):
                raise
            raise InternalFault(step, exc) from exc

    # -- start and recovery ----------------------------------------------------------------------

    def start(self, *, monitor: bool = True) -> None:
        """Re-attach after a (re)start: point the data plane at what the journal says serves, stop
        what does not serve, finish or undo a rollout; then watch every serving instance's health
        (``monitor=False``: one-shot commands)."""
        self.open()
        st = self.journal.state
        serving = {r.id for r in st.instances}
        missing = [iid for iid in serving if iid not in st.known]
        if missing:
            self.journal.commit(st.with_known(*missing))
        release_ref = st.rollout_to or st.good
        if release_ref is not None and st.instances:
            release = self._release_or_none(release_ref)
            older = self._release_or_none(st.rollout_from) if st.rollout_from is not None else None
            for service in _services_of(release, older):
                self.deployer.adopt(service, st.serving(service.name))
        self.deployer.dataplane.retain({r.service for r in st.instances})
        # Only now: the data plane (which outlived the last agent) may still point at instances a
        # switch committed away before the crash; stopping them first would fail its requests.
        self._stop_strays("recover")
        with contextlib.suppress(OSError, KilnError):  # no mount outlives a crash unless it serves
            now = self.journal.state
            running = [*now.instances, *(s.record for s in standby_of(now))]
            unmount_strays(self.roots_dir, keep=[Digest.parse(r.manifest) for r in running])
        self._finish_interrupted("recover")
        with contextlib.suppress(OSError, KilnError):
            self.enforcer.remove_set_aside()
        self.metrics.set_instances(len(self.journal.state.instances))
        if monitor:
            self.monitor.start()

    def _finish_interrupted(self, event: str) -> None:
        """A rollout the journal says is in progress was interrupted (a crash, an internal fault):
        count a failed attempt and return to the release it started from."""
        st = self.journal.state
        if st.rollout_to is None:
            return
        self.events.emit(
            event,
            action="rollback",
            version=st.rollout_to.version,
            to=st.rollout_from.version if st.rollout_from is not None else None,
        )
        self.journal.commit(self.journal.state.with_failure(st.rollout_to.version, "interrupted"))
        self._return_to(st.rollout_from, failed=st.rollout_to)

    def _stop_strays(self, event: str) -> None:
        """Stop every instance the runtime has, or the journal knows, that does not serve.

        Run at start (``recover``) and before each reconcile (``stray``: an orphaned ``runc run``
        of a killed agent can finish after the recovery). An id leaves ``known`` only once the
        runtime confirmed the stop; a failed stop is retried by the next reconcile.
        """
        st = self.journal.state
        serving = {r.id for r in st.instances} | {s.record.id for s in standby_of(st)}
        try:
            live = set(self.runtime.list())
        except KilnError as exc:
            self.events.emit("error", what="list instances", detail=exc.message)
            live = set()
        for iid in sorted((live | set(st.known)) - serving):
            self.events.emit(event, action="stop", instance=iid)
            self.deployer.forget(iid)

    # -- one reconcile ---------------------------------------------------------------------------

    def reconcile_once(self) -> ReconcileResult:
        with self.busy:
            self.metrics.count_reconcile()
            self._faults = []
            pending, self._pending_refusal = self._pending_refusal, None
            if pending is not None:
                self.journal.commit(replace(self.journal.state, last_refusal=pending))
            result: ReconcileResult | None = None
            try:
                self._guard("strays", lambda: self._stop_strays("stray"))
                self._guard("recover", lambda: self._finish_interrupted("recover"))
            except InternalFault as fault:
                self._internal(fault)
            try:
                result = self._consider()
            except InternalFault as fault:
                self._internal(fault)
            replaced = 0
            try:
                replaced = self._guard("enforce", self.enforcer.enforce)
            except InternalFault as fault:
                self._internal(fault)
            try:
                self._guard("gc", self.collector.volumes)
                self._guard("standby", self.deployer.expire_standby)
            except InternalFault as fault:
                self._internal(fault)
            if result is None or (
                self._faults and result.outcome not in (Outcome.ROLLED_OUT, Outcome.FAILED)
            ):
                first = self._faults[0]
                version = result.version if result is not None else None
                result = ReconcileResult(
                    outcome=Outcome.REFUSED, version=version, reason=Reason.INTERNAL, detail=first.detail
                )
            if self.fleet is not None:
                good = self.journal.state.good
                self.fleet.heartbeat(good.version if good is not None else None, self._health_summary())
            return replace(result, replaced=replaced)

    # -- fleet and chaos -------------------------------------------------------------------------

    def _health_summary(self) -> str:
        """One word for the fleet: ``healthy`` when every serving instance is, else the worst."""
        states = {self.health_of(rec.id) for rec in self.journal.state.instances}
        for word in ("unhealthy", "failing", "unknown"):
            if word in states:
                return word
        return "healthy" if states else "idle"

    def _release_chaos(self, release: Release) -> None:
        """The serving release's ``chaos`` block applies unless an operator set chaos here."""
        if release.chaos == self._chaos_from_release:
            return
        self._chaos_from_release = release.chaos
        if self.chaos is not None and self.chaos.until is not None:
            return  # the operator's setting wins until it ends
        self.chaos = ChaosMonkey(release.chaos, clock=self._clock) if release.chaos is not None else None

    def set_chaos(self, policy: Chaos | None, *, seconds: float | None) -> dict[str, Any]:
        """The operator's chaos for this host (``None``: off, back to the release's policy)."""
        if policy is None:
            release_policy = self._chaos_from_release
            self.chaos = ChaosMonkey(release_policy, clock=self._clock) if release_policy else None
        else:
            until = self._clock() + seconds if seconds is not None else None
            self.chaos = ChaosMonkey(policy, clock=self._clock, until=until)
        self.events.emit("chaos", policy=policy.to_dict() if policy is not None else None, seconds=seconds)
        return self.chaos_status()

    def chaos_request(self, params: dict[str, str]) -> dict[str, Any]:
        """``POST /chaos``: ``off=1``, or ``kill_rate`` (``1/h``), ``min_healthy`` and ``seconds``."""
        if params.get("off"):
            return self.set_chaos(None, seconds=None)
        text = params.get("kill_rate", "")
        rate = parse_rate(text)
        if rate is None:
            raise AgentError(f"chaos: invalid kill rate {text[:40]!r}", hint=RATE_HINT)
        try:
            min_healthy = int(params.get("min_healthy", "1"))
            seconds = float(params["seconds"]) if "seconds" in params else None
        except (ValueError, OverflowError):
            raise AgentError("chaos: min_healthy must be an integer and seconds a number") from None
        if not 0 <= min_healthy <= 10_000 or (seconds is not None and not 0 < seconds <= 30 * 86400):
            raise AgentError("chaos: min_healthy from 0 to 10000, seconds from 0 to 30 days")
        return self.set_chaos(Chaos(kill_rate=rate, min_healthy=min_healthy, text=text), seconds=seconds)

    def chaos_status(self) -> dict[str, Any]:
        monkey = self.chaos
        if monkey is None or not monkey.active:
            return {"active": False}
        left = None if monkey.until is None else max(0.0, monkey.until - self._clock())
        return {
            "active": True,
            "policy": monkey.policy.to_dict(),
            "kills": monkey.kills,
            "seconds_left": left,
        }

    def chaos_tick(self) -> str | None:
        """Kill one serving instance if the chaos policy says one is due (only while idle)."""
        monkey = self.chaos
        if monkey is None or not monkey.active or not self.busy.acquire(blocking=False):
            return None
        try:
            serving: dict[str, list[Candidate]] = {}
            for rec in self.journal.state.instances:
                healthy = self.health_of(rec.id) == "healthy" and self.deployer.in_rotation(rec.id)
                serving.setdefault(rec.service, []).append(
                    Candidate(service=rec.service, instance=rec.id, healthy=healthy)
                )
            victim = monkey.tick(serving)
            if victim is None:
                return None
            self.events.emit("chaos_killed", service=victim.service, instance=victim.instance)
            # out of rotation first: chaos tests replacement, not the clients of the service
            self.deployer.set_rotation(victim.instance, False)
            try:
                self.runtime.stop(victim.instance, grace=0.0)
            except STOP_FAILURES as exc:
                self.events.emit("error", what="chaos kill", detail=failure_detail(exc))
            self.wake.set()  # replace it now, not at the next poll
            return victim.instance
        finally:
            self.busy.release()

    def enforce_once(self) -> int:
        """Only the enforcement step (the loop runs it when the health monitor wakes it)."""
        with self.busy:
            try:
                return self._guard("enforce", self.enforcer.enforce)
            except InternalFault as fault:
                self._internal(fault)
                return 0

    def _fetch(self) -> bytes:
        source = self.source
        try:
            with self._step("fetch", io=True):
                data = source.fetch_release(self.config.channel)
        except (KilnError, OSError) as exc:
            detail = exc.message if isinstance(exc, KilnError) else str(exc)
            self._source_failed(source.display, source_reason(exc), detail)
            raise
        except InternalFault as fault:
            self._source_failed(source.display, Reason.INTERNAL, fault.detail)
            raise
        self._set_source_state(self.source_state.succeeded(source.display, self.wall().timestamp()))
        return data

    def _source_failed(self, display: str, reason: str, detail: str) -> None:
        self._set_source_state(self.source_state.failed(display, reason, detail, self.wall().timestamp()))

    def _set_source_state(self, state: SourceState) -> None:
        self.source_state = state
        try:
            write_source_state(self.state_dir, state)
        except OSError as exc:
            self.events.emit("error", what="source state", detail=str(exc))

    def _consider(self) -> ReconcileResult:
        try:
            envelope = self._fetch()
        except VerificationError as exc:
            reason = self._refuse(exc, version=None)
            return ReconcileResult(outcome=Outcome.REFUSED, reason=reason, detail=exc.message)
        except (KilnError, OSError) as exc:
            detail = exc.message if isinstance(exc, KilnError) else str(exc)
            self.events.emit(
                "unavailable",
                what="release source",
                reason=self.source_state.last_error_reason,
                detail=detail,
            )
            return ReconcileResult(outcome=Outcome.UNAVAILABLE, reason=None, detail=detail)
        st = self.journal.state
        try:
            with self._step("verify"):
                verified = check_release(
                    envelope,
                    root=self.root,
                    channel=self.config.channel,
                    now=self.wall(),
                    highest_accepted=st.highest.version if st.highest is not None else None,
                    current_payload_digest=st.highest.payload_digest if st.highest is not None else None,
                )
        except VerificationError as exc:
            reason = self._refuse(exc, version=_claimed_version(envelope))
            return ReconcileResult(outcome=Outcome.REFUSED, reason=reason, detail=exc.message)
        release = verified.release
        ref = ReleaseRef(version=release.version, payload_digest=str(verified.payload_digest))
        if st.good == ref:
            self._release_chaos(release)
            return ReconcileResult(outcome=Outcome.CURRENT, version=release.version)
        failure = st.failure(release.version)
        if failure is not None and failure.attempts >= self.config.max_attempts:
            return ReconcileResult(outcome=Outcome.SKIPPED, version=release.version, detail=failure.reason)
        try:
            with self._step("prepare", io=True):
                prepared = self._prepare(release, fetch=True)
        except VerificationError as exc:
            reason = self._refuse(exc, version=release.version)
            return ReconcileResult(
                outcome=Outcome.REFUSED, version=release.version, reason=reason, detail=exc.message
            )
        except DocumentError as exc:
            err = VerificationError(exc.message, reason=Reason.PARSE)
            self._refuse(err, version=release.version)
            return ReconcileResult(
                outcome=Outcome.REFUSED, version=release.version, reason=Reason.PARSE, detail=exc.message
            )
        except (KilnError, OSError) as exc:
            detail = exc.message if isinstance(exc, KilnError) else str(exc)
            self.events.emit("unavailable", what=f"images of v{release.version}", detail=detail)
            return ReconcileResult(outcome=Outcome.UNAVAILABLE, version=release.version, detail=detail)
        except InternalFault as fault:
            self.journal.commit(self.journal.state.with_failure(release.version, f"internal: {fault.detail}"))
            self._internal(fault, version=release.version)
            return ReconcileResult(
                outcome=Outcome.REFUSED, version=release.version, reason=Reason.INTERNAL, detail=fault.detail
            )
        if self.fleet is not None:
            # the images are verified and unpacked while the host waits: a slot is spent on starting
            decision = self.fleet.before(release)
            if not decision.allowed:
                return ReconcileResult(
                    outcome=Outcome.WAITING, version=release.version, detail=decision.reason
                )
        self.releases.save(verified.payload, verified.payload_digest)
        self.journal.commit(
            replace(self.journal.state, highest=ref, rollout_to=ref, rollout_from=self.journal.state.good)
        )
        self.events.emit("accepted", version=release.version, payload_digest=ref.payload_digest)
        result = self._roll_out(release, ref, prepared)
        if self.fleet is not None:
            self.fleet.after(release.version, ok=result.outcome is Outcome.ROLLED_OUT, detail=result.detail)
        if result.outcome is Outcome.ROLLED_OUT:
            self._release_chaos(release)
        return result

    def _roll_out(self, release: Release, ref: ReleaseRef, prepared: dict[str, Prepared]) -> ReconcileResult:
        previous = self.journal.state.good
        fault: InternalFault | None = None
        failed: dict[str, RolloutFailed] = {}
        try:
            with self._step("roll out"):
                failed = self.deployer.converge_all([prepared[s.name] for s in release.services])
            reason = _failure_reason(failed) if failed else None
        except InternalFault as exc:
            fault, reason = exc, f"internal: {exc.detail}"
        if reason is not None:
            self.metrics.count_rollout("failed")
            self.events.emit("rollout_failed", version=release.version, detail=reason)
            self.journal.commit(self.journal.state.with_failure(release.version, reason))
            if fault is not None:
                self._internal(fault, version=release.version)
            # A runtime's own last check refused the image as it started (a VM part that changed
            # on disk after it was prepared): a refusal with its reason, not a failed start.
            cause = next(
                (e.__cause__ for e in failed.values() if isinstance(e.__cause__, VerificationError)), None
            )
            refused = None if cause is None else self._refuse(cause, version=release.version, what="image")
            try:
                self._guard("roll back", lambda: self._return_to(previous, failed=ref))
            except InternalFault as late:
                self._internal(late, version=release.version)
            if refused is not None and isinstance(cause, VerificationError):
                return ReconcileResult(
                    outcome=Outcome.REFUSED, version=release.version, reason=refused, detail=cause.message
                )
            return ReconcileResult(outcome=Outcome.FAILED, version=release.version, detail=reason)
        names = {s.name for s in release.services}
        for name in sorted({r.service for r in self.journal.state.instances} - names):
            self.deployer.stop_service(name)
        st = self.journal.state
        self.journal.commit(
            replace(
                st,
                good=ref,
                previous=previous if previous != ref else st.previous,
                rollout_to=None,
                rollout_from=None,
                failures=tuple(f for f in st.failures if f.version != release.version),
            )
        )
        self.metrics.count_rollout("success")
        self.events.emit("rolled_out", version=release.version, payload_digest=ref.payload_digest)
        try:
            self._guard("gc", self.collector.releases_and_roots)
        except InternalFault as fault:
            self._internal(fault, version=release.version)
        return ReconcileResult(outcome=Outcome.ROLLED_OUT, version=release.version)

    def _return_to(self, target: ReleaseRef | None, *, failed: ReleaseRef | None) -> None:
        """Converge every service back to ``target`` (from the local store), or stop everything."""
        self.metrics.count_rollback()
        if target is None:
            for name in sorted({r.service for r in self.journal.state.instances}):
                self.deployer.stop_service(name)
        else:
            release = self.load_release(target)
            prepared = self._prepare(release, fetch=False)
            broken = self.deployer.converge_all([prepared[s.name] for s in release.services], Strategy())
            for name, exc in broken.items():
                self.events.emit("rollback_failed", service=name, detail=exc.reason)
            names = {s.name for s in release.services}
            for name in sorted({r.service for r in self.journal.state.instances} - names):
                self.deployer.stop_service(name)
        self.journal.commit(replace(self.journal.state, rollout_to=None, rollout_from=None))
        self.events.emit(
            "rolled_back",
            to=target.version if target is not None else None,
            failed=failed.version if failed is not None else None,
        )

    def rollback(self) -> ReleaseRef:
        """The operator's rollback: back to the previous good release, locally, recorded."""
        with self.busy:
            st = self.journal.state
            if st.previous is None or st.good is None:
                raise AgentError("no previous good release to roll back to", hint="see `kiln agent status`")
            target, left = st.previous, st.good
            self.journal.commit(replace(st, rollout_to=target, rollout_from=left))
            release = self.load_release(target)
            prepared = self._prepare(release, fetch=False)
            failed = self.deployer.converge_all([prepared[s.name] for s in release.services], Strategy())
            if failed:
                reason = _failure_reason(failed)
                self.events.emit("rollback_failed", detail=reason)
                self._return_to(left, failed=target)
                raise AgentError(f"rollback to v{target.version} failed: {reason}") from None
            names = {s.name for s in release.services}
            for name in sorted({r.service for r in self.journal.state.instances} - names):
                self.deployer.stop_service(name)
            st = self.journal.state
            blocked = replace(
                st,
                good=target,
                previous=None,
                rollout_to=None,
                rollout_from=None,
            )
            for _ in range(self.config.max_attempts):  # the release rolled back from is not retried
                blocked = blocked.with_failure(left.version, "rolled back by the operator")
            self.journal.commit(blocked)
            self.metrics.count_rollback()
            self.events.emit("rollback", to=target.version, left=left.version, by="operator")
            return target

    # -- status ----------------------------------------------------------------------------------

    def health_of(self, iid: str) -> str:
        """``healthy``, ``failing``, ``unhealthy`` (the monitor's last word), or what the rollout
        saw, or ``unknown`` before the first probe."""
        state = self.monitor.state(iid) if self._opened else None
        if state is not None:
            return state
        watch = self.deployer.watches.get(iid) if self._opened else None
        return str(watch.state) if watch is not None else "unknown"

    def metrics_text(self) -> str:
        """``GET /metrics``: the counters, and the standby instances the journal holds."""
        return self.metrics.render(standby=standby_of(self.journal.state) if self._opened else ())

    def status(self) -> dict[str, Any]:
        try:
            return self._guard("status", self._status)
        except InternalFault as fault:
            self._internal(fault, loop=False)
            return {"error": "internal", "detail": fault.detail}

    def _status(self) -> dict[str, Any]:
        st: JournalState = self.journal.state
        instances = []
        for rec in st.instances:
            instances.append(
                {
                    "id": rec.id,
                    "service": rec.service,
                    "release": rec.release,
                    "image": rec.image,
                    "started_at": rec.started_at,
                    "health": self.health_of(rec.id),
                    "in_rotation": self.deployer.in_rotation(rec.id),
                }
            )
        doc = status_document(
            st,
            instances=instances,
            metrics=self.metrics.snapshot(),
            config=self.config,
            source=self.source_state,
        )
        doc["chaos"] = self.chaos_status()
        if self.config.fleet is not None:
            link = self.config.fleet
            doc["fleet"] = {"name": link.name, "host": link.host, "via": link.etcd or link.fleetlock}
        return doc

    # -- the loop --------------------------------------------------------------------------------

    def run(
        self, stop: threading.Event, *, on_result: Callable[[ReconcileResult], None] | None = None
    ) -> None:
        """Reconcile every ``poll_interval`` until ``stop`` is set, and at once after :meth:`nudge`;
        enforce at once when the health monitor found an instance unhealthy; back off while steps
        fail with internal errors."""
        internal = 0
        while not stop.is_set():
            try:
                result = self.reconcile_once()
            except KilnError as exc:
                self.events.emit("error", what="reconcile", detail=exc.message)
            except Exception as exc:  # noqa: BLE001 - the loop never dies
                with self.busy:
                    self._internal(InternalFault("reconcile", exc))
                internal += 1
            else:
                internal = internal + 1 if result.reason is not None and result.reason.retryable else 0
                if on_result is not None:
                    with contextlib.suppress(Exception):
                        on_result(result)
            wait = self.config.poll_interval
            if internal:
                wait = min(max(MAX_BACKOFF, wait), wait * 2 ** min(internal, 16))
            deadline = time.monotonic() + wait
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self.wake.wait(min(left, 0.5)):
                    self.wake.clear()
                    if stop.is_set() or self._reconcile_now:
                        self._reconcile_now = False
                        break
                    self.enforce_once()
                try:
                    self.chaos_tick()
                except Exception as exc:  # noqa: BLE001 - the loop never dies
                    with self.busy:
                        self._internal(InternalFault("chaos", exc))

    def nudge(self) -> None:
        """Reconcile now instead of at the next poll (SIGHUP, ``kiln agent reconcile --now``)."""
        self._reconcile_now = True
        self.wake.set()


def _services_of(*releases: Release | None) -> list[Any]:
    seen: dict[str, Any] = {}
    for rel in releases:
        if rel is None:
            continue
        for s in rel.services:
            seen.setdefault(s.name, s)
    return list(seen.values())


def _failure_reason(failed: dict[str, RolloutFailed]) -> str:
    """One line for the services whose rollout failed (a lone service's reason as it is)."""
    if len(failed) == 1:
        return next(iter(failed.values())).reason
    return "; ".join(f"{name}: {exc.reason}" for name, exc in failed.items())


def _claimed_version(envelope: bytes) -> int | None:
    """The version a refused envelope claims (for the log only; never trusted)."""
    return claimed_version(envelope)
