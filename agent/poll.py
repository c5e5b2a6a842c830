"""Cheap polls of a release channel: the envelope is downloaded only when the channel tag moved.

Every reconcile asks the source what the channel tag points at (a ``HEAD`` of the tag's manifest
on a registry, a look into ``index.json`` for ``oci:DIR``) and compares that digest with the one it
fetched last; only a new digest costs the manifest and the envelope
(:func:`publisher.release_artifact.poll_release`). The envelope kept from the last fetch is
returned as it was fetched, and the caller verifies it every time as before (signatures,
threshold, expiry, version): the cache saves bytes on the wire, never a check. So a short poll
interval costs one small request per poll.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from manifests.digest import Digest
from publisher.endpoint import Endpoint
from publisher.release_artifact import poll_release

__all__ = ["ReleasePoller"]


@dataclass(frozen=True, slots=True)
class _Seen:
    where: str
    channel: str
    digest: Digest
    envelope: bytes


class ReleasePoller:
    """Remembers the last envelope of one channel; ``polls`` and ``fetches`` count requests."""

    def __init__(self) -> None:
        self._seen: _Seen | None = None
        self._lock = threading.Lock()
        self.polls = 0
        self.fetches = 0

    def fetch(self, endpoint: Endpoint, channel: str) -> bytes:
        """The channel's envelope (unverified bytes), downloaded only if the tag moved."""
        with self._lock:
            seen = self._seen
            known = (
                seen.digest
                if seen is not None
                and (seen.where, seen.channel)
                == (
                    endpoint.display,
                    channel,
                )
                else None
            )
            digest, data = poll_release(endpoint, channel, known=known)
            self.polls += 1
            if data is None and seen is not None:
                return seen.envelope
            assert data is not None  # noqa: S101 - poll_release returns the bytes unless known
            self.fetches += 1
            if digest is None:  # the source cannot say what the tag points at: nothing to compare
                self._seen = None
            else:
                self._seen = _Seen(where=endpoint.display, channel=channel, digest=digest, envelope=data)
            return data
