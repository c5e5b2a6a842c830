"""Where the agent's releases and images come from, behind one small Protocol.

The reconcile loop never opens a registry or a layout itself: it asks a :class:`ReleaseSource`
(python-tuf's ``FetcherInterface`` is the model) for two things,

- :meth:`ReleaseSource.fetch_release`: the channel's release envelope, unverified bytes (the caller
  verifies them), size-capped;
- :meth:`ReleaseSource.open_images`: an :class:`agent.sources.ImageLocation` (blobs by digest and the
  signature/attestation artifacts) for one image repository.

:class:`ConfigReleaseSource` is the real one (``oci:DIR`` or a registry, from the agent config);
tests inject a fake with the faults a real source will not produce on demand.

Every failure of a source is classified once, here (:func:`source_reason`), into the vocabulary
that ``kiln agent status`` shows:

::

    auth         the registry refused the credentials (401/403, no token)
    unreachable  the network, a timeout, 5xx past the retries, a missing oci:DIR
    not-found    nothing is published under the channel tag / repository
    parse        what the source sent is not a release artifact (refused before verification)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from agent.poll import ReleasePoller
from agent.sources import ImageLocation, open_image_location
from manifests.agentconfig import AgentConfig
from manifests.errors import DocumentError, KilnError, VerificationError

__all__ = ["SOURCE_REASONS", "ReleaseSource", "ConfigReleaseSource", "source_reason"]

SOURCE_REASONS = ("auth", "unreachable", "not-found", "parse")


class ReleaseSource(Protocol):
    """What the agent fetches from. Implementations raise kiln errors only (see the module)."""

    @property
    def display(self) -> str: ...

    def fetch_release(self, channel: str) -> bytes:
        """The channel's release envelope (unverified bytes)."""
        ...

    def open_images(self, repository: str) -> AbstractContextManager[ImageLocation]:
        """Images, signatures and attestations of ``repository``."""
        ...


class ConfigReleaseSource:
    """The source the agent config names: ``oci:DIR`` or ``HOST[:PORT]/REPO``, and the image
    locations of its ``images`` table."""

    def __init__(self, config: AgentConfig, *, staging: Path, poller: ReleasePoller | None = None) -> None:
        self.config = config
        self.staging = staging
        self.poller = poller if poller is not None else ReleasePoller()

    @property
    def display(self) -> str:
        return self.config.source

    def fetch_release(self, channel: str) -> bytes:
        """One ``HEAD`` of the channel tag; the envelope only when it moved (:mod:`agent.poll`)."""
        from publisher.release_artifact import open_release_endpoint

        with open_release_endpoint(
            self.config.source, insecure=self.config.insecure, timeouts=_timeouts(self.config)
        ) as endpoint:
            return self.poller.fetch(endpoint, channel)

    def open_images(self, repository: str) -> AbstractContextManager[ImageLocation]:
        location = self.config.location_for(repository)
        return open_image_location(
            location, staging=self.staging, insecure=self.config.insecure, timeouts=_timeouts(self.config)
        )


def _timeouts(config: AgentConfig) -> Any:
    from publisher.session import Timeouts  # loads httpx: only when a registry is used

    return Timeouts.from_limits(config.limits)


def source_reason(exc: BaseException) -> str:
    """``auth``, ``unreachable``, ``not-found`` or ``parse`` for a failure of a source."""
    from publisher.errors import AuthError, RegistryError
    from publisher.release_artifact import ReleaseNotFound

    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, RegistryError) and exc.status in (401, 403):
        return "auth"
    if isinstance(exc, ReleaseNotFound):
        return "not-found"
    if isinstance(exc, RegistryError) and (exc.status == 404 or _not_found_code(exc.code)):
        return "not-found"
    if isinstance(exc, VerificationError | DocumentError):
        return "parse"
    if isinstance(exc, KilnError | OSError):
        return "unreachable"
    return "unreachable"


def _not_found_code(code: str) -> bool:
    from publisher.errors import ErrorCode

    return code in ErrorCode.__members__ and ErrorCode(code).is_not_found
