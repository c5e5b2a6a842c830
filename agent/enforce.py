"""Enforcement: every serving instance must still be what the good release started.

For each serving instance of the good release, :meth:`Enforcer.enforce` checks, in this order:
running (else ``died``), its root unchanged (``root``: the fingerprint of the root it runs from),
its runtime bundle unchanged (``config``), younger than ``max_lifetime`` (``lifetime``), and not
found unhealthy by the health monitor (``unhealthy``). A drifted instance is replaced by a fresh
one of the same spec (start, health, switch, drain, stop), and a service with fewer instances than
its replicas is brought back to them.

Drift repair never touches what still serves. A root composed of layer snapshots
(:mod:`agent.compose`) is checked snapshot by snapshot (each walked once per pass); when one was
tampered with, the snapshots that changed are renamed aside (instances running from them keep
their files) and the root is unmounted (detached: running instances keep their own view), then
composed again with those layers unpacked again from blobs re-verified in the store. A full-copy
root (the fallback without overlayfs) is set aside whole (renamed to
``STATE/roots/quarantine/<id>/<hex>``, the instances that run from it re-recorded with that path)
and unpacked again at its usual place. The replacements start from the fresh root, and what was
set aside is removed once no serving instance runs from it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.compose import composed_fingerprint, composed_layers, remove_composed
from agent.events import EventLog
from agent.journal import InstanceRecord, Journal
from agent.prepare import Preparer
from agent.releases import ReleaseStore
from agent.rollout import Deployer, Prepared, RolloutFailed
from agent.runtime import InstanceStatus, Runtime
from agent.snapshots import SnapshotStore
from agent.unpack import remove_root, remove_tree, root_fingerprint
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.release import Release, Strategy

__all__ = ["QUARANTINE", "Enforcer", "root_of"]

QUARANTINE = "quarantine"


def root_of(roots_dir: Path, rec: InstanceRecord) -> Path:
    """The root an instance runs from."""
    if rec.root is not None:
        return Path(rec.root)
    return roots_dir / Digest.parse(rec.manifest).hex


class Enforcer:
    """Drift detection and repair (see the module docstring)."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        journal: Journal,
        deployer: Deployer,
        events: EventLog,
        preparer: Preparer,
        releases: ReleaseStore,
        roots_dir: Path,
        wall: Callable[[], float],
        health_state: Callable[[str], str | None],
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.runtime = runtime
        self.journal = journal
        self.deployer = deployer
        self.events = events
        self.preparer = preparer
        self.releases = releases
        self.roots_dir = roots_dir
        self.snapshots = snapshots if snapshots is not None else SnapshotStore(roots_dir.parent)
        # Snapshots set aside, with the instances that still ran from them (in memory: after a
        # crash the snapshot GC removes them).
        self._snapshots_aside: list[tuple[tuple[Path, ...], set[str]]] = []
        self.wall = wall
        self.health_state = health_state

    def enforce(self) -> int:
        """One pass over the good release's services; the number of instances replaced."""
        st = self.journal.state
        if st.good is None or st.rolling_out:
            return 0
        try:
            release = self.releases.load(st.good)
        except KilnError as exc:
            self.events.emit("error", what="enforce", detail=exc.message)
            return 0
        replaced = 0
        fingerprints: dict[Path | str, str] = {}  # roots by path, and snapshots by name
        now = self.wall()
        for service in release.services:
            recs = self.journal.state.serving(service.name)
            causes = [(rec, c) for rec in recs if (c := self.drift(rec, service, fingerprints, now))]
            if not causes and len(recs) >= service.replicas:
                continue
            try:
                if any(c == "root" for _, c in causes):
                    self._set_aside({root_of(self.roots_dir, rec) for rec, c in causes if c == "root"})
                    prep = self.preparer.fresh(release, service.name)
                else:
                    prep = self.preparer.existing(release, service.name)
            except KilnError as exc:
                self.events.emit("error", what=f"enforce {service.name}", detail=exc.message)
                continue
            replaced += self._replace(release, service, prep, causes)
        self.remove_set_aside()
        return replaced

    def _replace(
        self, release: Release, service: Any, prep: Prepared, causes: list[tuple[InstanceRecord, str]]
    ) -> int:
        del release
        replaced = 0
        for rec, cause in causes:
            current = next((r for r in self.journal.state.serving(service.name) if r.id == rec.id), rec)
            self.events.emit("drift", service=service.name, instance=rec.id, cause=cause)
            if self.deployer.replace(prep, current, cause):
                replaced += 1
        if len(self.journal.state.serving(service.name)) < service.replicas:
            try:
                self.deployer.converge(prep, Strategy())
            except RolloutFailed as exc:
                self.events.emit("error", what=f"restore {service.name}", detail=exc.reason)
        return replaced

    def drift(
        self, rec: InstanceRecord, service: Any, fingerprints: dict[Path | str, str], now: float
    ) -> str | None:
        try:
            state = self.runtime.state(rec.id)
        except KilnError:
            return "died"
        if state.status is not InstanceStatus.RUNNING:
            return "died"
        path = root_of(self.roots_dir, rec)
        if path not in fingerprints:
            try:
                if path.parent == self.roots_dir:  # composed (per snapshot) or a full copy
                    snaps: dict[str, str] = {}  # shared through ``fingerprints`` (str keys)
                    snaps.update((k, v) for k, v in fingerprints.items() if isinstance(k, str))
                    digest = Digest.parse(rec.manifest)
                    fingerprints[path] = composed_fingerprint(self.roots_dir, digest, self.snapshots, snaps)
                    fingerprints.update(snaps)
                else:
                    fingerprints[path] = root_fingerprint(path)
            except OSError:
                fingerprints[path] = "missing"
        if fingerprints[path] != rec.fingerprint:
            return "root"
        bundle = getattr(self.runtime, "bundle_digest", None)
        if rec.bundle is not None and callable(bundle) and bundle(rec.id) != rec.bundle:
            return "config"
        if service.max_lifetime is not None and now - rec.started_at >= service.max_lifetime:
            return "lifetime"
        if self.health_state(rec.id) == "unhealthy":
            return "unhealthy"
        return None

    # -- tampered roots ------------------------------------------------------------------------------

    def _set_aside(self, paths: set[Path]) -> None:
        """Rename each tampered root that sits at its usual place to ``roots/quarantine/<id>/``,
        re-recording the instances that run from it (journal first), so that the fresh root can
        be unpacked at the usual place while they keep serving from the old one."""
        for path in sorted(paths):
            if path.parent != self.roots_dir or not path.exists():
                continue  # already set aside (or gone): the fresh root goes to the usual place
            layers = composed_layers(self.roots_dir, Digest(path.name))
            if layers:  # composed: set the altered snapshots aside, compose again
                users = {r.id for r in self.journal.state.instances if root_of(self.roots_dir, r) == path}
                moved_layers = self.snapshots.discard_altered(layers)
                remove_composed(self.roots_dir, Digest(path.name))
                self._snapshots_aside.append((moved_layers, users))
                where = str(moved_layers[0]) if moved_layers else ""
                self.events.emit("root_set_aside", root=path.name, to=where, snapshots=len(moved_layers))
                continue
            aside = self.roots_dir / QUARANTINE / secrets.token_hex(6)
            aside.mkdir(parents=True, mode=0o700)
            moved = aside / path.name
            st = self.journal.state
            records = tuple(
                replace(r, root=str(moved)) if root_of(self.roots_dir, r) == path else r for r in st.instances
            )
            self.journal.commit(replace(st, instances=records))
            os.replace(path, moved)
            with contextlib.suppress(FileNotFoundError):
                (self.roots_dir / f"{path.name}.json").unlink()
            self.events.emit("root_set_aside", root=path.name, to=str(moved))

    def remove_set_aside(self) -> None:
        """Remove the set-aside roots and snapshots no instance runs from any more."""
        known = set(self.journal.state.known)
        pending = []
        for paths, users in self._snapshots_aside:
            if users & known:
                pending.append((paths, users))
                continue
            for moved in paths:
                remove_tree(moved)
        self._snapshots_aside = pending
        base = self.roots_dir / QUARANTINE
        if not base.is_dir():
            return
        used = {root_of(self.roots_dir, r) for r in self.journal.state.instances}
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            aside = Path(entry.path)
            if any(p.parent == aside for p in used):
                continue
            with contextlib.suppress(OSError, KilnError):
                for child in os.scandir(aside):
                    name = child.name.removesuffix(".json")
                    if len(name) == 64:
                        remove_root(aside, Digest(name))
                aside.rmdir()
