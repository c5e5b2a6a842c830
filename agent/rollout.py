"""Rollouts: moving one service from the instances it runs to instances of another spec.

:class:`Deployer` owns the instances and the traffic switch of every service and does four things,
each journaled before it acts (an instance id enters ``known`` before the runtime starts it; the
serving set is committed before the forwarder is switched to it):

- :meth:`Deployer.converge` brings a service to a :class:`Prepared` spec with its strategy.
  Instances already running that spec are kept; the missing ones are started in steps
  (:func:`rollout_steps`): ``blue-green`` one step of every missing instance, ``rolling`` one
  instance per step, ``canary`` its steps. Each step: start the step's new instances, wait for
  health (grace, then ``retries`` consecutive passes, bounded), commit and switch the serving set
  (new + old instances still needed), hold health for ``grace`` (every probe passing), then drain
  and stop the old instances the step retired. Any failure raises :class:`RolloutFailed` after the
  serving set went back to the old instances still running (or, if none are left, stayed on the
  new ones until the caller converges back) and the new instances that serve nothing were stopped.
- :meth:`Deployer.converge_all` converges the services of a release together, each in a thread
  of its own: every service's rollout is independent (its own steps, its own undo), and a failed
  one does not stop the others; the caller decides what a failure means for the release. The
  journal's read-modify-writes go through :meth:`agent.journal.Journal.update`, so concurrent
  rollouts never lose each other's ids, serving sets or standby entries.
- :meth:`Deployer.replace` swaps one instance for a fresh one of the same spec (drift, death,
  ``max_lifetime``): start, wait healthy, switch, drain, stop.
- :meth:`Deployer.retire` drains and stops an instance and forgets it.
- :meth:`Deployer.adopt` points the data plane (which outlived the agent, :mod:`agent.dataplane`)
  at the instances the journal says serve, after a restart; equal sets change nothing.
- :meth:`Deployer.set_rotation` takes an instance the health monitor found unhealthy out of its
  service's rotation (and puts it back when it recovers); a service never loses its last backend
  this way (with every instance unhealthy, all stay in rotation: fail open, as HAProxy does).

A service whose image declares volumes (``Prepared.exclusive``) never runs two instances on one
volume: its rollouts and replacements stop the old instance before they start the new one.

Time is injected (``clock``, ``sleep``, ``wall``), so the state machine runs in unit tests with a
fake runtime and a fake probe, without waiting.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from agent.dataplane import DataPlane, Target
from agent.dataplane.inprocess import InProcessDataPlane
from agent.errors import STOP_FAILURES, RuntimeFailure, failure_detail
from agent.events import EventLog
from agent.health import HealthResult, HealthSpec, HealthState, HealthWatch, Probe, check_once, wait_healthy
from agent.journal import InstanceRecord, Journal, JournalState
from agent.metrics import Metrics
from agent.runtime import (
    InstanceHandle,
    InstanceSpec,
    InstanceStatus,
    ResourceLimits,
    Runtime,
    new_instance_id,
)
from agent.standby import Standby, standby_of, with_standby
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.image import HealthCheck, HttpCheck
from manifests.imageconfig import RunPolicy
from manifests.release import Service, Strategy, StrategyKind

__all__ = [
    "RolloutFailed",
    "Prepared",
    "ConnectorFactory",
    "Deployer",
    "rollout_steps",
    "split_serving",
    "RolloutPlan",
    "MAX_PARALLEL_ROLLOUTS",
    "health_spec_for",
    "service_port",
    "config_digest",
]

Connector = Callable[[float], Any]
#: The services of one release that roll out at the same time (:meth:`Deployer.converge_all`).
MAX_PARALLEL_ROLLOUTS = 8
ConnectorFactory = Callable[[str, int], Connector]


class RolloutFailed(Exception):
    """A rollout step failed; ``reason`` is one line for the journal and the event log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """Everything needed to start instances of one service of one release (verified, unpacked)."""

    service: Service
    release: int
    image_digest: Digest  # what the release pins
    manifest_digest: Digest  # the platform manifest unpacked
    image_config: Mapping[str, Any]
    rootfs: Any  # pathlib.Path of the read-only root
    fingerprint: str
    port: int | None
    health: HealthSpec | None
    grace: float
    config: str  # config_digest(): equal digests run the same thing
    # The image declares volumes its instances share: stop the old instance before the new starts.
    exclusive: bool = False

    @property
    def name(self) -> str:
        return self.service.name


def service_port(service: Service, image: RunPolicy) -> int | None:
    """The port the service listens on inside its instance: the image's first ``dev.kiln.ports``
    entry, else the release health check's port."""
    port = image.port()
    if port is not None:
        return port
    if service.health is not None:
        return service.health.check.port
    return None


def health_spec_for(service: Service, image_health: HealthCheck | None) -> tuple[HealthSpec | None, float]:
    """The check to run and its grace: the release's ``health`` first, else the image's (its
    ``dev.kiln.health`` label, or ``vm.json``'s health); an exec check is not run by rollouts."""
    if service.health is not None:
        h = service.health
        kw = {"interval": h.interval, "timeout": h.timeout, "retries": h.retries}
        if isinstance(h.check, HttpCheck):
            return HealthSpec.http(h.check.port, h.check.path, **kw), h.grace
        return HealthSpec.tcp(h.check.port, **kw), h.grace
    if image_health is not None:
        spec = HealthSpec.from_check(image_health)
        if spec.kind.uses_connector:
            return spec, 0.0
    return None, 0.0


def config_digest(service: Service, image_digest: Digest, manifest_digest: Digest, port: int | None) -> str:
    """What an instance runs, as a digest: two instances with equal digests are interchangeable."""
    doc = {
        "service": service.name,
        "image": str(image_digest),
        "manifest": str(manifest_digest),
        "env": dict(service.env),
        "port": port,
    }
    # Only when set, so a digest (and the instances it keeps) survives an agent upgrade unchanged.
    if service.resources is not None:
        doc["resources"] = service.resources.to_dict()
    if service.user_namespace:
        doc["user_namespace"] = True
    if service.volume_per_instance:  # only when set: the digests of instances without it stay
        doc["volume_per_instance"] = True
    return f"sha256:{hashlib.sha256(canonical_json(doc)).hexdigest()}"


def rollout_steps(strategy: Strategy, replicas: int, need: int) -> tuple[int, ...]:
    """How many new instances exist after each step, when ``need`` of ``replicas`` are missing."""
    if need <= 0:
        return ()
    if strategy.kind is StrategyKind.BLUE_GREEN:
        return (need,)
    if strategy.kind is StrategyKind.ROLLING:
        return tuple(range(1, need + 1))
    counts: list[int] = []
    for step in strategy.steps or ():
        n = min(need, step.instances(replicas))
        if n > 0 and (not counts or n > counts[-1]):
            counts.append(n)
    if not counts or counts[-1] != need:
        counts.append(need)
    return tuple(counts)


def split_serving(
    current: Sequence[InstanceRecord], config: str, replicas: int
) -> tuple[list[InstanceRecord], list[InstanceRecord]]:
    """The serving instances a rollout to ``config`` keeps (those that run it, at most
    ``replicas``) and those it replaces (the others, surplus ones first)."""
    kept = [r for r in current if r.config == config]
    replaced = [r for r in current if r.config != config]
    return kept[:replicas], [*kept[replicas:], *replaced]


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPlan:
    """One service's rollout: the instances it keeps, those it replaces, and how many new
    instances exist after each step (:func:`rollout_steps`)."""

    kept: tuple[InstanceRecord, ...]
    replaced: tuple[InstanceRecord, ...]
    steps: tuple[int, ...]
    blue_green: bool

    def old_serving(self, count: int) -> list[InstanceRecord]:
        """The replaced instances that still serve once ``count`` new ones do: blue-green keeps
        them all until its last step; the others keep as many as the new instances still lack."""
        if self.blue_green:
            return [] if count >= self.steps[-1] else list(self.replaced)
        return list(self.replaced[: max(0, self.steps[-1] - count)])


class BundleDigest(Protocol):
    def __call__(self, instance_id: str) -> str | None: ...


def _no_bundle(instance_id: str) -> str | None:
    del instance_id
    return None


class Deployer:
    """Instances and traffic switches of every service (see the module docstring)."""

    # A new instance is probed at once, then after 10 ms, at most 20 ms apart for its first 2 s,
    # then doubling up to its check's interval (agent.health.wait_healthy, FAST_CAP).
    health_backoff: float = 0.01
    # How often a health wait asks the runtime whether the instance still runs (see _liveness).
    liveness_every: float = 0.25

    def __init__(
        self,
        *,
        runtime: Runtime,
        journal: Journal,
        events: EventLog,
        metrics: Metrics,
        connector: ConnectorFactory,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        probe: Probe | None = None,
        bundle_digest: BundleDigest = _no_bundle,
        health_deadline: float = 60.0,
        drain_timeout: float = 10.0,
        stop_grace: float = 5.0,
        dataplane: DataPlane | None = None,
    ) -> None:
        self.runtime = runtime
        self.journal = journal
        self.events = events
        self.metrics = metrics
        self._connector = connector
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._probe: Probe = probe if probe is not None else check_once
        self._bundle_digest = bundle_digest
        self.health_deadline = health_deadline
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        # The default serves from this process (tests with injected connectors); the agent passes
        # the data plane its config selects, which outlives it.
        self.dataplane: DataPlane = dataplane if dataplane is not None else InProcessDataPlane(connector)
        self._netns: dict[str, str] = {}
        self.watches: dict[str, HealthWatch] = {}
        self._out: set[str] = set()  # out of rotation (the health monitor found them unhealthy)
        self._listens: dict[str, tuple[str, int]] = {}  # service -> the address last served
        self._switch_lock = threading.RLock()  # the loop and the health monitor both switch

    # -- instances ---------------------------------------------------------------------------------

    def connect_for(self, rec: InstanceRecord) -> Connector:
        path = self._netns.get(rec.id)
        if path is None:
            path = self.runtime.netns_path(rec.id)
            self._netns[rec.id] = path
        if rec.port is None:
            raise RolloutFailed(f"instance {rec.id}: the image declares no port to reach")
        return self._connector(path, rec.port)

    def start_instance(self, prep: Prepared) -> InstanceRecord:
        return self.start_instances(prep, 1)[0]

    def start_instances(self, prep: Prepared, count: int) -> list[InstanceRecord]:
        """Start ``count`` instances of ``prep`` together: every id enters ``known`` in one commit
        (intent first: a crash leaves known ids), then the runtime starts them in parallel threads.
        If any did not start, the others are stopped again and :class:`RolloutFailed` is raised."""
        ids = [new_instance_id(prep.name) for _ in range(count)]
        self.journal.update(lambda st: st.with_known(*ids))
        specs = [self._spec(prep, iid) for iid in ids]
        if count == 1:
            outcomes = [self._try_start(specs[0])]
        else:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="kiln-start") as pool:
                outcomes = list(pool.map(self._try_start, specs))
        failed = [(iid, out) for iid, out in zip(ids, outcomes, strict=True) if isinstance(out, KilnError)]
        if failed:
            for iid in ids:
                self._forget(iid)
            iid, exc = failed[0]
            raise RolloutFailed(f"instance {iid} did not start: {exc.message}") from exc
        return [
            self._started(prep, iid, out)
            for iid, out in zip(ids, outcomes, strict=True)
            if not isinstance(out, KilnError)
        ]

    def _try_start(self, spec: InstanceSpec) -> InstanceHandle | KilnError:
        """The runtime's handle, or the error that stopped this start. Any exception is caught and
        returned (a foreign one as :class:`RuntimeFailure`): raised inside a thread of
        :meth:`start_instances` it would escape ``pool.map`` and leave the siblings that did start
        running, their ids known and the rollout not undone."""
        try:
            return self.runtime.start(spec)
        except KilnError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - every start's failure is this step's failure
            failure = RuntimeFailure(f"{type(exc).__name__}: {exc}")
            failure.__cause__ = exc
            return failure

    def _spec(self, prep: Prepared, iid: str) -> InstanceSpec:
        return InstanceSpec(
            instance_id=iid,
            service=prep.name,
            image_digest=prep.image_digest,
            image_config=prep.image_config,
            rootfs=prep.rootfs,
            env=dict(prep.service.env),
            limits=ResourceLimits().with_release(prep.service.resources),
            user_namespace=prep.service.user_namespace,
            volume_per_instance=prep.service.volume_per_instance,
        )

    def _started(self, prep: Prepared, iid: str, handle: InstanceHandle) -> InstanceRecord:
        self._netns[iid] = handle.netns_path
        rec = InstanceRecord(
            id=iid,
            service=prep.name,
            release=prep.release,
            image=str(prep.image_digest),
            manifest=str(prep.manifest_digest),
            fingerprint=prep.fingerprint,
            config=prep.config,
            port=prep.port,
            started_at=self._wall(),
            bundle=self._bundle_digest(iid),
            root=str(prep.rootfs),
            health=prep.health.to_dict() if prep.health is not None else None,
        )
        self.events.emit("started", service=prep.name, instance=iid, release=prep.release)
        return rec

    def forget(self, iid: str) -> bool:
        """Stop an instance, then drop it from ``known``. If the runtime could not stop it, the id
        stays known (an ``error`` event; a later reconcile retries) and this returns False."""
        return self._forget(iid)

    def _forget(self, iid: str) -> bool:
        try:
            self.runtime.stop(iid, grace=self.stop_grace)
        except STOP_FAILURES as exc:  # the id stays known: a later reconcile retries
            self.events.emit("error", what=f"stop {iid}", detail=failure_detail(exc))
            return False
        self._netns.pop(iid, None)
        self.watches.pop(iid, None)
        with self._switch_lock:
            self._out.discard(iid)
        self.journal.update(lambda st: st.without_known(iid))
        return True

    def probe(self, spec: HealthSpec, connect: Connector, timeout: float) -> HealthResult:
        """One probe with this deployer's probe (the health monitor's checks go through it)."""
        return self._probe(spec, connect, timeout)

    def wait_healthy(self, prep: Prepared, rec: InstanceRecord) -> HealthResult:
        if prep.health is None:
            return self._wait_running(rec)
        connect = self.connect_for(rec)
        deadline = prep.grace + self.health_deadline
        return wait_healthy(
            prep.health,
            connect,
            grace=prep.grace,
            deadline=deadline,
            clock=self._clock,
            sleep=self._sleep,
            probe=self._probe,
            alive=self._liveness(rec.id),
            backoff=self.health_backoff,
        )

    def _liveness(self, iid: str) -> Callable[[], bool]:
        """Whether the instance still runs, for a health wait: the runtime is asked at most every
        :attr:`liveness_every` seconds, the first time that long after the wait began (its start
        just succeeded). ``runc state`` is a process of its own; asked before every probe of the
        fast window, it competed with the instance's own start for the CPU."""
        asked = self._clock()

        def alive() -> bool:
            nonlocal asked
            now = self._clock()
            if now - asked < self.liveness_every:
                return True
            asked = now
            return self.runtime.state(iid).status is InstanceStatus.RUNNING

        return alive

    def _wait_running(self, rec: InstanceRecord) -> HealthResult:
        state = self.runtime.state(rec.id)
        ok = state.status is InstanceStatus.RUNNING
        return HealthResult(ok=ok, detail=f"no health check; instance is {state.status}", latency=0.0)

    def hold(self, prep: Prepared, recs: Sequence[InstanceRecord]) -> None:
        """Keep probing ``recs`` until each has been healthy for ``grace`` without a failed probe."""
        if not recs:
            return
        if prep.health is None:
            for rec in recs:
                if not self._wait_running(rec).ok:
                    raise RolloutFailed(f"instance {rec.id} stopped running")
            return
        spec = prep.health
        watches = {
            r.id: HealthWatch(spec, passes=1, failures=spec.retries, clock=self._clock, probe=self._probe)
            for r in recs
        }
        connects = {r.id: self.connect_for(r) for r in recs}
        budget = prep.grace + (spec.retries + 2) * spec.interval + spec.timeout
        probes = math.ceil(budget / spec.interval) + 2
        start = self._clock()
        for _ in range(probes):
            for rid, watch in watches.items():
                state = watch.check(connects[rid])
                if state is HealthState.UNHEALTHY or (watch.consecutive_failures >= spec.retries):
                    last = watch.last.detail if watch.last is not None else "no check"
                    raise RolloutFailed(f"instance {rid} failed its health check after the switch: {last}")
            if all(w.held(prep.grace) for w in watches.values()):
                self.watches.update(watches)
                return
            if self._clock() - start > budget:
                break
            self._sleep(spec.interval)
        raise RolloutFailed(f"health did not hold for {prep.grace:g}s within {budget:g}s")

    # -- traffic ---------------------------------------------------------------------------------

    def _point(self, service: Service, records: Sequence[InstanceRecord]) -> None:
        """Tell the data plane which instances serve ``service``'s address (if it has one)."""
        if service.listen is None:
            return
        listen = (service.listen.host, service.listen.port)
        self._listens[service.name] = listen
        self.dataplane.serve(service.name, listen, self._targets(records))

    def _targets(self, records: Sequence[InstanceRecord], out: set[str] | None = None) -> list[Target]:
        """The data plane's backends for ``records``: those in rotation (not in ``out``, by
        default the current out-of-rotation set), or all if none is."""
        out = self._out if out is None else out
        in_rotation = [r for r in records if r.id not in out] or list(records)
        targets = []
        for rec in in_rotation:
            try:
                targets.append(self.target_for(rec))
            except KilnError as exc:
                self.events.emit("error", what=f"backend {rec.id}", detail=exc.message)
        return targets

    def target_for(self, rec: InstanceRecord) -> Target:
        path = self._netns.get(rec.id)
        if path is None:
            path = self.runtime.netns_path(rec.id)
            self._netns[rec.id] = path
        if rec.port is None:
            raise RolloutFailed(f"instance {rec.id}: the image declares no port to reach")
        return Target(id=rec.id, netns=path, port=rec.port)

    def switch(self, service: Service, records: Sequence[InstanceRecord]) -> None:
        """Commit ``records`` as the service's serving set (none of them standby any more, in the
        same commit), then point its address at them."""
        ids = {r.id for r in records}

        def serving(st: JournalState) -> JournalState:
            st = st.with_service(service.name, tuple(records))
            pool = standby_of(st)
            return with_standby(st, [s for s in pool if s.record.id not in ids]) if pool else st

        with self._switch_lock:
            self.journal.update(serving)
            self._point(service, records)
        self.metrics.set_instances(len(self.journal.state.instances))

    def set_rotation(self, instance_id: str, in_rotation: bool) -> bool:
        """Take a serving instance out of its service's rotation, or put it back; True if the
        service's backends changed. Called by the health monitor's threads."""
        with self._switch_lock:
            was_out = instance_id in self._out
            out = self._out - {instance_id} if in_rotation else self._out | {instance_id}
            rec = next((r for r in self.journal.state.instances if r.id == instance_id), None)
            listen = self._listens.get(rec.service) if rec is not None else None
            if rec is not None and listen is not None and was_out != (not in_rotation):
                # the data plane first: whoever reads in_rotation() afterwards may rely on it
                self.dataplane.serve(
                    rec.service, listen, self._targets(self.journal.state.serving(rec.service), out)
                )
                self._out = out
                return True
            self._out = out
            return False

    def in_rotation(self, instance_id: str) -> bool:
        """Whether the instance gets traffic (an unhealthy one does when all of its service's are)."""
        if instance_id not in self._out:
            return True
        rec = next((r for r in self.journal.state.instances if r.id == instance_id), None)
        if rec is None:
            return False
        return all(r.id in self._out for r in self.journal.state.serving(rec.service))

    def adopt(self, service: Service, records: Sequence[InstanceRecord]) -> None:
        """After a restart: point the (running or new) data plane at the journal's serving set."""
        with self._switch_lock:
            self._point(service, records)
        self.metrics.set_instances(len(self.journal.state.instances))

    def retire(self, rec: InstanceRecord) -> None:
        """Drain an instance that no longer serves, then stop it and forget it."""
        self.dataplane.drain(rec.service, rec.id, self.drain_timeout)
        if self._forget(rec.id):  # else an error event said why, and the id stays known
            self.events.emit("stopped", service=rec.service, instance=rec.id, release=rec.release)

    def stop_service(self, name: str) -> None:
        """Stop every instance of a service the release no longer has, and its switch."""
        with self._switch_lock:
            recs = self.journal.state.serving(name)
            self.journal.update(lambda st: st.with_service(name, ()))
            view = self.dataplane.services().get(name)
            if view is not None:
                self.dataplane.serve(name, view.listen, [])
            self._listens.pop(name, None)
        for rec in recs:
            self.retire(rec)
        self.dataplane.remove(name)

    def close(self) -> None:
        """The agent goes away: the data plane keeps serving (an in-process one cannot)."""
        self.dataplane.detach()

    # -- rollouts --------------------------------------------------------------------------------

    def converge(self, prep: Prepared, strategy: Strategy | None = None) -> bool:
        """Bring ``prep.service`` to ``prep``'s spec (module docstring). True if anything changed."""
        service = prep.service
        strategy = strategy or service.strategy
        serving = list(self.journal.state.serving(service.name))
        kept, replaced = split_serving(serving, prep.config, service.replicas)
        if len(kept) < service.replicas:
            kept += self._from_standby(prep, service.replicas - len(kept))
        relabeled = [replace(r, release=prep.release) for r in kept]
        steps = rollout_steps(strategy, service.replicas, service.replicas - len(kept))
        if not steps:
            if relabeled != serving:
                self.switch(service, relabeled)
                self._set_aside(service, replaced, exclusive=prep.exclusive)
            return bool(replaced)
        if prep.exclusive and replaced:
            # One volume, one instance: the old instances stop before the new one starts.
            self.events.emit("stop_first", service=service.name, instances=[r.id for r in replaced])
            self.switch(service, relabeled)
            for rec in replaced:
                self.retire(rec)
            replaced = []
        plan = RolloutPlan(
            kept=tuple(kept),
            replaced=tuple(replaced),
            steps=steps,
            blue_green=strategy.kind is StrategyKind.BLUE_GREEN,
        )
        self._run_steps(prep, plan)
        return True

    def _run_steps(self, prep: Prepared, plan: RolloutPlan) -> None:
        """Each step of ``plan``: start its new instances, wait for their health, switch to them
        (with the kept and the old instances still needed), hold their health for ``grace``, set
        aside the old instances the step retired. A failed step is undone (:meth:`_undo`)."""
        service = prep.service
        new: list[InstanceRecord] = []
        retired: set[str] = set()
        try:
            for count in plan.steps:
                fresh = self.start_instances(prep, count - len(new)) if count > len(new) else []
                new.extend(fresh)
                self._require_all_healthy(prep, fresh)
                still = plan.old_serving(count)
                self.switch(service, [*(replace(r, release=prep.release) for r in plan.kept), *new, *still])
                self.hold(prep, fresh)
                gone = [r for r in plan.replaced if r.id not in retired and r not in still]
                self._set_aside(service, gone, exclusive=prep.exclusive)
                retired.update(r.id for r in gone)
        except RolloutFailed:
            self._undo(service, [*plan.kept, *(r for r in plan.replaced if r.id not in retired)], new)
            raise

    def converge_all(
        self, preps: Sequence[Prepared], strategy: Strategy | None = None
    ) -> dict[str, RolloutFailed]:
        """Converge several services at once, each in a thread of its own and independent of the
        others: a service whose rollout fails is back on its old instances (module docstring),
        and the others' rollouts run on to their end. Returns the failures by service name, in
        the order of ``preps``; any other exception is raised once every rollout has ended."""
        if len(preps) <= 1:
            outcomes: list[BaseException | None] = []
            for prep in preps:
                try:
                    self.converge(prep, strategy)
                    outcomes.append(None)
                except RolloutFailed as exc:
                    outcomes.append(exc)
        else:
            workers = min(len(preps), MAX_PARALLEL_ROLLOUTS)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-rollout") as pool:
                futures = [pool.submit(self.converge, prep, strategy) for prep in preps]
            outcomes = [f.exception() for f in futures]
        unexpected = [exc for exc in outcomes if exc is not None and not isinstance(exc, RolloutFailed)]
        if unexpected:
            raise unexpected[0]
        return {
            prep.name: exc
            for prep, exc in zip(preps, outcomes, strict=True)
            if isinstance(exc, RolloutFailed)
        }

    def _require_healthy(self, prep: Prepared, rec: InstanceRecord) -> None:
        result = self.wait_healthy(prep, rec)
        if not result.ok:
            raise RolloutFailed(f"instance {rec.id} of release v{prep.release}: {result.detail}")

    def _require_all_healthy(self, prep: Prepared, recs: Sequence[InstanceRecord]) -> None:
        """Wait for the health of a step's new instances together (one thread each)."""
        if len(recs) <= 1:
            for rec in recs:
                self._require_healthy(prep, rec)
            return
        with ThreadPoolExecutor(max_workers=len(recs), thread_name_prefix="kiln-health") as pool:
            results = list(pool.map(lambda r: self._health_or_failure(prep, r), recs))
        for rec, result in zip(recs, results, strict=True):
            if not result.ok:
                raise RolloutFailed(f"instance {rec.id} of release v{prep.release}: {result.detail}")

    def _health_or_failure(self, prep: Prepared, rec: InstanceRecord) -> HealthResult:
        try:
            return self.wait_healthy(prep, rec)
        except RolloutFailed as exc:
            return HealthResult(ok=False, detail=exc.reason, latency=0.0)
        except KilnError as exc:
            return HealthResult(ok=False, detail=exc.message, latency=0.0)

    # -- standby (keep_previous) -------------------------------------------------------------------

    def _set_aside(
        self, service: Service, recs: Sequence[InstanceRecord], *, exclusive: bool = False
    ) -> None:
        """The instances a rollout of ``service`` replaced: retired, or with ``keep_previous``
        kept running out of rotation (they already left the serving set) until it expires. They
        replace whatever older instances of the service were on standby. (Instances of a service
        whose volumes only one instance may use are always retired.)"""
        if not recs:
            return
        if not service.keep_previous or exclusive:
            for rec in recs:
                self.retire(rec)
            return
        specs = {r.config for r in recs}  # a rolling rollout sets the same spec aside step by step
        until = self._wall() + service.keep_previous
        older: list[Standby] = []

        def aside(st: JournalState) -> JournalState:
            pool = standby_of(st)
            older[:] = [s for s in pool if s.record.service == service.name and s.record.config not in specs]
            kept = [s for s in pool if s not in older]
            return with_standby(st, [*kept, *(Standby(record=rec, until=until) for rec in recs)])

        self.journal.update(aside)
        for rec in recs:
            self.watches.pop(rec.id, None)
            self.events.emit(
                "standby", service=service.name, instance=rec.id, release=rec.release, until=until
            )
        for old in older:
            self.retire(old.record)

    def _from_standby(self, prep: Prepared, need: int) -> list[InstanceRecord]:
        """Up to ``need`` standby instances of exactly ``prep``'s spec that still run (one probe
        passes, or the runtime says so when there is no check); the caller's switch takes them
        off the standby list in the commit that makes them serve."""
        pool = standby_of(self.journal.state)
        chosen: list[InstanceRecord] = []
        for item in pool:
            rec = item.record
            if len(chosen) >= need or rec.service != prep.name or rec.config != prep.config:
                continue
            try:
                if prep.health is not None:
                    if not self._probe(prep.health, self.connect_for(rec), prep.health.timeout).ok:
                        continue
                elif self.runtime.state(rec.id).status is not InstanceStatus.RUNNING:
                    continue
            except (KilnError, RolloutFailed, OSError):
                continue
            chosen.append(rec)
        for rec in chosen:
            self.events.emit("adopted", service=prep.name, instance=rec.id, release=prep.release)
        return [replace(r, release=prep.release) for r in chosen]

    def expire_standby(self, *, services: Sequence[str] | None = None) -> int:
        """Stop the standby instances whose window passed (or whose service is not in
        ``services``, when given); returns how many."""
        now = self._wall()
        names = set(services) if services is not None else None

        def due(item: Standby) -> bool:
            return item.until <= now or (names is not None and item.record.service not in names)

        if not any(due(s) for s in standby_of(self.journal.state)):
            return 0  # nothing to commit
        done: list[Standby] = []

        def expired(st: JournalState) -> JournalState:
            pool = standby_of(st)
            done[:] = [s for s in pool if due(s)]
            return with_standby(st, [s for s in pool if not due(s)])

        self.journal.update(expired)
        for item in done:
            self.retire(item.record)
        return len(done)

    def _undo(self, service: Service, old: list[InstanceRecord], new: list[InstanceRecord]) -> None:
        """After a failed step: serve the old instances still running (or, with none left, the new
        ones until the caller converges back) and stop new instances that serve nothing."""
        keep = old if old else new
        self.switch(service, keep)
        for rec in new:
            if rec not in keep:
                self.retire(rec)

    def replace(self, prep: Prepared, old: InstanceRecord, cause: str) -> bool:
        """Swap ``old`` for a fresh instance of ``prep`` (start, health, switch, drain, stop)."""
        service = prep.service
        self.events.emit("replacing", service=service.name, instance=old.id, cause=cause)
        if prep.exclusive:  # one volume, one instance: stop first
            self.switch(service, [r for r in self.journal.state.serving(service.name) if r.id != old.id])
            self.retire(old)
        try:
            rec = self.start_instance(prep)
        except RolloutFailed as exc:
            self.events.emit("replace_failed", service=service.name, instance=old.id, detail=exc.reason)
            return False
        try:
            result = self.wait_healthy(prep, rec)
        except RolloutFailed as exc:
            result = HealthResult(ok=False, detail=exc.reason, latency=0.0)
        if not result.ok:
            self.events.emit("replace_failed", service=service.name, instance=old.id, detail=result.detail)
            self._forget(rec.id)
            return False
        serving = [rec if r.id == old.id else r for r in self.journal.state.serving(service.name)]
        if rec not in serving:
            serving.append(rec)
        self.switch(service, serving)
        if not prep.exclusive:
            self.retire(old)
        self.metrics.count_replacement(cause)
        self.events.emit("replaced", service=service.name, instance=old.id, by=rec.id, cause=cause)
        return True
