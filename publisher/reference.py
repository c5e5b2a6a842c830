"""Image references: ``registry/repository[:tag][@digest]``, parsed by the distribution grammar.

The first path component is a registry when it contains ``.`` or ``:``, is ``localhost``, or has an
upper-case letter; otherwise the registry is Docker Hub (``docker.io``), whose one-component names
live under ``library/``. kiln never talks to Docker Hub in its tests, but parses its names the way
every other tool does so a reference means the same thing everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from manifests.digest import Digest
from manifests.errors import DocumentError
from publisher.errors import InvalidReference

__all__ = [
    "Reference",
    "validate_repository",
    "validate_tag",
    "DOCKER_HUB",
    "MAX_NAME_LENGTH",
]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$"
)


def validate_repository(name: str) -> str:
    """Return ``name`` if it is a valid repository path, else raise :class:`InvalidReference`."""
    if not name:
        raise InvalidReference("repository name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"repository name is {len(name)} characters long",
            hint=f"at most {MAX_NAME_LENGTH} characters",
        )
    if not _REPOSITORY.match(name):
        raise InvalidReference(
            f"invalid repository name {name!r}",
            hint="lower-case letters and digits, separated by '.', '_', '__', '-' or '/'",
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise :class:`InvalidReference`."""
    if not _TAG.match(tag):
        raise InvalidReference(
            f"invalid tag {tag!r}",
            hint="1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'",
        )
    return tag


def _validate_registry(host: str) -> str:
    if not _HOST.match(host):
        raise InvalidReference(f"invalid registry host {host!r}", hint="host[:port], e.g. 127.0.0.1:5000")
    _, _, port = host.rpartition("]") if host.startswith("[") else ("", "", host)
    if ":" in port and int(port.rsplit(":", 1)[1]) > 65535:
        raise InvalidReference(f"invalid registry port in {host!r}")
    return host


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A parsed image reference. At least one of ``tag`` and ``digest`` may be absent; when both are,
    :attr:`ref` is ``latest``, as every other tool assumes."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        _validate_registry(self.registry)
        validate_repository(self.repository)
        if self.tag is not None:
            validate_tag(self.tag)

    @classmethod
    def parse(cls, text: str) -> Reference:
        if not text or text != text.strip():
            raise InvalidReference(
                f"invalid image reference {text!r}", hint="registry/repository[:tag][@digest]"
            )
        rest, at, digest_text = text.partition("@")
        digest: Digest | None = None
        if at:
            try:
                digest = Digest.parse(digest_text)
            except DocumentError as exc:
                raise InvalidReference(
                    f"invalid digest in image reference {text!r}: {exc.message}", hint=exc.hint
                ) from exc
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            validate_tag(tag)
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, rest
        if registry == "index.docker.io":
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        _validate_registry(registry)
        validate_repository(repository)
        if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
            raise InvalidReference(
                f"image name {registry}/{repository!s} is too long",
                hint=f"at most {MAX_NAME_LENGTH} characters",
            )
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def ref(self) -> str:
        """What goes in ``/v2/<name>/manifests/<ref>``: the digest when pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub's differs from its name)."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
