"""The agent's trust root: the first one installed out of band, then N+1 signed by N.

``STATE/root`` holds the envelope of the root in force; the journal records its version.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from agent.errors import AgentError
from agent.journal import Journal
from manifests.atomic import atomic_write
from manifests.files import read_regular
from manifests.trustroot import MAX_ROOT_BYTES, TrustRoot
from signing.root import envelope_cap, load_root, verify_root_update

__all__ = ["ROOT_FILE", "TrustKeeper"]

ROOT_FILE = "root"


class TrustKeeper:
    """Loads and rotates ``STATE/root`` (see the module docstring)."""

    def __init__(self, state_dir: Path, *, first_root: Path, journal: Journal) -> None:
        self.path = Path(state_dir) / ROOT_FILE
        self.first_root = first_root
        self.journal = journal

    def load(self) -> TrustRoot:
        """The root in force; on the first start, the configured one (copied into the state)."""
        if self.path.exists() or self.path.is_symlink():
            # only a regular file, read no further than the cap (a FIFO here would block the start)
            data = read_regular(self.path, envelope_cap(MAX_ROOT_BYTES))
            root = load_root(data, source=str(self.path))
        else:
            try:
                with self.first_root.open("rb") as fh:
                    data = fh.read(envelope_cap(MAX_ROOT_BYTES) + 1)
            except OSError as exc:
                raise AgentError(
                    f"trust root {self.first_root}: {exc.strerror or exc}",
                    hint="install the first trust root on the host (out of band)",
                ) from None
            root = load_root(data, source=str(self.first_root))
            atomic_write(self.path, data, mode=0o600)
        if self.journal.state.root_version != root.version:
            self.journal.commit(replace(self.journal.state, root_version=root.version))
        return root

    def update(self, current: TrustRoot, envelope: bytes, *, now: datetime) -> TrustRoot:
        """Install root N+1 (signed by a threshold of root N's root keys and its own); raises
        :class:`~manifests.errors.VerificationError` for anything else."""
        new = verify_root_update(current, envelope, now=now)
        atomic_write(self.path, envelope, mode=0o600)
        self.journal.commit(replace(self.journal.state, root_version=new.version))
        return new
