"""Releases the agent accepted, kept as their exact payload bytes in ``STATE/releases/<hex>.json``,
so that a rollback or a restart needs nothing from the network."""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError
from agent.journal import ReleaseRef
from manifests.atomic import atomic_write
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.files import read_regular
from manifests.release import MAX_RELEASE_BYTES, Release

__all__ = ["ReleaseStore"]


class ReleaseStore:
    """``STATE/releases``: payloads by digest, re-hashed when read."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, payload: bytes, digest: Digest) -> None:
        path = self.directory / f"{digest.hex}.json"
        if not path.exists():
            atomic_write(path, payload, mode=0o600)

    def load(self, ref: ReleaseRef) -> Release:
        """A release accepted earlier (its bytes re-hashed)."""
        digest = Digest.parse(ref.payload_digest)
        path = self.directory / f"{digest.hex}.json"
        try:
            data = read_regular(path, MAX_RELEASE_BYTES)
        except OSError as exc:
            raise AgentError(f"release v{ref.version} is not in {self.directory}: {exc.strerror}") from None
        digest.check(data, what=f"stored release v{ref.version}")
        return Release.from_payload(data)

    def load_or_none(self, ref: ReleaseRef | None) -> tuple[Release | None, KilnError | None]:
        if ref is None:
            return None, None
        try:
            return self.load(ref), None
        except KilnError as exc:
            return None, exc
