"""The deploy agent's configuration: where releases come from, what to trust, where state lives.

Written by people as YAML (or TOML)::

    apiVersion: kiln.dev/v1
    kind: AgentConfig
    source: oci:/var/lib/kiln/releases        # or HOST[:PORT]/REPO: where release artifacts are
    channel: production                       # the channel this host follows
    trust_root: /etc/kiln/root.yaml           # the first trust root (STATE keeps the current one)
    state: /var/lib/kiln/agent                # journal, content store, roots, bundles, logs
    runtime: runc                             # runc (default) | docker
    docker_host: unix:///run/docker.sock      # with runtime: docker
    dataplane: embedded                       # embedded (default) | haproxy: what holds the addresses
    poll_interval: 5s                         # between reconciles (a poll is one HEAD)
    group: default                            # the host's rollout group (reported in status)
    max_attempts: 3                           # tries of one release version before giving up on it
    insecure: false                           # plain http to loopback registries (tests, demos)
    status_listen: 127.0.0.1:9100             # optional: status endpoint on loopback TCP too
    limits: {request_deadline: 5m}            # optional: caps and timeouts (manifests.limits)
    images:                                   # where each repository's images are fetched from
      - {repository: localhost/python-web, location: "oci:/var/lib/kiln/registry/python-web"}
      - {repository: registry.example/team/api, location: "127.0.0.1:5000/team/api"}

A repository with no ``images`` entry is fetched from the repository itself (a registry
location). Relative paths are taken relative to the configuration file's directory.

:func:`load_agent_config` reports every problem at once (``FILE:LINE:COL: path: message (hint)``).
"""

from __future__ import annotations

import enum
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from manifests.fields import LOWER_NAME, FieldChecker, ListenAddress, parse_listen_address
from manifests.image import API_VERSION
from manifests.limits import AgentLimits, limits_from_mapping
from manifests.source import SourceDocument, join_index, join_key, load_document, parse_document

__all__ = [
    "KIND",
    "RuntimeKind",
    "DataPlaneKind",
    "ImageLocation",
    "AgentConfig",
    "FleetLink",
    "load_agent_config",
    "parse_agent_config",
]

KIND = "AgentConfig"
MAX_CONFIG_BYTES = 256 * 1024
_REQUIRED = ("apiVersion", "kind", "source", "channel", "trust_root", "state")
_OPTIONAL = (
    "runtime",
    "docker_host",
    "dataplane",
    "poll_interval",
    "group",
    "max_attempts",
    "insecure",
    "status_listen",
    "images",
    "limits",
    "fleet",
)
_NAME_HINT = "lowercase letters, digits, '.', '_', '-'"
_HTTP_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?/?$")
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetLink:
    """How this host coordinates with its fleet: etcd directly (waves, slots, halts) or a FleetLock
    server (slots only). ``host`` names it in the fleet (default: the machine's host name)."""

    etcd: str | None = None
    fleetlock: str | None = None
    name: str = "default"
    host: str = ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "host": self.host}
        if self.etcd is not None:
            out["etcd"] = self.etcd
        if self.fleetlock is not None:
            out["fleetlock"] = self.fleetlock
        return out


class RuntimeKind(enum.StrEnum):
    RUNC = "runc"
    DOCKER = "docker"


class DataPlaneKind(enum.StrEnum):
    """What holds the service addresses (outside the agent process; ``docs/adr/0010-data-plane.md``)."""

    EMBEDDED = "embedded"  # kiln's forwarder in a process of its own
    HAPROXY = "haproxy"  # Debian's HAProxy (master-worker, seamless reloads)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageLocation:
    """Images of ``repository`` are read from ``location`` (``oci:DIR`` or ``HOST/REPO``)."""

    repository: str
    location: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    source: str
    channel: str
    trust_root: Path
    state: Path
    runtime: RuntimeKind = RuntimeKind.RUNC
    docker_host: str | None = None
    dataplane: DataPlaneKind = DataPlaneKind.EMBEDDED
    poll_interval: float = 5.0  # cheap: a poll asks only where the channel tag points
    group: str = "default"
    max_attempts: int = 3
    insecure: bool = False
    status_listen: ListenAddress | None = None
    images: tuple[ImageLocation, ...] = ()
    limits: AgentLimits = field(default_factory=AgentLimits)
    fleet: FleetLink | None = None

    def location_for(self, repository: str) -> str:
        """Where the images of ``repository`` are read from (the repository itself by default)."""
        for entry in self.images:
            if entry.repository == repository:
                return entry.location
        return repository

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "source": self.source,
            "channel": self.channel,
            "trust_root": str(self.trust_root),
            "state": str(self.state),
            "runtime": self.runtime.value,
            "dataplane": self.dataplane.value,
            "poll_interval": f"{self.poll_interval:g}s",
            "group": self.group,
            "max_attempts": self.max_attempts,
            "insecure": self.insecure,
            "images": [{"repository": i.repository, "location": i.location} for i in self.images],
        }
        if self.docker_host is not None:
            out["docker_host"] = self.docker_host
        if self.status_listen is not None:
            out["status_listen"] = str(self.status_listen)
        if self.limits != AgentLimits():
            default = AgentLimits().to_dict()
            out["limits"] = {k: v for k, v in self.limits.to_dict().items() if default[k] != v}
        if self.fleet is not None:
            out["fleet"] = self.fleet.to_dict()
        return out


class _Schema(FieldChecker):
    def __init__(self, doc: SourceDocument, base: Path) -> None:
        super().__init__(doc)
        self.base = base

    def config(self) -> AgentConfig:
        d = self.doc.data
        self.keys(d, "", required=_REQUIRED, optional=_OPTIONAL)
        self.header(d, KIND, wording="unsupported value", escape=False)
        source = self._text(d, "source")
        channel = self._channel(d)
        trust_root = self._path(d, "trust_root")
        state = self._path(d, "state")
        runtime, docker_host = self._runtime(d)
        poll = self._poll_interval(d)
        group = self._group(d)
        attempts = self.bounded(d["max_attempts"], "max_attempts", 1, 100) if "max_attempts" in d else None
        insecure = bool(self.boolean(d["insecure"], "insecure")) if "insecure" in d else False
        listen = self._listen(d["status_listen"]) if "status_listen" in d else None
        dataplane = self._dataplane(d, runtime)
        images = self._images(d)
        limits = self._limits(d)
        fleet = self._fleet(d["fleet"]) if "fleet" in d else None
        self.finish()
        return AgentConfig(
            source=self._located(source or ""),
            channel=channel or "",
            trust_root=trust_root or Path(),
            state=state or Path(),
            runtime=runtime,
            docker_host=docker_host,
            dataplane=dataplane,
            poll_interval=poll,
            group=group,
            max_attempts=attempts or 3,
            insecure=insecure,
            status_listen=listen,
            images=images,
            limits=limits,
            fleet=fleet,
        )

    def _fleet(self, value: object) -> FleetLink | None:
        m = self.mapping(value, "fleet")
        if m is None or not self.keys(m, "fleet", optional=("etcd", "fleetlock", "name", "host")):
            return None
        urls = {}
        for key in ("etcd", "fleetlock"):
            if key in m:
                text = self.string(m[key], f"fleet.{key}")
                if text is not None and not _HTTP_URL.match(text):
                    self.invalid(f"fleet.{key}", "URL", text, "http://HOST:PORT or https://HOST:PORT")
                elif text is not None:
                    urls[key] = text.rstrip("/")
        if ("etcd" in m) == ("fleetlock" in m):
            self.report("fleet", "name exactly one of etcd and fleetlock")
            return None
        name = "default"
        if "name" in m:
            name = self.matching(m["name"], "fleet.name", LOWER_NAME, "fleet name", _NAME_HINT) or name
        host = socket.gethostname()
        if "host" in m:
            got = self.matching(
                m["host"], "fleet.host", _HOST_ID, "host id", "letters, digits, '.', '_', '-'"
            )
            host = got or host
        if len(urls) != 1:
            return None
        return FleetLink(etcd=urls.get("etcd"), fleetlock=urls.get("fleetlock"), name=name, host=host)

    def _located(self, location: str) -> str:
        """A relative ``oci:DIR`` is relative to the config file's directory."""
        if location.startswith("oci:") and not Path(location[4:]).is_absolute():
            return f"oci:{self.base / location[4:]}"
        return location

    def _channel(self, d: dict[str, object]) -> str | None:
        channel = self._text(d, "channel")
        if channel and not LOWER_NAME.match(channel):
            self.report("channel", f"invalid channel '{channel}'", _NAME_HINT)
        return channel

    def _runtime(self, d: dict[str, object]) -> tuple[RuntimeKind, str | None]:
        """The runtime adapter, and the engine address the docker one needs."""
        runtime = RuntimeKind.RUNC
        if "runtime" in d:
            chosen = self.choice(d["runtime"], "runtime", [k.value for k in RuntimeKind])
            runtime = RuntimeKind(chosen) if chosen is not None else runtime
        docker_host = self._text(d, "docker_host") if "docker_host" in d else None
        if runtime is RuntimeKind.DOCKER and docker_host is None and "docker_host" not in d:
            self.report("docker_host", "missing: runtime docker needs the engine's address", at="runtime")
        return runtime, docker_host

    def _poll_interval(self, d: dict[str, object]) -> float:
        if "poll_interval" not in d:
            return 30.0
        # a bare number is refused as "expected a string", as this document always has
        text = self.string(d["poll_interval"], "poll_interval")
        if text is None:
            return 30.0
        return self.duration(text, "poll_interval", examples="500ms, 30s or 5m", escape=False) or 30.0

    def _group(self, d: dict[str, object]) -> str:
        if "group" not in d:
            return "default"
        text = self.string(d["group"], "group")
        if text is not None and not LOWER_NAME.match(text):
            self.report("group", f"invalid group '{text}'", _NAME_HINT)
            return "default"
        return text or "default"

    def _limits(self, d: dict[str, object]) -> AgentLimits:
        section = self.mapping(d["limits"], "limits") if "limits" in d else None
        return limits_from_mapping(self, section, "limits") if section is not None else AgentLimits()

    def _dataplane(self, d: dict[str, object], runtime: RuntimeKind) -> DataPlaneKind:
        if "dataplane" not in d:
            return DataPlaneKind.EMBEDDED
        picked = self.choice(d["dataplane"], "dataplane", [k.value for k in DataPlaneKind])
        dataplane = DataPlaneKind(picked) if picked is not None else DataPlaneKind.EMBEDDED
        if dataplane is DataPlaneKind.HAPROXY and runtime is RuntimeKind.DOCKER:
            self.report(
                "dataplane",
                "haproxy cannot reach docker instances",
                "HAProxy enters named network namespaces only: use embedded with runtime docker",
            )
        return dataplane

    def _text(self, d: dict[str, object], key: str) -> str | None:
        if key not in d:
            return None
        text = self.string(d[key], key)
        if text is not None and not text.strip():
            self.report(key, "must not be empty")
            return None
        return text

    def _path(self, d: dict[str, object], key: str) -> Path | None:
        text = self._text(d, key)
        if text is None:
            return None
        path = Path(text)
        return path if path.is_absolute() else (self.base / path)

    def _listen(self, value: object) -> ListenAddress | None:
        text = self.string(value, "status_listen")
        if text is None:
            return None
        address = parse_listen_address(text)[0]
        if address is None or address.host != "127.0.0.1":
            self.report(
                "status_listen",
                f"invalid address '{text}'",
                "the status endpoint listens on loopback only: 127.0.0.1:PORT",
            )
            return None
        return address

    def _images(self, d: dict[str, object]) -> tuple[ImageLocation, ...]:
        if "images" not in d:
            return ()
        items = self.sequence(d["images"], "images", of=" of {repository, location}")
        if items is None:
            return ()
        out: list[ImageLocation] = []
        seen: dict[str, str] = {}
        for i, raw in enumerate(items):
            path = join_index("images", i)
            m = self.mapping(raw, path)
            if m is None or not self.keys(m, path, required=("repository", "location")):
                continue
            repo = self.string(m["repository"], join_key(path, "repository"))
            loc = self.string(m["location"], join_key(path, "location"))
            if repo is None or loc is None:
                continue
            if repo in seen:
                self.report(
                    join_key(path, "repository"),
                    f"repository '{repo}' is already mapped at {seen[repo]}",
                    "one location per repository",
                )
                continue
            seen[repo] = join_key(path, "repository")
            out.append(ImageLocation(repository=repo, location=self._located(loc)))
        return tuple(out)


def parse_agent_config(
    data: bytes, *, source: str, base: Path | None = None, fmt: str = "yaml"
) -> AgentConfig:
    """Parse an agent configuration people wrote; every problem at once as a ManifestError."""
    doc = parse_document(data, source=source, fmt=fmt, limit=MAX_CONFIG_BYTES)
    return _Schema(doc, base or Path.cwd()).config()


def load_agent_config(path: Path) -> AgentConfig:
    """Read and validate the agent configuration at ``path``."""
    doc = load_document(path, limit=MAX_CONFIG_BYTES)
    return _Schema(doc, path.resolve().parent).config()
