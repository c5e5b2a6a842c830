"""Garbage collection of the state directory: what no release kept and no instance uses goes.

- :meth:`Collector.releases_and_roots` (after a release became good): blobs of images that neither
  the good nor the previous release pins, unpacked roots that none of them unpacks and no serving
  instance runs from, interrupted unpacks, and set-aside (tampered) roots no instance uses any more.
- :meth:`Collector.volumes` (every reconcile): the volumes of instances that had their own
  (``volume_per_instance``) once the instance is gone, not even ``known``:
  ``STATE/volumes/<service>/<instance id>``, removed iteratively whatever the instance wrote.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent.enforce import QUARANTINE, Enforcer, root_of
from agent.events import EventLog
from agent.journal import Journal
from agent.releases import ReleaseStore
from agent.runtime import INSTANCE_PREFIX
from agent.store import ContentStore
from agent.unpack import remove_interrupted, remove_root, remove_tree
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
    ) -> None:
        self.state_dir = state_dir
        self.roots_dir = roots_dir
        self.store = store
        self.releases = releases
        self.journal = journal
        self.enforcer = enforcer
        self.events = events

    def releases_and_roots(self) -> None:
        st = self.journal.state
        keep: list[Digest] = []
        manifests: set[str] = {r.manifest for r in st.instances}
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
            for entry in os.scandir(self.roots_dir):
                if entry.name == QUARANTINE:
                    continue
                name = entry.name.removesuffix(".json")
                if len(name) == 64 and f"sha256:{name}" not in manifests:
                    if self.roots_dir / name in used:
                        continue
                    with contextlib.suppress(KilnError, OSError):
                        remove_root(self.roots_dir, Digest(name))
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
