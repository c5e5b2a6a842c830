"""Release manifests: which images a channel runs, pinned by digest, until when.

A release is written by people as YAML (or TOML)::

    apiVersion: kiln.dev/v1
    kind: Release
    channel: production
    version: 42                      # integer, strictly increasing per channel
    expires: 2026-12-31T00:00:00Z    # RFC 3339, UTC; hosts refuse the release after this
    services:
      - name: web
        image: registry.example/team/hello-web@sha256:<64 hex>   # a digest is required
        replicas: 2                  # default 1
        listen: 127.0.0.1:8080       # optional: the stable address in front of the instances
        strategy: blue-green         # blue-green (default) | rolling | canary
                                     # | {canary: {steps: [1, 50%, 100%]}}
        health: {http: {port: 8080, path: /healthz}, grace: 5s, timeout: 1s, retries: 3}
        max_lifetime: 24h            # optional: older instances are replaced
        env: {LOG_LEVEL: info}       # injected at start

and signed as its canonical JSON (:meth:`Release.to_bytes`). The agent receives those bytes and
parses them with :meth:`Release.from_payload`: the same schema, nothing unknown accepted, a size
cap checked before parsing, and the bytes must be exactly the canonical form of what they hold, so
one release has exactly one signed spelling.

Entry points: :func:`load_release` (a file), :func:`parse_release` (bytes people wrote; every
problem at once as one :class:`~manifests.errors.ManifestError`) and :meth:`Release.from_payload`
(received bytes; :class:`~manifests.errors.VerificationError` with reason ``parse``, or ``digest``
when an image is not pinned by digest).

Canonical form: durations are spelled by :func:`manifests.durations.format_duration` (``24h`` is
``86400s``), times as ``YYYY-MM-DDTHH:MM:SSZ``, canary steps as ``1`` or ``"50%"``, health values
always written out, ``env`` sorted and omitted when empty, absent optional values omitted.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.durations import DurationError, format_duration, parse_duration
from manifests.errors import DocumentError, ManifestError, VerificationError
from manifests.image import API_VERSION, HttpCheck, TcpCheck
from manifests.oci import parse_json_object
from manifests.source import (
    Checker,
    DocumentFormat,
    SourceDocument,
    join_index,
    join_key,
    load_document,
    parse_document,
)

__all__ = [
    "KIND",
    "MAX_RELEASE_BYTES",
    "MAX_SERVICES",
    "MAX_VERSION",
    "StrategyKind",
    "CanaryStep",
    "Strategy",
    "ServiceHealth",
    "ImagePin",
    "ListenAddress",
    "Service",
    "Release",
    "load_release",
    "parse_release",
    "release_from_document",
    "parse_utc_time",
    "format_utc_time",
    "parse_image_pin",
]

KIND = "Release"
MAX_RELEASE_BYTES = 1024 * 1024
MAX_SERVICES = 256
MAX_VERSION = 2**63 - 1
_MAX_REPLICAS = 1024
_MAX_REPOSITORY = 255
_MAX_STEPS = 32

_TOP_REQUIRED = ("apiVersion", "kind", "channel", "version", "expires", "services")
_SERVICE_REQUIRED = ("name", "image")
_SERVICE_OPTIONAL = ("replicas", "listen", "strategy", "health", "max_lifetime", "env")
_HEALTH_CHECKS = ("http", "tcp")
_HEALTH_OPTIONAL = ("interval", "grace", "timeout", "retries")

_CHANNEL = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?\Z")
_SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_UTC_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")
_DOMAIN_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_LABEL})(?:\.{_DOMAIN_LABEL})*(?::[0-9]{{1,5}})?\Z")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_PERCENT = re.compile(r"([0-9]{1,3})%\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PIN_HINT = "write REPOSITORY@sha256:<64 hex digits>: a tag can move, a digest cannot"


# --------------------------------------------------------------------------------------------
# Times


def parse_utc_time(text: str) -> datetime | None:
    """An RFC 3339 time in UTC (``Z`` or ``+00:00``, whole seconds) as an aware datetime, or None."""
    m = _UTC_TIME.match(text)
    if m is None or m.group(7) is not None or m.group(8) not in ("Z", "+00:00"):
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def format_utc_time(when: datetime) -> str:
    """The canonical spelling: ``2026-12-31T00:00:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_problem(text: str) -> tuple[str, str]:
    shown = json.dumps(text, ensure_ascii=False)[1:-1]
    m = _UTC_TIME.match(text)
    if m is not None and m.group(8) not in ("Z", "+00:00"):
        return f"time '{shown}' is not in UTC", "write it in UTC with a Z, e.g. 2026-12-31T00:00:00Z"
    if m is not None and m.group(7) is not None:
        return f"time '{shown}' has fractional seconds", "write whole seconds, e.g. 2026-12-31T00:00:00Z"
    return f"invalid time '{shown}'", "write an RFC 3339 UTC time such as 2026-12-31T00:00:00Z"


# --------------------------------------------------------------------------------------------
# The document model


class StrategyKind(enum.StrEnum):
    """How the agent replaces a service's instances with the new release's."""

    BLUE_GREEN = "blue-green"  # start every new instance, switch when all are healthy
    ROLLING = "rolling"  # replace instances one at a time
    CANARY = "canary"  # move traffic in steps, checking health after each

    @property
    def has_steps(self) -> bool:
        return self is StrategyKind.CANARY


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryStep:
    """One canary step: an instance count (``1``) or a percentage of the replicas (``"50%"``)."""

    value: int
    percent: bool = False

    def instances(self, replicas: int) -> int:
        """New instances serving after this step (a percentage rounds up, to at least one)."""
        if not self.percent:
            return min(self.value, replicas)
        return max(1, math.ceil(replicas * self.value / 100))

    def to_json(self) -> int | str:
        return f"{self.value}%" if self.percent else self.value

    def __str__(self) -> str:
        return str(self.to_json())


DEFAULT_CANARY_STEPS = (CanaryStep(value=1), CanaryStep(value=100, percent=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    kind: StrategyKind = StrategyKind.BLUE_GREEN
    steps: tuple[CanaryStep, ...] = ()

    def to_json(self) -> str | dict[str, Any]:
        if self.kind.has_steps:
            return {self.kind.value: {"steps": [s.to_json() for s in self.steps]}}
        return self.kind.value


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceHealth:
    """How the agent decides an instance is healthy. Durations in seconds."""

    check: HttpCheck | TcpCheck
    interval: float = 2.0
    grace: float = 0.0  # time after start before failures count
    timeout: float = 1.0
    retries: int = 3

    def to_dict(self) -> dict[str, Any]:
        check: dict[str, Any]
        if isinstance(self.check, HttpCheck):
            check = {"http": {"port": self.check.port, "path": self.check.path}}
        else:
            check = {"tcp": {"port": self.check.port}}
        return {
            **check,
            "interval": format_duration(self.interval),
            "grace": format_duration(self.grace),
            "timeout": format_duration(self.timeout),
            "retries": self.retries,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePin:
    """An image named by repository and digest; the repository is kept for identity checks."""

    repository: str
    digest: Digest

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """An IP address and TCP port (``127.0.0.1:8080``, ``[::1]:8080``)."""

    host: str
    port: int

    @property
    def unspecified(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def conflicts(self, other: ListenAddress) -> bool:
        """Two addresses that cannot both be bound: same port, and same host or a wildcard."""
        if self.port != other.port:
            return False
        return self.host == other.host or self.unspecified or other.unspecified

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    image: ImagePin
    replicas: int = 1
    listen: ListenAddress | None = None
    strategy: Strategy = Strategy()
    health: ServiceHealth | None = None
    max_lifetime: float | None = None  # seconds
    env: tuple[tuple[str, str], ...] = ()  # sorted by name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": str(self.image),
            "replicas": self.replicas,
            "strategy": self.strategy.to_json(),
        }
        if self.listen is not None:
            out["listen"] = str(self.listen)
        if self.health is not None:
            out["health"] = self.health.to_dict()
        if self.max_lifetime is not None:
            out["max_lifetime"] = format_duration(self.max_lifetime)
        if self.env:
            out["env"] = dict(self.env)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """A signed-able release: one channel's version, its expiry and every service by digest."""

    channel: str
    version: int
    expires: datetime
    services: tuple[Service, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "channel": self.channel,
            "version": self.version,
            "expires": format_utc_time(self.expires),
            "services": [s.to_dict() for s in self.services],
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON that is signed (the DSSE payload)."""
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> Digest:
        """sha256 of :meth:`to_bytes` (equal to the payload digest: payloads must be canonical)."""
        return Digest.of(self.to_bytes())

    def expired(self, now: datetime) -> bool:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now >= self.expires

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def images(self) -> tuple[ImagePin, ...]:
        return tuple(s.image for s in self.services)

    @classmethod
    def from_payload(cls, data: bytes, *, limit: int = MAX_RELEASE_BYTES) -> Release:
        """Strictly parse the canonical JSON an agent received (after its signatures verified).

        Raises :class:`VerificationError`: reason ``digest`` if an image is not pinned by digest,
        ``parse`` for anything else (size, JSON, schema, or bytes that are not the canonical form).
        """
        if len(data) > limit:
            raise VerificationError(
                f"release payload: {len(data)} bytes exceeds the {limit}-byte cap", reason="parse"
            )
        try:
            obj = parse_json_object(data, what="release payload", limit=limit)
        except DocumentError as exc:
            message = (
                exc.message
                if exc.message.startswith("release payload")
                else f"release payload: {exc.message}"
            )
            raise VerificationError(message, reason="parse") from None
        doc = SourceDocument(source="release payload", fmt=DocumentFormat.YAML, data=obj)
        schema = _ReleaseSchema(doc)
        try:
            release = schema.release()
        except ManifestError as exc:
            reason = "digest" if schema.unpinned else "parse"
            raise VerificationError(
                "; ".join(str(p) for p in exc.problems),
                reason=reason,
                hint="sign releases with kiln release sign" if reason == "parse" else _PIN_HINT,
            ) from None
        if release.to_bytes() != data:
            raise VerificationError(
                "release payload is not in canonical form",
                reason="parse",
                hint="kiln signs the canonical JSON of a release; re-sign it with kiln release sign",
            )
        return release


# --------------------------------------------------------------------------------------------
# Entry points


def load_release(path: Path) -> Release:
    """Read, parse and validate the release manifest at ``path`` (``.yaml``, ``.yml`` or ``.toml``)."""
    return release_from_document(load_document(path, limit=MAX_RELEASE_BYTES))


def parse_release(data: bytes, *, source: str, fmt: str = "yaml") -> Release:
    """Parse and validate a release manifest people wrote; ManifestError with every problem."""
    return release_from_document(parse_document(data, source=source, fmt=fmt, limit=MAX_RELEASE_BYTES))


def release_from_document(doc: SourceDocument) -> Release:
    return _ReleaseSchema(doc).release()


def parse_image_pin(text: str) -> tuple[ImagePin | None, str, str | None]:
    """``(pin, "", None)`` for ``REPOSITORY@sha256:HEX``; otherwise ``(None, message, hint)``."""
    shown = json.dumps(text, ensure_ascii=False)[1:-1]
    repo, at, digest = text.rpartition("@")
    if not at:
        return None, _no_digest(text, shown), _PIN_HINT
    if not _DIGEST.match(digest):
        return (
            None,
            f"invalid digest '{json.dumps(digest, ensure_ascii=False)[1:-1]}'",
            ("expected sha256: followed by 64 lowercase hex digits"),
        )
    if ":" in repo.rsplit("/", 1)[-1]:
        return None, f"has both a tag and a digest ('{shown}')", "drop the ':TAG': the digest names the image"
    problem = _repository_problem(repo)
    if problem is not None:
        return (
            None,
            problem,
            ("lowercase path components separated by '/', after an optional registry host[:port]"),
        )
    return ImagePin(repository=repo, digest=Digest.parse(digest)), "", None


def _no_digest(text: str, shown: str) -> str:
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        return f"pins a tag, not a digest ('{shown}')"
    return f"no digest ('{shown}')"


def _repository_problem(repo: str) -> str | None:
    shown = json.dumps(repo, ensure_ascii=False)[1:-1]
    if not repo:
        return "empty repository"
    if len(repo) > _MAX_REPOSITORY:
        return f"repository longer than {_MAX_REPOSITORY} characters"
    parts = repo.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.match(first):
            return f"invalid registry host '{json.dumps(first, ensure_ascii=False)[1:-1]}'"
        parts = parts[1:]
    if not all(_PATH_COMPONENT.match(p) for p in parts):
        return f"invalid repository '{shown}'"
    return None


def _parse_listen(text: str) -> tuple[ListenAddress | None, str, str | None]:
    shown = json.dumps(text, ensure_ascii=False)[1:-1]
    hint = "write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        return None, f"invalid address '{shown}'", hint
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        want_v6 = True
    else:
        want_v6 = False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, f"invalid address '{shown}'", hint + " (a host name is not an address)"
    if (ip.version == 6) != want_v6:
        return None, f"invalid address '{shown}'", "write an IPv6 address in brackets: [::1]:8080"
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None, f"port {port} is out of range (1 to 65535)", None
    return ListenAddress(host=ip.compressed, port=port), "", None


# --------------------------------------------------------------------------------------------
# The schema, shared by documents people write and received payloads


class _ReleaseSchema(Checker):
    def __init__(self, doc: SourceDocument) -> None:
        super().__init__(doc)
        self.unpinned = False  # an image reference without a (valid) digest was found

    def release(self) -> Release:
        d = self.doc.data
        self.keys(d, "", required=_TOP_REQUIRED)
        self._exact(d, "apiVersion", API_VERSION)
        self._exact(d, "kind", KIND)
        channel = self._channel(d)
        version = self._version(d)
        expires = self._expires(d)
        services = self._services(d)
        self.finish()
        assert expires is not None  # noqa: S101 - finish() raised otherwise
        return Release(channel=channel, version=version, expires=expires, services=services)

    def _exact(self, d: Mapping[str, Any], key: str, expected: str) -> None:
        if key not in d:
            return
        value = self.string(d[key], key)
        if value is not None and value != expected:
            what = "unsupported apiVersion" if key == "apiVersion" else "wrong kind"
            self.report(key, f"{what} '{value}'", f"expected '{expected}'")

    def _channel(self, d: Mapping[str, Any]) -> str:
        if "channel" not in d:
            return ""
        text = self.string(d["channel"], "channel")
        if text is None:
            return ""
        if not _CHANNEL.match(text):
            shown = json.dumps(text, ensure_ascii=False)[1:-1]
            self.report(
                "channel",
                f"invalid channel '{shown}'",
                "lowercase letters, digits, '.', '_' and '-', at most 64 characters",
            )
        return text

    def _version(self, d: Mapping[str, Any]) -> int:
        if "version" not in d:
            return 0
        value = d["version"]
        if isinstance(value, str) and value.isdigit():
            self.wrong_type("version", value, "an integer", f"drop the quotes: version: {value}")
            return 0
        number = self.integer(value, "version")
        if number is None:
            return 0
        if not 1 <= number <= MAX_VERSION:
            self.report("version", f"out of range (1 to {MAX_VERSION})", "versions start at 1")
            return 0
        return number

    def _expires(self, d: Mapping[str, Any]) -> datetime | None:
        if "expires" not in d:
            return None
        return self._time(d["expires"], "expires")

    def _time(self, value: object, where: str) -> datetime | None:
        text = self.string(value, where)
        if text is None:
            return None
        when = parse_utc_time(text)
        if when is None:
            self.report(where, *_time_problem(text))
        return when

    # -- services

    def _services(self, d: Mapping[str, Any]) -> tuple[Service, ...]:
        if "services" not in d:
            return ()
        items = self.sequence(d["services"], "services", of=" of services")
        if items is None:
            return ()
        if not items:
            self.report("services", "must not be empty", "a release lists every service it runs")
            return ()
        if len(items) > MAX_SERVICES:
            self.report("services", f"more than {MAX_SERVICES} services")
            return ()
        out: list[Service] = []
        names: dict[str, str] = {}
        listens: list[tuple[ListenAddress, str]] = []
        for i, raw in enumerate(items):
            path = join_index("services", i)
            name, listen, service = self._service(raw, path)
            if name is not None:
                where = join_key(path, "name")
                if name in names:
                    self.report(
                        where,
                        f"duplicate service name '{name}' (first at {names[name]})",
                        "service names are unique in a release",
                    )
                else:
                    names[name] = where
            if listen is not None:
                where = join_key(path, "listen")
                clash = next((w for a, w in listens if a.conflicts(listen)), None)
                if clash is not None:
                    self.report(
                        where,
                        f"address {listen} is already used at {clash}",
                        "each service needs its own address",
                    )
                else:
                    listens.append((listen, where))
            if service is not None:
                out.append(service)
        return tuple(out)

    def _service(self, raw: object, path: str) -> tuple[str | None, ListenAddress | None, Service | None]:
        """The service's name and address (for uniqueness checks) and the service if it is valid."""
        m = self.mapping(raw, path)
        if m is None:
            return None, None, None
        before = len(self._problems)
        self.keys(m, path, required=_SERVICE_REQUIRED, optional=_SERVICE_OPTIONAL)
        name = self._service_name(m, path)
        image = self._image(m, path)
        replicas = self._replicas(m, path)
        listen = self._listen(m, path)
        strategy = self._strategy(m, path, replicas)
        health = self._health(m, path)
        lifetime = None
        if "max_lifetime" in m:
            lifetime = self._duration(m["max_lifetime"], join_key(path, "max_lifetime"), positive=True)
        env = self._env(m, path)
        if len(self._problems) != before or name is None or image is None:
            return name, listen, None
        return (
            name,
            listen,
            Service(
                name=name,
                image=image,
                replicas=replicas,
                listen=listen,
                strategy=strategy,
                health=health,
                max_lifetime=lifetime,
                env=env,
            ),
        )

    def _service_name(self, m: Mapping[str, Any], path: str) -> str | None:
        if "name" not in m:
            return None
        where = join_key(path, "name")
        name = self.string(m["name"], where)
        if name is not None and not _SERVICE_NAME.match(name):
            shown = json.dumps(name, ensure_ascii=False)[1:-1]
            self.report(
                where,
                f"invalid service name '{shown}'",
                "lowercase letters, digits and '-', at most 63 characters (a DNS label)",
            )
            return None
        return name

    def _image(self, m: Mapping[str, Any], path: str) -> ImagePin | None:
        if "image" not in m:
            return None
        where = join_key(path, "image")
        text = self.string(m["image"], where)
        if text is None:
            return None
        pin, message, hint = parse_image_pin(text)
        if pin is None:
            self.unpinned = self.unpinned or not _DIGEST.match(text.rpartition("@")[2])
            self.report(where, message, hint)
        return pin

    def _replicas(self, m: Mapping[str, Any], path: str) -> int:
        if "replicas" not in m:
            return 1
        where = join_key(path, "replicas")
        number = self.integer(m["replicas"], where)
        if number is None:
            return 1
        if not 1 <= number <= _MAX_REPLICAS:
            self.report(where, f"out of range (1 to {_MAX_REPLICAS})", "a service runs at least one instance")
            return 1
        return number

    def _listen(self, m: Mapping[str, Any], path: str) -> ListenAddress | None:
        if "listen" not in m:
            return None
        where = join_key(path, "listen")
        text = self.string(m["listen"], where)
        if text is None:
            return None
        address, message, hint = _parse_listen(text)
        if address is None:
            self.report(where, message, hint)
        return address

    def _strategy(self, m: Mapping[str, Any], path: str, replicas: int) -> Strategy:
        default = Strategy()
        if "strategy" not in m:
            return default
        where = join_key(path, "strategy")
        value = m["strategy"]
        names = [k.value for k in StrategyKind]
        if isinstance(value, str):
            chosen = self.choice(value, where, names)
            if chosen is None:
                return default
            kind = StrategyKind(chosen)
            return Strategy(kind=kind, steps=DEFAULT_CANARY_STEPS if kind.has_steps else ())
        if not isinstance(value, dict):
            self.wrong_type(where, value, "a strategy name or {canary: {steps: [...]}}")
            return default
        if len(value) != 1 or StrategyKind.CANARY.value not in value:
            self.keys(value, where, optional=(StrategyKind.CANARY.value,))
            if not value:
                self.report(
                    where, "must not be empty", "write blue-green, rolling or {canary: {steps: [...]}}"
                )
            return default
        sub = join_key(where, StrategyKind.CANARY.value)
        body = self.mapping(value[StrategyKind.CANARY.value], sub)
        if body is None or not self.keys(body, sub, required=("steps",)):
            return default
        steps = self._steps(body["steps"], join_key(sub, "steps"), replicas)
        return Strategy(kind=StrategyKind.CANARY, steps=steps) if steps else default

    def _steps(self, value: object, where: str, replicas: int) -> tuple[CanaryStep, ...]:
        items = self.sequence(value, where, of=' of steps (1, "50%")')
        if items is None:
            return ()
        if not items:
            self.report(where, "must not be empty", "e.g. steps: [1, 50%, 100%]")
            return ()
        if len(items) > _MAX_STEPS:
            self.report(where, f"more than {_MAX_STEPS} steps")
            return ()
        steps: list[CanaryStep] = []
        previous = 0
        for i, raw in enumerate(items):
            item = join_index(where, i)
            step = self._step(raw, item, replicas)
            if step is None:
                return ()
            count = step.instances(replicas)
            if count <= previous:
                self.report(
                    item,
                    f"step {step} does not add instances ({count} of {replicas} after the previous step"
                    f" already had {previous})",
                    "each step must move more instances to the new version",
                )
                return ()
            previous = count
            steps.append(step)
        if previous != replicas:
            self.report(
                join_index(where, len(items) - 1),
                f"the last step reaches {previous} of {replicas} instances",
                "end with 100% so every instance runs the new version",
            )
            return ()
        return tuple(steps)

    def _step(self, raw: object, where: str, replicas: int) -> CanaryStep | None:
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 1 <= raw <= replicas:
                self.report(where, f"step {raw} is out of range (1 to {replicas} replicas)")
                return None
            return CanaryStep(value=raw)
        if isinstance(raw, str):
            m = _PERCENT.match(raw)
            if m is None or not 1 <= int(m.group(1)) <= 100 or m.group(1) != str(int(m.group(1))):
                shown = json.dumps(raw, ensure_ascii=False)[1:-1]
                self.report(
                    where, f"invalid step '{shown}'", "an instance count (1) or a percentage (1% to 100%)"
                )
                return None
            return CanaryStep(value=int(m.group(1)), percent=True)
        self.wrong_type(where, raw, 'an instance count or a percentage ("50%")')
        return None

    # -- health

    def _health(self, m: Mapping[str, Any], path: str) -> ServiceHealth | None:
        if "health" not in m:
            return None
        where = join_key(path, "health")
        h = self.mapping(m["health"], where)
        if h is None:
            return None
        self.keys(h, where, optional=(*_HEALTH_CHECKS, *_HEALTH_OPTIONAL))
        present = [k for k in _HEALTH_CHECKS if k in h]
        check: HttpCheck | TcpCheck | None = None
        if not present:
            self.report(where, "expected exactly one of: http, tcp", "say how to probe the service")
        elif len(present) > 1:
            self.report(where, f"has both '{present[0]}' and '{present[1]}'", "keep one check")
        else:
            check = self._check(present[0], h[present[0]], join_key(where, present[0]))
        interval = self._opt_duration(h, where, "interval", 2.0, positive=True)
        grace = self._opt_duration(h, where, "grace", 0.0, positive=False)
        timeout = self._opt_duration(h, where, "timeout", 1.0, positive=True)
        retries = 3
        if "retries" in h:
            value = self.integer(h["retries"], join_key(where, "retries"))
            if value is not None and not 1 <= value <= 100:
                self.report(join_key(where, "retries"), "out of range (1 to 100)")
            elif value is not None:
                retries = value
        if check is None:
            return None
        return ServiceHealth(check=check, interval=interval, grace=grace, timeout=timeout, retries=retries)

    def _check(self, kind: str, value: object, where: str) -> HttpCheck | TcpCheck | None:
        c = self.mapping(value, where)
        if c is None:
            return None
        if kind == "tcp":
            complete = self.keys(c, where, required=("port",))
            port = self._port(c, where) if "port" in c else None
            return TcpCheck(port=port) if complete and port is not None else None
        complete = self.keys(c, where, required=("port",), optional=("path",))
        port = self._port(c, where) if "port" in c else None
        http_path = "/"
        if "path" in c:
            sub = join_key(where, "path")
            text = self.string(c["path"], sub)
            if text is not None and (not text.startswith("/") or _CONTROL.search(text) or " " in text):
                self.report(sub, "must start with '/' and contain no spaces", f"write '/{text.lstrip('/')}'")
                return None
            if text is not None:
                http_path = text
        return HttpCheck(port=port, path=http_path) if complete and port is not None else None

    def _port(self, c: Mapping[str, Any], where: str) -> int | None:
        sub = join_key(where, "port")
        number = self.integer(c["port"], sub)
        if number is not None and not 1 <= number <= 65535:
            self.report(sub, f"port {number} is out of range (1 to 65535)")
            return None
        return number

    def _opt_duration(
        self, h: Mapping[str, Any], where: str, key: str, default: float, *, positive: bool
    ) -> float:
        if key not in h:
            return default
        got = self._duration(h[key], join_key(where, key), positive=positive)
        return default if got is None else got

    def _duration(self, value: object, where: str, *, positive: bool) -> float | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            key = where.rsplit(".", 1)[-1]
            raw = self.doc.raw.get(where, str(value))
            hint = f'add a unit and quote it: {self.assignment(key)} "{raw}s"'
            self.wrong_type(where, value, "a duration such as 5s", hint)
            return None
        text = self.string(value, where)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except DurationError:
            shown = json.dumps(text, ensure_ascii=False)[1:-1]
            self.report(
                where, f"invalid duration '{shown}'", "use NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 24h"
            )
            return None
        if positive and seconds <= 0:
            self.report(where, "must be greater than 0")
            return None
        if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
            self.report(where, "finer than a millisecond", "round it to whole milliseconds")
            return None
        return seconds

    # -- env

    def _env(self, m: Mapping[str, Any], path: str) -> tuple[tuple[str, str], ...]:
        if "env" not in m:
            return ()
        where = join_key(path, "env")
        e = self.mapping(m["env"], where)
        if e is None:
            return ()
        out: list[tuple[str, str]] = []
        for k, v in e.items():
            sub = join_key(where, k)
            if not k or "=" in k or _CONTROL.search(k) or " " in k:
                self.report(sub, "invalid environment variable name", "no '=', spaces or control characters")
                continue
            value = self.string(v, sub)
            if value is None:
                continue
            if "\x00" in value:
                self.report(sub, "contains a NUL character")
                continue
            out.append((k, value))
        return tuple(sorted(out))
