"""The OCI image config as kiln writes and reads it, and its ``dev.kiln.*`` label schema.

This module owns the build-to-run contract: the builder describes an image as an
:class:`ImageConfig` and writes it with :meth:`ImageConfig.to_dict` (serialized by
:func:`~manifests.canonical.canonical_json`); the agent reads the verified config document with
:meth:`ImageConfig.from_dict` (or :meth:`ImageConfig.from_bytes`) and never looks at the JSON again.

::

    ImageConfig          created, architecture, os, variant, rootfs.diff_ids, history, config:
      RunConfig          the OCI ``config`` object kiln uses: User, Env, Entrypoint, Cmd,
                         WorkingDir, ExposedPorts, Volumes, Labels (the other labels), and
        RunPolicy        the ``dev.kiln.*`` labels (:class:`KilnLabel`): read-only, user, writable,
                         volumes, ports, health, allow-setuid

The run-time policy labels hold text or canonical JSON: ``dev.kiln.read-only`` and
``dev.kiln.allow-setuid`` are ``"true"``/``"false"``; ``dev.kiln.user`` is a numeric ``uid:gid``;
``dev.kiln.writable`` and ``dev.kiln.volumes`` are JSON lists of normalized absolute paths outside
``/proc``, ``/dev`` and ``/sys``; ``dev.kiln.ports`` is a JSON list of ``PORT[/PROTO]`` strings;
``dev.kiln.health`` is a JSON object (:func:`health_from_json`).

A config the agent pulled was verified by digest, but it is still a document received from outside:
label JSON goes through :mod:`manifests.bounded` with small caps, every value is checked, and a bad
one is a :class:`~manifests.errors.DocumentError` naming the field or label. Unknown fields and
unknown labels are ignored (an image built by a newer kiln still runs).
"""

from __future__ import annotations

import enum
import math
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from manifests.bounded import JsonCaps, read_json, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, ParseError
from manifests.image import ExecCheck, HealthCheck, HttpCheck, TcpCheck
from manifests.vm import health_to_dict

__all__ = [
    "KilnLabel",
    "RunPolicy",
    "RunConfig",
    "History",
    "ImageConfig",
    "HEALTH_LABEL_MAX",
    "MAX_PATHS",
    "SYSTEM_MOUNTS",
    "health_from_json",
    "health_problems",
    "numeric_user",
    "read_health_label",
]

#: The most bytes of a ``dev.kiln.health`` label read.
HEALTH_LABEL_MAX: Final = 4096
#: The most paths (or ports) one list label may hold.
MAX_PATHS: Final = 64
#: Where the runtime mounts its own file systems: no label may put a path inside them.
SYSTEM_MOUNTS: Final = ("/proc", "/dev", "/sys")
_DOC_CAPS: Final = JsonCaps()
_LABEL_CAPS: Final = JsonCaps(max_bytes=64 * 1024, max_depth=4, max_number=32)
_MAX_ID: Final = 0xFFFFFFFE
_WHAT: Final = "image config"
_HEALTH_HINT: Final = (
    "the image's health check label is malformed; rebuild the image with a valid health check"
)
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")
_PATH = re.compile(r"/[\x21-\x7e]*")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]+")


class KilnLabel(enum.StrEnum):
    """The labels of the run-time policy; the ``dev.kiln.`` prefix is kiln's alone."""

    READ_ONLY = "dev.kiln.read-only"
    USER = "dev.kiln.user"
    WRITABLE = "dev.kiln.writable"
    VOLUMES = "dev.kiln.volumes"
    PORTS = "dev.kiln.ports"
    HEALTH = "dev.kiln.health"
    ALLOW_SETUID = "dev.kiln.allow-setuid"

    @property
    def where(self) -> str:
        """How errors name it: ``image config: label dev.kiln.ports``."""
        return f"{_WHAT}: label {self.value}"


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def _label_json(labels: Mapping[str, str], label: KilnLabel) -> Any:
    try:
        text = labels[label].encode("utf-8", "surrogatepass")
        return read_json(text, what=f"label {label}", caps=_LABEL_CAPS)
    except ParseError:
        raise DocumentError(f"{label.where}: not valid JSON") from None


def _paths(labels: Mapping[str, str], label: KilnLabel) -> tuple[str, ...]:
    if label not in labels:
        return ()
    value = _label_json(labels, label)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise DocumentError(f"{label.where}: expected a JSON list of paths")
    if len(value) > MAX_PATHS:
        raise DocumentError(f"{label.where}: more than {MAX_PATHS} paths")
    out: list[str] = []
    for p in value:
        if not p.startswith("/") or "\x00" in p or posixpath.normpath(p) != p or p == "/":
            raise DocumentError(f"{label.where}: {p!r} is not a normalized absolute path below /")
        if any(p == r or p.startswith(r + "/") for r in SYSTEM_MOUNTS):
            raise DocumentError(f"{label.where}: {p!r} is inside a system mount")
        if p in out:
            raise DocumentError(f"{label.where}: {p!r} is listed twice")
        out.append(p)
    return tuple(out)


def _ports(labels: Mapping[str, str]) -> tuple[str, ...]:
    label = KilnLabel.PORTS
    if label not in labels:
        return ()
    value = _label_json(labels, label)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise DocumentError(f"{label.where}: expected a JSON list of strings")
    if len(value) > MAX_PATHS:
        raise DocumentError(f"{label.where}: more than {MAX_PATHS} ports")
    for p in value:
        m = _PORT.fullmatch(p)
        if m is None or not 1 <= int(m.group(1)) <= 65535:
            raise DocumentError(f"{label.where}: {p!r} is not PORT or PORT/PROTO (tcp, udp, sctp)")
    return tuple(value)


def _bool(labels: Mapping[str, str], label: KilnLabel, default: bool) -> bool:
    text = labels.get(label)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise DocumentError(f"{label.where}: expected 'true' or 'false', got {text!r}")
    return text == "true"


def numeric_user(text: str, where: str) -> tuple[int, int]:
    """``uid[:gid]`` as numbers (``gid`` defaults to ``uid``); ``where`` names the field in errors."""
    uid_s, sep, gid_s = text.partition(":")
    if not sep:
        gid_s = uid_s
    if not (uid_s.isascii() and uid_s.isdigit() and gid_s.isascii() and gid_s.isdigit()):
        raise DocumentError(
            f"{_WHAT}: {where} {text!r} is not a numeric uid:gid",
            hint="kiln runs images with numeric users only (the root is never consulted for names)",
        )
    # Compare lengths first: int() refuses 4,300+ digits with a bare ValueError.
    too_long = max(len(uid_s), len(gid_s)) > len(str(_MAX_ID))
    uid, gid = (0, 0) if too_long else (int(uid_s), int(gid_s))
    if too_long or uid > _MAX_ID or gid > _MAX_ID:
        raise DocumentError(f"{_WHAT}: {where} {text!r} is out of range")
    return uid, gid


# -- the health check label ----------------------------------------------------------------------


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _check_port(v: object) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool):
        return f"must be an integer, not {_kind(v)}"
    return None if 1 <= v <= 65535 else "must be an integer from 1 to 65535"


def _check_command(v: object) -> str | None:
    ok = isinstance(v, list | tuple) and bool(v) and all(isinstance(c, str) for c in v)
    return None if ok else "must be a non-empty list of strings"


def _check_path(v: object) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_kind(v)}"
    if _PATH.fullmatch(v) and len(v) <= 2048:
        return None
    return f"must start with '/' and hold printable ASCII without spaces, not {v!r}"


def _check_host(v: object) -> str | None:
    if isinstance(v, str) and _HOST.fullmatch(v) and len(v) <= 255:
        return None
    return f"not a valid Host header value: {v!r}"


def _seconds(top: float) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if not isinstance(v, int | float) or isinstance(v, bool):
            return f"must be a number, not {_kind(v)}"
        if math.isfinite(v) and 0 < v <= top:
            return None
        return f"must be a number of seconds above 0 and at most {top:g}"

    return check


def _check_retries(v: object) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool):
        return f"must be an integer, not {_kind(v)}"
    return None if 1 <= v <= 100 else "must be an integer from 1 to 100"


_CHECKS: Final[dict[str, Callable[[object], str | None]]] = {
    "port": _check_port,
    "command": _check_command,
    "path": _check_path,
    "host": _check_host,
    "interval": _seconds(3600.0),
    "timeout": _seconds(600.0),
    "retries": _check_retries,
}
_KINDS: Final = ("http", "tcp", "exec")


def health_problems(kind: str, fields: Mapping[str, Any]) -> list[str]:
    """Every problem with the health check ``fields`` present, in a fixed order, as ``key: message``
    (``port`` is for ``http``/``tcp`` checks, ``command`` for ``exec``; ``host`` is the agent's)."""
    skip = "port" if kind == "exec" else "command"
    out: list[str] = []
    for key, check in _CHECKS.items():
        if key == skip or key not in fields:
            continue
        problem = check(fields[key])
        if problem is not None:
            out.append(f"{key}: {problem}")
    return out


def health_from_json(value: Mapping[str, Any], *, what: str = f"label {KilnLabel.HEALTH}") -> HealthCheck:
    """The ``dev.kiln.health`` object (:func:`~manifests.vm.health_to_dict`'s shape) as a
    :class:`~manifests.image.HealthCheck`. Missing ``path``, ``interval``, ``timeout``, ``retries``
    take their defaults; unknown keys are ignored. Every problem is reported at once."""
    kind = value.get("type")
    if kind not in _KINDS:
        raise _health_error(what, f"type: must be one of http, tcp, exec, not {kind!r}")
    fields = {key: value[key] for key in ("path", "interval", "timeout", "retries") if key in value}
    if kind == "exec":
        fields["command"] = value.get("command")
    else:
        fields["port"] = value.get("port")
    problems = health_problems(str(kind), fields)
    if problems:
        raise _health_error(what, "; ".join(problems))
    check: HttpCheck | TcpCheck | ExecCheck
    if kind == "http":
        check = HttpCheck(port=fields["port"], path=fields.get("path", "/"))
    elif kind == "tcp":
        check = TcpCheck(port=fields["port"])
    else:
        check = ExecCheck(command=tuple(fields["command"]))
    default = HealthCheck(check=check)
    return HealthCheck(
        check=check,
        interval=float(fields.get("interval", default.interval)),
        timeout=float(fields.get("timeout", default.timeout)),
        retries=fields.get("retries", default.retries),
    )


def read_health_label(text: str | bytes, *, what: str = f"label {KilnLabel.HEALTH}") -> HealthCheck:
    """The ``dev.kiln.health`` label's text, read as untrusted input: at most
    :data:`HEALTH_LABEL_MAX` bytes of bounded JSON holding one object."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > HEALTH_LABEL_MAX:
        raise _health_error(what, f"is {len(raw)} bytes, more than {HEALTH_LABEL_MAX}")
    try:
        value = read_json(raw, what=what, caps=_LABEL_CAPS)
    except ParseError as exc:
        raise DocumentError(exc.message, hint=_HEALTH_HINT) from None
    if not isinstance(value, dict):
        raise _health_error(what, f"must be a JSON object, not {type(value).__name__}")
    return health_from_json(value, what=what)


def _health_error(what: str, message: str) -> DocumentError:
    return DocumentError(f"{what}: {message}", hint=_HEALTH_HINT)


# -- the documents ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPolicy:
    """The run-time policy in the ``dev.kiln.*`` labels. The defaults are what an image without
    labels gets: a read-only root, no writable paths, no volumes, no setuid files."""

    read_only: bool = True
    user: tuple[int, int] | None = None  # numeric uid, gid
    writable: tuple[str, ...] = ()  # tmpfs mounts
    volumes: tuple[str, ...] = ()  # persistent directories
    ports: tuple[str, ...] = ()  # "8080/tcp", in the manifest's order
    health: HealthCheck | None = None
    allow_setuid: bool = False

    def to_labels(self) -> dict[str, str]:
        """The labels, as the builder records them (lists always, ``allow-setuid`` only when set)."""
        labels = {
            KilnLabel.READ_ONLY.value: "true" if self.read_only else "false",
            KilnLabel.WRITABLE.value: _json(list(self.writable)),
            KilnLabel.VOLUMES.value: _json(list(self.volumes)),
            KilnLabel.PORTS.value: _json(list(self.ports)),
        }
        if self.user is not None:
            labels[KilnLabel.USER.value] = "{}:{}".format(*self.user)
        if self.health is not None:
            labels[KilnLabel.HEALTH.value] = _json(health_to_dict(self.health))
        if self.allow_setuid:
            labels[KilnLabel.ALLOW_SETUID.value] = "true"
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> RunPolicy:
        """From an image's labels (the others are ignored); a bad value names its label."""
        user = labels.get(KilnLabel.USER)
        writable = _paths(labels, KilnLabel.WRITABLE)
        volumes = _paths(labels, KilnLabel.VOLUMES)
        both = sorted(set(writable) & set(volumes))
        if both:
            raise DocumentError(f"{_WHAT}: {both[0]!r} is both writable (tmpfs) and a volume")
        health = labels.get(KilnLabel.HEALTH)
        return cls(
            read_only=_bool(labels, KilnLabel.READ_ONLY, True),
            user=None if user is None else numeric_user(user, f"label {KilnLabel.USER}"),
            writable=writable,
            volumes=volumes,
            ports=_ports(labels),
            health=None if health is None else read_health_label(health, what=KilnLabel.HEALTH.where),
            allow_setuid=_bool(labels, KilnLabel.ALLOW_SETUID, False),
        )

    def port(self) -> int | None:
        """The port the service listens on: the first of ``ports``."""
        m = _PORT.fullmatch(self.ports[0]) if self.ports else None
        return int(m.group(1)) if m is not None else None


def _strings(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DocumentError(f"{_WHAT}: config.{key} must be a list of strings")
    return tuple(value)


def _keys(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DocumentError(f"{_WHAT}: config.{key} must be an object")
    return tuple(value)


def _env(cfg: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    env = cfg.get("Env")
    if env is None:
        return ()
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise DocumentError(f"{_WHAT}: config.Env must be a list of NAME=value strings")
    return tuple((k, v) for k, _, v in (e.partition("=") for e in env))


def _optional_str(cfg: Mapping[str, Any], key: str) -> str | None:
    value = cfg.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DocumentError(f"{_WHAT}: config.{key} must be a string")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """The OCI image config's ``config`` object: the fields kiln uses, and the run-time policy."""

    user: str | None = None  # OCI ``User``; kiln writes the numeric uid:gid of ``policy.user``
    env: tuple[tuple[str, str], ...] = ()  # (NAME, value), in order
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # every label but the run-time policy's
    policy: RunPolicy = RunPolicy()

    def to_dict(self) -> dict[str, Any]:
        labels = dict(self.labels)
        labels.update(self.policy.to_labels())
        cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in self.env], "Labels": labels}
        if self.user is not None:
            cfg["User"] = self.user
        if self.entrypoint:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            cfg["Cmd"] = list(self.cmd)
        if self.working_dir:
            cfg["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            cfg["Volumes"] = {v: {} for v in self.volumes}
        return cfg

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> RunConfig:
        labels = cfg.get("Labels")
        if labels is None:
            labels = {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise DocumentError(f"{_WHAT}: config.Labels must map strings to strings")
        working_dir = _optional_str(cfg, "WorkingDir")
        if working_dir is not None and (not working_dir.startswith("/") or "\x00" in working_dir):
            raise DocumentError(f"{_WHAT}: config.WorkingDir must be an absolute path")
        policy_keys = set(KilnLabel)
        return cls(
            user=_optional_str(cfg, "User"),
            env=_env(cfg),
            entrypoint=_strings(cfg, "Entrypoint"),
            cmd=_strings(cfg, "Cmd"),
            working_dir=working_dir,
            exposed_ports=_keys(cfg, "ExposedPorts"),
            volumes=_keys(cfg, "Volumes"),
            labels=tuple((k, v) for k, v in labels.items() if k not in policy_keys),
            policy=RunPolicy.from_labels(labels),
        )

    def ids(self) -> tuple[int, int]:
        """The numeric uid and gid to run as: the policy's user, else ``User``, else root (0:0,
        which the agent refuses unless a release allows it)."""
        if self.policy.user is not None:
            return self.policy.user
        if self.user is not None:
            return numeric_user(self.user, "config.User")
        return 0, 0

    def args(self) -> tuple[str, ...]:
        """``Entrypoint`` + ``Cmd``: what the instance runs."""
        return (*self.entrypoint, *self.cmd)


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    created: str | None = None
    created_by: str | None = None
    comment: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"created": self.created, "created_by": self.created_by, "comment": self.comment}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    """An OCI image config (``application/vnd.oci.image.config.v1+json``)."""

    architecture: str = ""
    os: str = ""
    variant: str | None = None
    created: str | None = None  # RFC 3339; kiln writes SOURCE_DATE_EPOCH, never the clock
    config: RunConfig = RunConfig()
    diff_ids: tuple[Digest, ...] = ()
    history: tuple[History, ...] = ()

    @property
    def policy(self) -> RunPolicy:
        return self.config.policy

    def to_dict(self) -> dict[str, Any]:
        """The document (serialize it with :func:`~manifests.canonical.canonical_json`)."""
        doc: dict[str, Any] = {}
        if self.created is not None:
            doc["created"] = self.created
        doc.update(
            architecture=self.architecture,
            os=self.os,
            config=self.config.to_dict(),
            rootfs={"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]},
            history=[h.to_dict() for h in self.history],
        )
        if self.variant:
            doc["variant"] = self.variant
        return doc

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ImageConfig:
        """From a received config document (already read by :mod:`manifests.bounded`)."""
        cfg = doc.get("config")
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, Mapping):
            raise DocumentError(f"{_WHAT}: 'config' must be an object")
        return cls(
            architecture=_top_str(doc, "architecture") or "",
            os=_top_str(doc, "os") or "",
            variant=_top_str(doc, "variant"),
            created=_top_str(doc, "created"),
            config=RunConfig.from_dict(cfg),
            diff_ids=_diff_ids(doc),
            history=_history(doc),
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, caps: JsonCaps = _DOC_CAPS) -> ImageConfig:
        """From the config blob's bytes, read within ``caps``."""
        return cls.from_dict(read_json_object(data, what=_WHAT, caps=caps))


def _top_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise DocumentError(f"{_WHAT}: {key!r} must be a string")
    return value


def _diff_ids(doc: Mapping[str, Any]) -> tuple[Digest, ...]:
    rootfs = doc.get("rootfs")
    if rootfs is None:
        return ()
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise DocumentError(f"{_WHAT}: rootfs.diff_ids must be a list of digests")
    try:
        return tuple(Digest.parse(d) for d in ids)
    except DocumentError as exc:
        raise DocumentError(f"{_WHAT}: rootfs.diff_ids: {exc.message}") from None


def _history(doc: Mapping[str, Any]) -> tuple[History, ...]:
    items = doc.get("history")
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(h, Mapping) for h in items):
        raise DocumentError(f"{_WHAT}: 'history' must be a list of objects")
    out = []
    for h in items:
        fields = {k: h.get(k) for k in ("created", "created_by", "comment")}
        if not all(v is None or isinstance(v, str) for v in fields.values()):
            raise DocumentError(f"{_WHAT}: history: created, created_by and comment must be strings")
        out.append(History(**fields))
    return tuple(out)
