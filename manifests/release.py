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
        volume_per_instance: true    # optional: each instance gets its own volumes (default:
                                     # one set per service, old instance stopped before the new)
        listen: 127.0.0.1:8080       # optional: the stable address in front of the instances
        strategy: blue-green         # blue-green (default) | rolling | canary
                                     # | {canary: {steps: [1, 50%, 100%]}}
        health: {http: {port: 8080, path: /healthz}, grace: 5s, timeout: 1s, retries: 3}
        max_lifetime: 24h            # optional: older instances are replaced
        env: {LOG_LEVEL: info}       # injected at start
        resources: {memory: 256Mi, cpus: 0.5, pids: 256}   # optional caps per instance
        user_namespace: true         # optional: run in a user namespace (unprivileged host ids)
        keep_previous: 5m            # optional: after a rollout, the previous release's instances
                                     # keep running out of rotation this long (a rollback is a switch)

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
``resources.memory`` is spelled in the largest binary unit that divides it (``256Mi``, ``1Gi``; a
byte count that is no multiple of 1 KiB stays an integer), ``resources.cpus`` as an integer when
whole and as a decimal number otherwise (``0.5``), ``user_namespace`` only when true.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from manifests.canonical import canonical_json
from manifests.chaos import Chaos, check_chaos
from manifests.digest import Digest
from manifests.durations import format_duration
from manifests.errors import ManifestError, VerificationError
from manifests.fields import (
    LOWER_NAME,
    FieldChecker,
    ListenAddress,
    format_utc_time,
    parse_utc_time,
    shown,
)
from manifests.fleet import Rollout, check_rollout
from manifests.image import API_VERSION, HttpCheck, TcpCheck
from manifests.payload import payload_document, require_canonical
from manifests.source import SourceDocument, join_index, join_key, load_document, parse_document
from manifests.vocabulary import Reason

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
    "Resources",
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
_MAX_KEEP_PREVIOUS = 24 * 3600.0  # seconds: standby instances are a rollback window, not a fleet

_TOP_REQUIRED = ("apiVersion", "kind", "channel", "version", "expires", "services")
_TOP_OPTIONAL = ("rollout", "chaos")
_SERVICE_REQUIRED = ("name", "image")
_SERVICE_OPTIONAL = (
    "replicas",
    "listen",
    "strategy",
    "health",
    "max_lifetime",
    "env",
    "resources",
    "user_namespace",
    "keep_previous",
)
_HEALTH_CHECKS = ("http", "tcp")
_HEALTH_OPTIONAL = ("interval", "grace", "timeout", "retries")
_SERVICE_OPTIONAL_VOLUMES = ("volume_per_instance",)  # see Service.volume_per_instance

_SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_DOMAIN_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_LABEL})(?:\.{_DOMAIN_LABEL})*(?::[0-9]{{1,5}})?\Z")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_PERCENT = re.compile(r"([0-9]{1,3})%\Z")
_RESOURCE_KEYS = ("memory", "cpus", "pids")
_MEMORY = re.compile(r"([0-9]{1,16})(Ki|Mi|Gi|Ti)?\Z")
_MEMORY_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
MIN_MEMORY = 6 << 20  # the engine's own floor (docker refuses less than 6 MiB)
MAX_MEMORY = 4 << 40
MIN_CPU_MILLIS = 10
MAX_CPU_MILLIS = 1024 * 1000
MIN_PIDS = 8
MAX_PIDS = 4194304  # the kernel's highest pid_max
_PIN_HINT = "write REPOSITORY@sha256:<64 hex digits>: a tag can move, a digest cannot"


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


def format_memory(size: int) -> int | str:
    """``268435456`` -> ``"256Mi"``: the largest binary unit that divides ``size`` exactly."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if size % _MEMORY_UNITS[unit] == 0:
            return f"{size // _MEMORY_UNITS[unit]}{unit}"
    return size


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Per-instance caps a release sets for a service; ``None`` keeps the agent's default.

    ``memory`` is in bytes, ``cpu_millis`` in thousandths of a CPU (``cpus: 0.5`` is 500),
    ``pids`` the most tasks (processes and threads) the instance may hold at once.
    """

    memory: int | None = None
    cpu_millis: int | None = None
    pids: int | None = None

    @property
    def cpus(self) -> float | None:
        return None if self.cpu_millis is None else self.cpu_millis / 1000

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.memory is not None:
            out["memory"] = format_memory(self.memory)
        if self.cpu_millis is not None:
            whole, part = divmod(self.cpu_millis, 1000)
            out["cpus"] = whole if part == 0 else self.cpu_millis / 1000
        if self.pids is not None:
            out["pids"] = self.pids
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    image: ImagePin
    replicas: int = 1
    # Each instance gets volumes of its own (created empty, removed with it) instead of the
    # service's one set, which only one instance at a time may use.
    volume_per_instance: bool = False
    listen: ListenAddress | None = None
    strategy: Strategy = Strategy()
    health: ServiceHealth | None = None
    max_lifetime: float | None = None  # seconds
    env: tuple[tuple[str, str], ...] = ()  # sorted by name
    resources: Resources | None = None
    user_namespace: bool = False
    keep_previous: float | None = None  # seconds the previous release's instances stay on standby

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": str(self.image),
            "replicas": self.replicas,
            "strategy": self.strategy.to_json(),
        }
        if self.listen is not None:
            out["listen"] = str(self.listen)
        if self.volume_per_instance:
            out["volume_per_instance"] = True
        if self.health is not None:
            out["health"] = self.health.to_dict()
        if self.max_lifetime is not None:
            out["max_lifetime"] = format_duration(self.max_lifetime)
        if self.env:
            out["env"] = dict(self.env)
        if self.resources is not None:
            out["resources"] = self.resources.to_dict()
        if self.user_namespace:
            out["user_namespace"] = True
        if self.keep_previous is not None:
            out["keep_previous"] = format_duration(self.keep_previous)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """A signed-able release: one channel's version, its expiry and every service by digest."""

    channel: str
    version: int
    expires: datetime
    services: tuple[Service, ...]
    # how the release spreads over a fleet (waves), and the chaos it asks hosts to inflict
    rollout: Rollout | None = None
    chaos: Chaos | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "channel": self.channel,
            "version": self.version,
            "expires": format_utc_time(self.expires),
            "services": [s.to_dict() for s in self.services],
        }
        if self.rollout is not None:
            out["rollout"] = self.rollout.to_dict()
        if self.chaos is not None:
            out["chaos"] = self.chaos.to_dict()
        return out

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
        doc = payload_document(data, what="release payload", limit=limit)
        schema = _ReleaseSchema(doc)
        try:
            release = schema.release()
        except ManifestError as exc:
            reason = Reason.DIGEST if schema.unpinned else Reason.PARSE
            raise VerificationError(
                "; ".join(str(p) for p in exc.problems),
                reason=reason,
                hint="sign releases with kiln release sign" if reason is Reason.PARSE else _PIN_HINT,
            ) from None
        require_canonical(
            data,
            release.to_bytes(),
            what="release payload",
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
    repo, at, digest = text.rpartition("@")
    if not at:
        return None, _no_digest(text), _PIN_HINT
    if not _DIGEST.match(digest):
        return (
            None,
            f"invalid digest '{shown(digest)}'",
            "expected sha256: followed by 64 lowercase hex digits",
        )
    if ":" in repo.rsplit("/", 1)[-1]:
        return (
            None,
            f"has both a tag and a digest ('{shown(text)}')",
            "drop the ':TAG': the digest names the image",
        )
    problem = _repository_problem(repo)
    if problem is not None:
        return (
            None,
            problem,
            ("lowercase path components separated by '/', after an optional registry host[:port]"),
        )
    return ImagePin(repository=repo, digest=Digest.parse(digest)), "", None


def _no_digest(text: str) -> str:
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        return f"pins a tag, not a digest ('{shown(text)}')"
    return f"no digest ('{shown(text)}')"


def _repository_problem(repo: str) -> str | None:
    if not repo:
        return "empty repository"
    if len(repo) > _MAX_REPOSITORY:
        return f"repository longer than {_MAX_REPOSITORY} characters"
    parts = repo.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.match(first):
            return f"invalid registry host '{shown(first)}'"
        parts = parts[1:]
    if not all(_PATH_COMPONENT.match(p) for p in parts):
        return f"invalid repository '{shown(repo)}'"
    return None


# --------------------------------------------------------------------------------------------
# The schema, shared by documents people write and received payloads


class _ReleaseSchema(FieldChecker):
    def __init__(self, doc: SourceDocument) -> None:
        super().__init__(doc)
        self.unpinned = False  # an image reference without a (valid) digest was found

    def release(self) -> Release:
        d = self.doc.data
        self.keys(d, "", required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
        self.header(d, KIND, escape=False)
        channel = self._channel(d)
        version = self._version(d)
        expires = self._expires(d)
        services = self._services(d)
        rollout = check_rollout(self, d["rollout"], "rollout") if "rollout" in d else None
        chaos = check_chaos(self, d["chaos"], "chaos") if "chaos" in d else None
        self.finish()
        assert expires is not None  # noqa: S101 - finish() raised otherwise
        return Release(
            channel=channel, version=version, expires=expires, services=services, rollout=rollout, chaos=chaos
        )

    def _channel(self, d: Mapping[str, Any]) -> str:
        if "channel" not in d:
            return ""
        hint = "lowercase letters, digits, '.', '_' and '-', at most 64 characters"
        return self.matching(d["channel"], "channel", LOWER_NAME, "channel", hint) or ""

    def _version(self, d: Mapping[str, Any]) -> int:
        if "version" not in d:
            return 0
        value = d["version"]
        if isinstance(value, str) and value.isdigit():
            self.wrong_type("version", value, "an integer", f"drop the quotes: version: {value}")
            return 0
        return self.bounded(value, "version", 1, MAX_VERSION, "versions start at 1") or 0

    def _expires(self, d: Mapping[str, Any]) -> datetime | None:
        if "expires" not in d:
            return None
        return self.utc_time(d["expires"], "expires")

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
        self.keys(m, path, required=_SERVICE_REQUIRED, optional=_SERVICE_OPTIONAL + _SERVICE_OPTIONAL_VOLUMES)
        name = self._service_name(m, path)
        image = self._image(m, path)
        replicas = self._replicas(m, path)
        per_instance = False
        if "volume_per_instance" in m:
            per_instance = bool(self.boolean(m["volume_per_instance"], join_key(path, "volume_per_instance")))
        listen = self._listen(m, path)
        strategy = self._strategy(m, path, replicas)
        health = self._health(m, path)
        lifetime = None
        if "max_lifetime" in m:
            lifetime = self._duration(m["max_lifetime"], join_key(path, "max_lifetime"))
        env = self._env(m, path)
        resources = self._resources(m, path)
        userns = False
        if "user_namespace" in m:
            userns = bool(self.boolean(m["user_namespace"], join_key(path, "user_namespace")))
        keep = self._keep_previous(m, path)
        if len(self._problems) != before or name is None or image is None:
            return name, listen, None
        return (
            name,
            listen,
            Service(
                name=name,
                image=image,
                replicas=replicas,
                volume_per_instance=per_instance,
                listen=listen,
                strategy=strategy,
                health=health,
                max_lifetime=lifetime,
                env=env,
                resources=resources,
                user_namespace=userns,
                keep_previous=keep,
            ),
        )

    def _service_name(self, m: Mapping[str, Any], path: str) -> str | None:
        if "name" not in m:
            return None
        hint = "lowercase letters, digits and '-', at most 63 characters (a DNS label)"
        return self.matching(m["name"], join_key(path, "name"), _SERVICE_NAME, "service name", hint)

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
        hint = "a service runs at least one instance"
        return self.bounded(m["replicas"], join_key(path, "replicas"), 1, _MAX_REPLICAS, hint) or 1

    def _listen(self, m: Mapping[str, Any], path: str) -> ListenAddress | None:
        if "listen" not in m:
            return None
        return self.listen_address(m["listen"], join_key(path, "listen"))

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
                self.invalid(where, "step", raw, "an instance count (1) or a percentage (1% to 100%)")
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
        check = self.one_probe(h, where, _HEALTH_CHECKS, self.probe)
        interval = self._opt_duration(h, where, "interval", 2.0)
        grace = self._opt_duration(h, where, "grace", 0.0, positive=False)
        timeout = self._opt_duration(h, where, "timeout", 1.0)
        retries = 3
        if "retries" in h:
            retries = self.bounded(h["retries"], join_key(where, "retries"), 1, 100) or retries
        if check is None:
            return None
        return ServiceHealth(check=check, interval=interval, grace=grace, timeout=timeout, retries=retries)

    def _opt_duration(
        self, h: Mapping[str, Any], where: str, key: str, default: float, *, positive: bool = True
    ) -> float:
        if key not in h:
            return default
        got = self._duration(h[key], join_key(where, key), positive=positive)
        return default if got is None else got

    def _keep_previous(self, m: Mapping[str, Any], path: str) -> float | None:
        if "keep_previous" not in m:
            return None
        where = join_key(path, "keep_previous")
        keep = self._duration(m["keep_previous"], where)
        if keep is not None and keep > _MAX_KEEP_PREVIOUS:
            self.report(where, f"{format_duration(keep)} is longer than 24h", "e.g. keep_previous: 5m")
            return None
        return keep

    def _duration(self, value: object, where: str, *, positive: bool = True) -> float | None:
        examples = "500ms, 2s, 1m30s or 24h"
        return self.duration(value, where, example="5s", examples=examples, positive=positive, whole_ms=True)

    # -- env

    def _env(self, m: Mapping[str, Any], path: str) -> tuple[tuple[str, str], ...]:
        if "env" not in m:
            return ()
        return self.string_map(m["env"], join_key(path, "env"), key_check=self.env_key, skip_bad_keys=True)

    # -- resources

    def _resources(self, m: Mapping[str, Any], path: str) -> Resources | None:
        if "resources" not in m:
            return None
        where = join_key(path, "resources")
        r = self.mapping(m["resources"], where)
        if r is None:
            return None
        self.keys(r, where, optional=_RESOURCE_KEYS)
        if not r:
            self.report(where, "must not be empty", "e.g. resources: {memory: 256Mi, cpus: 0.5, pids: 256}")
            return None
        memory = self._memory(r["memory"], join_key(where, "memory")) if "memory" in r else None
        cpus = self._cpus(r["cpus"], join_key(where, "cpus")) if "cpus" in r else None
        pids = None
        if "pids" in r:
            hint = "the most processes and threads one instance may hold at once"
            pids = self.bounded(r["pids"], join_key(where, "pids"), MIN_PIDS, MAX_PIDS, hint)
        return Resources(memory=memory, cpu_millis=cpus, pids=pids)

    def _memory(self, value: object, where: str) -> int | None:
        hint = "a byte count or a number with a binary unit: 512Ki, 256Mi, 2Gi, 1Ti"
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            found = _MEMORY.match(value)
            if found is None:
                if re.fullmatch(r"[0-9]+(?:[kKmMgGtT]|[kKmMgGtT][bB])", value):
                    hint = "write a binary unit (Ki, Mi, Gi, Ti): "
                    hint += "'M' means 10^6 to some tools, 2^20 to others"
                self.invalid(where, "memory size", value, hint)
                return None
            size = int(found.group(1)) * _MEMORY_UNITS.get(found.group(2) or "", 1)
        else:
            self.wrong_type(where, value, "a memory size such as 256Mi")
            return None
        if not MIN_MEMORY <= size <= MAX_MEMORY:
            self.report(where, f"{format_memory(size)} is out of range (6Mi to 4Ti)")
            return None
        return size

    def _cpus(self, value: object, where: str) -> int | None:
        hint = "a number of CPUs such as 0.5 or 2, in steps of 0.001"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(where, value, "a number of CPUs such as 0.5", hint)
            return None
        if not (math.isfinite(value) and MIN_CPU_MILLIS <= value * 1000 <= MAX_CPU_MILLIS):
            self.report(where, f"{shown(str(value))[:32]} is out of range (0.01 to {MAX_CPU_MILLIS // 1000})")
            return None
        millis = round(value * 1000)
        if abs(value * 1000 - millis) > 1e-6:
            self.report(where, f"{value} is finer than a thousandth of a CPU", hint)
            return None
        return millis
