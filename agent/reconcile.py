"""The agent: fetch, verify, pull, unpack, roll out, enforce; restartable from its journal at any point.

One :meth:`Agent.reconcile_once`:

1. **fetch** the channel's release envelope from the configured source (size-capped);
   unreachable: an ``unavailable`` event, and everything verified keeps running;
2. **verify** it (:func:`signing.release.check_release`: threshold signatures over the exact bytes,
   expiry, channel, version not lower than the highest accepted); a version that already failed
   ``max_attempts`` times is skipped;
3. for every service: **verify the image signature** and required attestations under the trust
   root's image policy (read from the image's location), **pull it by digest** into the content
   store (every byte hashed as it streams) and **unpack** it safely into a read-only root. Nothing
   starts until every service of the release passed (no mix-and-match);
4. **roll out** service by service (:class:`agent.rollout.Deployer`); the release becomes
   ``good`` when every service's health held for its grace. A failure returns every service to
   the previous good release, from the local store (no network), and counts an attempt;
5. **enforce**: every serving instance must be running, its root unchanged (fingerprint), its
   runtime bundle unchanged, younger than ``max_lifetime`` and not unhealthy; otherwise it is
   replaced (a fresh instance first, then the switch).

Every refusal is an event ``refused`` with its reason (``signature``, ``threshold``, ``expired``,
``rollback``, ``digest``, ``identity``, ``policy``, ``unpack``, ``parse``), counted, and kept as
the journal's ``last_refusal``; the previous state keeps serving.

:meth:`Agent.start` recovers from a crash: instances the runtime has (or the journal knows) that
are not serving are stopped, unpacks the crash interrupted are removed, and an interrupted rollout
is rolled back to the release it started from. Every reconcile stops such strays again first (a
stop that failed, or a ``runc run`` orphaned by the crash that finished after the recovery). The
journal (:mod:`agent.journal`) records intent before every action; an id leaves ``known`` only
once the runtime confirmed it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.compose import (
    compose_image,
    composed_fingerprint,
    composed_layers,
    park,
    remove_composed,
    unmount_strays,
)
from agent.errors import AgentError
from agent.events import EventLog
from agent.journal import InstanceRecord, Journal, JournalState, Refusal, ReleaseRef
from agent.metrics import Metrics
from agent.netns import connect_in_netns
from agent.poll import ReleasePoller
from agent.rollout import (
    ConnectorFactory,
    Deployer,
    Prepared,
    RolloutFailed,
    config_digest,
    health_spec_for,
    service_port,
)
from agent.runtime import InstanceStatus, Runtime
from agent.snapshots import SnapshotStore
from agent.sources import open_image_location
from agent.standby import standby_of, with_standby
from agent.store import ContentStore, PulledImage, StoreLimits
from agent.unpack import UnpackLimits, remove_interrupted
from manifests.agentconfig import AgentConfig, RuntimeKind
from manifests.atomic import atomic_write
from manifests.digest import Digest
from manifests.errors import DocumentError, KilnError, VerificationError
from manifests.release import Release, Strategy
from manifests.trustroot import MAX_ROOT_BYTES, TrustRoot
from signing.cosign import attestation_tag, signature_tag
from signing.image import stored_layers
from signing.release import check_release, claimed_version
from signing.root import envelope_cap, image_policy, load_root, verify_root_update

__all__ = ["ROOT_FILE", "AgentBusy", "ReconcileResult", "Agent", "make_runtime"]

ROOT_FILE = "root"
LOCK_FILE = "agent.lock"
REFUSAL_REASONS = (
    "signature",
    "threshold",
    "expired",
    "rollback",
    "digest",
    "identity",
    "policy",
    "unpack",
    "parse",
)


class AgentBusy(AgentError):
    """Another agent process holds the state directory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileResult:
    """What one reconcile did: ``outcome`` is one of ``current``, ``rolled-out``, ``failed``,
    ``refused``, ``skipped``, ``unavailable``; ``replaced`` counts instances enforcement replaced."""

    outcome: str
    version: int | None = None
    reason: str | None = None
    detail: str = ""
    replaced: int = 0


def make_runtime(config: AgentConfig, store: ContentStore) -> Runtime:
    if config.runtime is RuntimeKind.DOCKER:
        from agent.docker_runtime import DockerRuntime

        return DockerRuntime(store, config.state, base_url=config.docker_host)
    from agent.runc import RuncRuntime

    return RuncRuntime(config.state)


def _netns_connector(path: str, port: int) -> Callable[[float], Any]:
    def connect(timeout: float) -> Any:
        return connect_in_netns(path, "127.0.0.1", port, timeout)

    return connect


class Agent:
    """One host agent over one state directory (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime: Runtime | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        connector: ConnectorFactory = _netns_connector,
        event_sink: Callable[[str], None] | None = None,
        health_deadline: float = 60.0,
        drain_timeout: float = 10.0,
        stop_grace: float = 5.0,
        lock: bool = True,
    ) -> None:
        self.config = config
        self.state_dir = Path(config.state)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd: int | None = None
        if lock:
            self._take_lock()
        self.wall = wall
        self.journal = Journal(self.state_dir)
        self.events = EventLog(self.state_dir, sink=event_sink, clock=lambda: wall().timestamp())
        self.metrics = Metrics()
        self.store = ContentStore(self.state_dir, limits=StoreLimits.from_agent(config.limits))
        self.roots_dir = self.state_dir / "roots"
        self.snapshots = SnapshotStore(self.state_dir)
        self.poller = ReleasePoller()
        self.releases_dir = self.state_dir / "releases"
        self.releases_dir.mkdir(exist_ok=True, mode=0o700)
        self.runtime = runtime if runtime is not None else make_runtime(config, self.store)
        bundle = getattr(self.runtime, "bundle_digest", None)
        self.deployer = Deployer(
            runtime=self.runtime,
            journal=self.journal,
            events=self.events,
            metrics=self.metrics,
            connector=connector,
            clock=clock,
            sleep=sleep,
            wall=lambda: wall().timestamp(),
            bundle_digest=bundle if callable(bundle) else (lambda _i: None),
            health_deadline=health_deadline,
            drain_timeout=drain_timeout,
            stop_grace=stop_grace,
        )
        self.root = self._load_root()
        self._prepared: dict[tuple[str, str], Prepared] = {}
        self.busy = threading.Lock()  # one operation at a time (loop, status-endpoint rollback)
        self.wake = threading.Event()  # set: the loop reconciles now (SIGHUP, POST /reconcile)

    # -- lifecycle -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentBusy(
                f"{self.state_dir}: another kiln agent is running on this state directory",
                hint="use `kiln agent status`, or stop the running agent first",
            ) from None
        self._lock_fd = fd

    def close(self, *, stop_instances: bool = False) -> None:
        """Stop the traffic switches (and, if asked, every instance); release the state lock."""
        if stop_instances:
            for name in sorted({r.service for r in self.journal.state.instances}):
                self.deployer.stop_service(name)
            for iid in self.journal.state.known:
                with contextlib.suppress(KilnError):
                    self.runtime.stop(iid, grace=self.deployer.stop_grace)
            self.journal.commit(with_standby(replace(self.journal.state, known=()), ()))
            with contextlib.suppress(KilnError, OSError):
                unmount_strays(self.roots_dir)  # nothing runs from them any more
        self.deployer.close()
        close = getattr(self.runtime, "close", None)
        if callable(close) and stop_instances:
            close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trust root ------------------------------------------------------------------------------

    def _load_root(self) -> TrustRoot:
        path = self.state_dir / ROOT_FILE
        if path.exists():
            data = path.read_bytes()[: envelope_cap(MAX_ROOT_BYTES) + 1]
            root = load_root(data, source=str(path))
        else:
            try:
                with self.config.trust_root.open("rb") as fh:
                    data = fh.read(envelope_cap(MAX_ROOT_BYTES) + 1)
            except OSError as exc:
                raise AgentError(
                    f"trust root {self.config.trust_root}: {exc.strerror or exc}",
                    hint="install the first trust root on the host (out of band)",
                ) from None
            root = load_root(data, source=str(self.config.trust_root))
            atomic_write(path, data, mode=0o600)
        if self.journal.state.root_version != root.version:
            self.journal.commit(replace(self.journal.state, root_version=root.version))
        return root

    def trust_update(self, envelope: bytes) -> TrustRoot:
        """Install root N+1 (signed by a threshold of root N's root keys and its own)."""
        try:
            new = verify_root_update(self.root, envelope, now=self.wall())
        except VerificationError as exc:
            self._refuse(exc, version=None, what="trust root")
            raise
        atomic_write(self.state_dir / ROOT_FILE, envelope, mode=0o600)
        self.root = new
        self.journal.commit(replace(self.journal.state, root_version=new.version))
        self.events.emit("root_updated", root_version=new.version)
        return new

    # -- releases kept locally -------------------------------------------------------------------

    def _save_release(self, payload: bytes, digest: Digest) -> None:
        path = self.releases_dir / f"{digest.hex}.json"
        if not path.exists():
            atomic_write(path, payload, mode=0o600)

    def load_release(self, ref: ReleaseRef) -> Release:
        """A release accepted earlier, from ``STATE/releases`` (its bytes re-hashed)."""
        digest = Digest.parse(ref.payload_digest)
        path = self.releases_dir / f"{digest.hex}.json"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AgentError(
                f"release v{ref.version} is not in {self.releases_dir}: {exc.strerror}"
            ) from None
        digest.check(data, what=f"stored release v{ref.version}")
        return Release.from_payload(data)

    # -- refusals --------------------------------------------------------------------------------

    def _refuse(self, exc: VerificationError, *, version: int | None, what: str = "release") -> str:
        reason = exc.reason if exc.reason in REFUSAL_REASONS else _map_reason(exc.reason)
        self.metrics.count_refusal(reason)
        self.events.emit("refused", reason=reason, detail=exc.message, version=version, what=what)
        refusal = Refusal(reason=reason, detail=exc.message, version=version, at=self.wall().timestamp())
        self.journal.commit(replace(self.journal.state, last_refusal=refusal))
        return reason

    # -- start and recovery ----------------------------------------------------------------------

    def start(self) -> None:
        """Re-attach after a (re)start: stop what does not serve, finish or undo a rollout."""
        self._stop_strays("recover")
        st = self.journal.state
        with contextlib.suppress(OSError, KilnError):
            unmount_strays(self.roots_dir, keep=[Digest.parse(r.manifest) for r in st.instances])
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
        if st.rollout_to is not None:
            self.events.emit(
                "recover",
                action="rollback",
                version=st.rollout_to.version,
                to=st.rollout_from.version if st.rollout_from is not None else None,
            )
            self.journal.commit(self.journal.state.with_failure(st.rollout_to.version, "interrupted"))
            self._return_to(st.rollout_from, failed=st.rollout_to)
        self.metrics.set_instances(len(self.journal.state.instances))

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

    def _release_or_none(self, ref: ReleaseRef | None) -> Release | None:
        if ref is None:
            return None
        try:
            return self.load_release(ref)
        except KilnError as exc:
            self.events.emit("error", what=f"load release v{ref.version}", detail=exc.message)
            return None

    # -- one reconcile ---------------------------------------------------------------------------

    def reconcile_once(self) -> ReconcileResult:
        with self.busy:
            self.metrics.count_reconcile()
            self._stop_strays("stray")
            result = self._consider()
            replaced = self._enforce()
            self.deployer.expire_standby()
            return replace(result, replaced=replaced)

    def _fetch(self) -> bytes:
        from publisher.release_artifact import open_release_endpoint

        with open_release_endpoint(
            self.config.source, insecure=self.config.insecure, timeouts=_timeouts(self.config)
        ) as endpoint:
            return self.poller.fetch(endpoint, self.config.channel)  # the body only when the tag moved

    def _consider(self) -> ReconcileResult:
        try:
            envelope = self._fetch()
        except VerificationError as exc:
            reason = self._refuse(exc, version=None)
            return ReconcileResult(outcome="refused", reason=reason, detail=exc.message)
        except (KilnError, OSError) as exc:
            detail = exc.message if isinstance(exc, KilnError) else str(exc)
            self.events.emit("unavailable", what="release source", detail=detail)
            return ReconcileResult(outcome="unavailable", detail=detail)
        st = self.journal.state
        try:
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
            return ReconcileResult(outcome="refused", reason=reason, detail=exc.message)
        release = verified.release
        ref = ReleaseRef(version=release.version, payload_digest=str(verified.payload_digest))
        if st.good == ref:
            return ReconcileResult(outcome="current", version=release.version)
        failure = st.failure(release.version)
        if failure is not None and failure.attempts >= self.config.max_attempts:
            return ReconcileResult(outcome="skipped", version=release.version, detail=failure.reason)
        try:
            prepared = self._prepare(release, fetch=True)
        except VerificationError as exc:
            reason = self._refuse(exc, version=release.version)
            return ReconcileResult(
                outcome="refused", version=release.version, reason=reason, detail=exc.message
            )
        except DocumentError as exc:
            err = VerificationError(exc.message, reason="parse")
            self._refuse(err, version=release.version)
            return ReconcileResult(
                outcome="refused", version=release.version, reason="parse", detail=exc.message
            )
        except (KilnError, OSError) as exc:
            detail = exc.message if isinstance(exc, KilnError) else str(exc)
            self.events.emit("unavailable", what=f"images of v{release.version}", detail=detail)
            return ReconcileResult(outcome="unavailable", version=release.version, detail=detail)
        self._save_release(verified.payload, verified.payload_digest)
        self.journal.commit(
            replace(self.journal.state, highest=ref, rollout_to=ref, rollout_from=self.journal.state.good)
        )
        self.events.emit("accepted", version=release.version, payload_digest=ref.payload_digest)
        return self._roll_out(release, ref, prepared)

    def _prepare(self, release: Release, *, fetch: bool) -> dict[str, Prepared]:
        """Verify, pull and unpack every service's image (``fetch=False``: from the store only)."""
        policy = image_policy(self.root) if fetch else None
        out: dict[str, Prepared] = {}
        for service in release.services:
            pin = service.image
            if fetch:
                assert policy is not None  # noqa: S101 - set above when fetching
                location = self.config.location_for(pin.repository)
                with open_image_location(
                    location,
                    staging=self.state_dir / "tmp",
                    insecure=self.config.insecure,
                    timeouts=_timeouts(self.config),
                ) as loc:
                    policy.evaluate(
                        repository=pin.repository,
                        tag=None,
                        image_digest=pin.digest,
                        signatures=stored_layers(loc.artifacts, signature_tag(pin.digest)),
                        attestations=stored_layers(loc.artifacts, attestation_tag(pin.digest)),
                        now=self.wall(),
                    )
                    started = time.monotonic()
                    image = self.store.pull_image(loc.blobs, pin.digest)
                    self._rate(image, time.monotonic() - started)
            else:
                image = self.store.image(pin.digest)
            out[service.name] = self._unpacked(service, release.version, pin.digest, image)
        return out

    def _rate(self, image: PulledImage, seconds: float) -> None:
        sizes = {d.digest: d.size for d in (image.manifest.config, *image.layers)}
        fetched = sum(sizes.get(d, 0) for d in image.fetched)
        self.metrics.set_verify_rate(fetched, seconds)

    def _unpacked(self, service: Any, version: int, pin: Digest, image: PulledImage) -> Prepared:
        root = compose_image(
            self.store,
            image,
            self.roots_dir,
            self.snapshots,
            limits=UnpackLimits.from_agent(self.config.limits),
        )
        port = service_port(service, image.config)
        health, grace = health_spec_for(service, image.config)
        return Prepared(
            service=service,
            release=version,
            image_digest=pin,
            manifest_digest=image.manifest_digest,
            image_config=image.config,
            rootfs=root.path,
            fingerprint=root.fingerprint,
            port=port,
            health=health,
            grace=grace,
            config=config_digest(service, pin, image.manifest_digest, port),
        )

    def _roll_out(self, release: Release, ref: ReleaseRef, prepared: dict[str, Prepared]) -> ReconcileResult:
        previous = self.journal.state.good
        try:
            for service in release.services:
                self.deployer.converge(prepared[service.name])
        except RolloutFailed as exc:
            self.metrics.count_rollout("failed")
            self.events.emit("rollout_failed", version=release.version, detail=exc.reason)
            self.journal.commit(self.journal.state.with_failure(release.version, exc.reason))
            self._return_to(previous, failed=ref)
            return ReconcileResult(outcome="failed", version=release.version, detail=exc.reason)
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
        self._gc()
        return ReconcileResult(outcome="rolled-out", version=release.version)

    def _return_to(self, target: ReleaseRef | None, *, failed: ReleaseRef | None) -> None:
        """Converge every service back to ``target`` (from the local store), or stop everything."""
        self.metrics.count_rollback()
        if target is None:
            for name in sorted({r.service for r in self.journal.state.instances}):
                self.deployer.stop_service(name)
        else:
            release = self.load_release(target)
            prepared = self._prepare(release, fetch=False)
            for service in release.services:
                try:
                    self.deployer.converge(prepared[service.name], Strategy())
                except RolloutFailed as exc:
                    self.events.emit("rollback_failed", service=service.name, detail=exc.reason)
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
            try:
                for service in release.services:
                    self.deployer.converge(prepared[service.name], Strategy())
            except RolloutFailed as exc:
                self.events.emit("rollback_failed", detail=exc.reason)
                self._return_to(left, failed=target)
                raise AgentError(f"rollback to v{target.version} failed: {exc.reason}") from None
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

    # -- enforcement -----------------------------------------------------------------------------

    def _enforce(self) -> int:
        st = self.journal.state
        if st.good is None or st.rolling_out:
            return 0
        try:
            release = self.load_release(st.good)
        except KilnError as exc:
            self.events.emit("error", what="enforce", detail=exc.message)
            return 0
        replaced = 0
        fingerprints: dict[str, str] = {}
        now = self.wall().timestamp()
        for service in release.services:
            recs = self.journal.state.serving(service.name)
            causes: list[tuple[InstanceRecord, str]] = []
            for rec in recs:
                cause = self._drift(rec, service, fingerprints, now)
                if cause is not None:
                    causes.append((rec, cause))
            if not causes and len(recs) >= service.replicas:
                continue
            try:
                prep = self._prepared_for(
                    release, service.name, fresh_root=any(c == "root" for _, c in causes)
                )
            except KilnError as exc:
                self.events.emit("error", what=f"enforce {service.name}", detail=exc.message)
                continue
            for rec, cause in causes:
                self.events.emit("drift", service=service.name, instance=rec.id, cause=cause)
                if self.deployer.replace(prep, rec, cause):
                    replaced += 1
            if len(self.journal.state.serving(service.name)) < service.replicas:
                try:
                    self.deployer.converge(prep, Strategy())
                except RolloutFailed as exc:
                    self.events.emit("error", what=f"restore {service.name}", detail=exc.reason)
        return replaced

    def _drift(
        self, rec: InstanceRecord, service: Any, fingerprints: dict[str, str], now: float
    ) -> str | None:
        try:
            state = self.runtime.state(rec.id)
        except KilnError:
            return "died"
        if state.status is not InstanceStatus.RUNNING:
            return "died"
        if rec.manifest not in fingerprints:
            try:  # ``fingerprints`` also caches each snapshot's walk (keys without "sha256:")
                fingerprints[rec.manifest] = composed_fingerprint(
                    self.roots_dir, Digest.parse(rec.manifest), self.snapshots, fingerprints
                )
            except OSError:
                fingerprints[rec.manifest] = "missing"
        if fingerprints[rec.manifest] != rec.fingerprint:
            return "root"
        bundle = getattr(self.runtime, "bundle_digest", None)
        if rec.bundle is not None and callable(bundle) and bundle(rec.id) != rec.bundle:
            return "config"
        if service.max_lifetime is not None and now - rec.started_at >= service.max_lifetime:
            return "lifetime"
        watch = self.deployer.watches.get(rec.id)
        if watch is not None:
            try:
                if watch.check(self.deployer.connect_for(rec)).value == "unhealthy":
                    return "unhealthy"
            except (KilnError, RolloutFailed):
                return "unhealthy"
        return None

    def _prepared_for(self, release: Release, name: str, *, fresh_root: bool) -> Prepared:
        service = release.service(name)
        assert service is not None  # noqa: S101 - name comes from the release
        image = self.store.image(service.image.digest)
        if fresh_root:
            layers = composed_layers(self.roots_dir, image.manifest_digest)
            remove_composed(self.roots_dir, image.manifest_digest)
            for desc in (image.manifest.config, *image.layers):
                self.store.verify(desc.digest, size=desc.size)
            self.snapshots.discard_altered(layers)
        return self._unpacked(service, release.version, service.image.digest, image)

    def _gc(self) -> None:
        """Keep the blobs and roots of the good and previous releases only."""
        st = self.journal.state
        keep: list[Digest] = []
        manifests: set[str] = {r.manifest for r in st.instances}
        for ref in (st.good, st.previous):
            release = self._release_or_none(ref)
            if release is None:
                continue
            for pin in release.images:
                keep.append(pin.digest)
                with contextlib.suppress(KilnError):
                    manifests.add(str(self.store.image(pin.digest).manifest_digest))
        running = {r.manifest for r in st.instances} | {s.record.manifest for s in standby_of(st)}
        with contextlib.suppress(OSError, KilnError):
            self.store.gc(keep)
            remove_interrupted(self.roots_dir)
            for entry in os.scandir(self.roots_dir):
                name = entry.name.removesuffix(".json")
                if len(name) != 64 or entry.name.endswith(".json"):
                    continue
                with contextlib.suppress(KilnError, OSError):
                    if f"sha256:{name}" not in manifests:
                        remove_composed(self.roots_dir, Digest(name))
                    elif f"sha256:{name}" not in running:
                        park(self.roots_dir, Digest(name))  # kept for a rollback, not mounted
            used: set[str] = set()
            for manifest in manifests:
                used.update(composed_layers(self.roots_dir, Digest.parse(manifest)))
            self.snapshots.gc(used)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st: JournalState = self.journal.state
        instances = []
        for rec in st.instances:
            watch = self.deployer.watches.get(rec.id)
            instances.append(
                {
                    "id": rec.id,
                    "service": rec.service,
                    "release": rec.release,
                    "image": rec.image,
                    "started_at": rec.started_at,
                    "health": str(watch.state) if watch is not None else "unknown",
                }
            )
        return status_document(st, instances=instances, metrics=self.metrics.snapshot(), config=self.config)

    # -- the loop --------------------------------------------------------------------------------

    def run(
        self, stop: threading.Event, *, on_result: Callable[[ReconcileResult], None] | None = None
    ) -> None:
        """Reconcile every ``poll_interval`` until ``stop`` is set (bounded waits); at once when
        :attr:`wake` is set."""
        while not stop.is_set():
            try:
                result = self.reconcile_once()
            except KilnError as exc:
                self.events.emit("error", what="reconcile", detail=exc.message)
            else:
                if on_result is not None:
                    on_result(result)
            deadline = time.monotonic() + self.config.poll_interval
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if self.wake.wait(min(left, 0.5)):
                    self.wake.clear()
                    break


def status_document(
    st: JournalState, *, instances: list[dict[str, Any]], metrics: dict[str, Any] | None, config: AgentConfig
) -> dict[str, Any]:
    """The ``/status`` and ``kiln agent status --json`` document."""

    def ref(r: ReleaseRef | None) -> dict[str, Any] | None:
        return r.to_dict() if r is not None else None

    return {
        "channel": config.channel,
        "group": config.group,
        "runtime": config.runtime.value,
        "seq": st.seq,
        "root_version": st.root_version,
        "release": ref(st.good),
        "previous": ref(st.previous),
        "highest_accepted": ref(st.highest),
        "rollout": {"to": ref(st.rollout_to), "from": ref(st.rollout_from)} if st.rolling_out else None,
        "instances": instances,
        "failures": [f.to_dict() for f in st.failures],
        "last_refusal": st.last_refusal.to_dict() if st.last_refusal is not None else None,
        "metrics": metrics,
    }


def _services_of(*releases: Release | None) -> list[Any]:
    seen: dict[str, Any] = {}
    for rel in releases:
        if rel is None:
            continue
        for s in rel.services:
            seen.setdefault(s.name, s)
    return list(seen.values())


def _map_reason(reason: str) -> str:
    """Reasons from lower layers folded into the agent's vocabulary."""
    folded = {
        "size": "digest",
        "manifest": "parse",
        "payload": "signature",
        "key": "signature",
        "attestation": "policy",  # a required attestation is missing or unreadable
    }
    return folded.get(reason, reason)


def _timeouts(config: AgentConfig) -> Any:
    from publisher.session import Timeouts  # loads httpx: only when a registry is used

    return Timeouts.from_limits(config.limits)


def _claimed_version(envelope: bytes) -> int | None:
    """The version a refused envelope claims (for the log only; never trusted)."""
    return claimed_version(envelope)
