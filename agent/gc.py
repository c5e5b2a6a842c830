"""Garbage collection of the state directory: what no release kept and no instance uses goes.

- :meth:`Collector.releases_and_roots` (after a release became good): blobs of images that neither
  the good nor the previous release pins, unpacked roots that none of them unpacks and no serving
  instance runs from (a composed root is unmounted first; one that is kept but nothing runs from
  is only unmounted, "parked"), interrupted unpacks, set-aside (tampered) roots no instance uses
  any more, and layer snapshots no kept root is made of (beyond the snapshot store's budget).
- :meth:`Collector.volumes` (every reconcile): the volumes of instances that had their own
  (``volume_per_instance``) once the instance is gone, not even ``known``:
  ``STATE/volumes/<service>/<instance id>``, removed iteratively whatever the instance wrote.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent.compose import composed_layers, park, remove_composed
from agent.enforce import QUARANTINE, Enforcer, root_of
from agent.events import EventLog
from agent.journal import Journal
from agent.releases import ReleaseStore
from agent.runtime import INSTANCE_PREFIX
from agent.snapshots import SnapshotStore
from agent.standby import standby_of
from agent.store import ContentStore
from agent.unpack import remove_interrupted, remove_tree
from manifests.digest import Digest
from manifests.errors import KilnError

__all__ = ["Collector"]

#: What :func:`agent.unpack.remove_tree` renames a tree it could not remove to (``.trash-<name>-<rnd>``).
TRASH_PREFIX = ".trash-"


class Collector:
    """See the module docstring."""

    def __init__(
        self,
        *,
        state_dir: Path,
        roots_dir: Path,
        store: ContentStore,
        releases: ReleaseStore,
        journal: Journal,
        enforcer: Enforcer,
        events: EventLog,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.roots_dir = roots_dir
        self.store = store
        self.releases = releases
        self.journal = journal
        self.enforcer = enforcer
        self.events = events
        self.snapshots = snapshots if snapshots is not None else SnapshotStore(state_dir)

    def releases_and_roots(self) -> None:
        st = self.journal.state
        keep: list[Digest] = []
        running = {r.manifest for r in (*st.instances, *(s.record for s in standby_of(st)))}
        manifests: set[str] = set(running)
        for ref in (st.good, st.previous):
            release, _ = self.releases.load_or_none(ref)
            if release is None:
                continue
            for pin in release.images:
                keep.append(pin.digest)
                with contextlib.suppress(KilnError):
                    manifests.add(str(self.store.image(pin.digest).manifest_digest))
        with contextlib.suppress(OSError, KilnError):
            self.store.gc(keep)
            remove_interrupted(self.roots_dir)
            used = {root_of(self.roots_dir, r) for r in st.instances}
            names = {e.name.removesuffix(".json") for e in os.scandir(self.roots_dir)}
            for name in sorted(n for n in names if len(n) == 64 and n != QUARANTINE):
                with contextlib.suppress(KilnError, OSError):
                    if f"sha256:{name}" not in manifests and self.roots_dir / name not in used:
                        remove_composed(self.roots_dir, Digest(name))
                    elif f"sha256:{name}" not in running and self.roots_dir / name not in used:
                        park(self.roots_dir, Digest(name))  # kept for a rollback, not mounted
            layers: set[str] = set()
            for manifest in manifests:
                layers.update(composed_layers(self.roots_dir, Digest.parse(manifest)))
            self.snapshots.gc(layers)
        with contextlib.suppress(OSError, KilnError):
            self.enforcer.remove_set_aside()

    def volumes(self) -> None:
        base = self.state_dir / "volumes"
        if not base.is_dir():
            return
        known = set(self.journal.state.known)
        for service in os.scandir(base):
            if not service.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(service.path):
                gone = entry.name.startswith(INSTANCE_PREFIX) and entry.name not in known
                if gone or entry.name.startswith(TRASH_PREFIX):  # (a removal that failed before)
                    remove_tree(Path(entry.path))  # never raises: what stays is renamed .trash-
                    if gone:
                        self.events.emit("volumes_removed", instance=entry.name)
