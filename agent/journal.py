"""The agent's journal: everything it must remember across a crash, in one atomically written file.

``STATE/journal.json`` is one canonical JSON document (:class:`JournalState`) replaced as a whole
by :meth:`Journal.commit`: temp file in the same directory, fsync, rename, fsync the directory
(:func:`manifests.atomic.atomic_write`). Every commit increases ``seq`` by one, so a reader can
tell two states apart and a test can count steps. A ``kill -9`` at any moment leaves either the
previous state or the new one on disk, never a mixture.

The agent writes its intent BEFORE acting: an instance id enters ``known`` before the runtime is
asked to start it and leaves it only after the runtime confirmed it gone; ``rollout`` is set before
the first new instance starts and cleared when the release is good or has been rolled back. On
start, the agent reconciles the runtime against this: any instance that is not ``serving`` is
stopped, and an interrupted rollout is rolled back (see :mod:`agent.reconcile`).

::

    seq               commits so far
    root_version      the trust root version in STATE/root.json
    highest           {version, payload_digest} of the highest release accepted (never goes down)
    good / previous   the current and the previous good release (rollback target)
    rollout           {to, from} while a release is being rolled out
    instances         the serving instances (what the forwarders point at), one record each
    known             every instance id that may exist in the runtime
    failures          per release version: attempts and the last reason
    last_refusal      the last refused release: reason, detail, version, time

Test instrumentation (off unless set): with ``KILN_AGENT_TEST_FREEZE_AFTER_COMMIT=N`` in its
environment, a process stops itself with ``SIGSTOP`` right after its N-th commit, so that a crash
test can ``SIGKILL`` it at exactly that point (``tests/agent/test_crash*.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from manifests.atomic import atomic_write
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.errors import DocumentError
from manifests.files import open_regular, read_regular

__all__ = [
    "FREEZE_AFTER_COMMIT_ENV",
    "JOURNAL_FILE",
    "MAX_JOURNAL_BYTES",
    "JournalError",
    "JournalDamaged",
    "ReleaseRef",
    "InstanceRecord",
    "Failure",
    "Refusal",
    "JournalState",
    "Journal",
    "SOURCE_FILE",
    "SourceState",
    "read_source_state",
    "write_source_state",
]

JOURNAL_FILE = "journal.json"
MAX_JOURNAL_BYTES = 16 * 1024 * 1024
_FORMAT = 1
# The journal is the agent's own file, but it is read back after crashes and disk trouble: read
# with the bounded reader so no damage raises anything but a JournalError.
_CAPS = JsonCaps(max_bytes=MAX_JOURNAL_BYTES, max_depth=16, max_number=64)
FREEZE_AFTER_COMMIT_ENV = "KILN_AGENT_TEST_FREEZE_AFTER_COMMIT"


class JournalError(AgentError):
    """The journal cannot be read or is not a journal this agent wrote."""


class JournalDamaged(JournalError):
    """The journal's bytes are damaged (not a newer format): :class:`Journal` may set it aside."""


# -- typed reading of the journal's fields ------------------------------------------------------
# Every reader below names the field it refuses (``instances[0].port``) and raises JournalDamaged;
# Journal._load puts the file's path in front. No KeyError/TypeError/ValueError ever escapes.

_MISSING: Any = object()


def _kind(value: object) -> str:
    """What a JSON value is, in words (for "expected ..., got ...")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _where(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(d: Mapping[str, Any], key: str, where: str, *, required: bool) -> Any:
    value = d.get(key, _MISSING)
    if value is _MISSING and required:
        raise JournalDamaged(f"{_where(where, key)}: missing")
    return None if value is _MISSING else value


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise JournalDamaged(f"{where}: expected an object, got {_kind(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise JournalDamaged(f"{where}: expected a list, got {_kind(value)}")
    return list(value)


def _typed(
    d: Mapping[str, Any], key: str, where: str, *, required: bool, types: tuple[type, ...], expected: str
) -> Any:
    """``d[key]`` if it is one of ``types`` (never a bool); absent and not ``required``: None."""
    value = _get(d, key, where, required=required)
    if value is None and not required:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        raise JournalDamaged(f"{_where(where, key)}: expected {expected}, got {_kind(value)}")
    return value


def _int(d: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    return _typed(d, key, where, required=required, types=(int,), expected="an integer")


def _num(d: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    value = _typed(d, key, where, required=required, types=(int, float), expected="a number")
    return None if value is None else float(value)


def _str(d: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    return _typed(d, key, where, required=required, types=(str,), expected="a string")


def _opt_list(d: Mapping[str, Any], key: str) -> list[Any]:
    """A list the journal always writes (an older one may lack it: absent is empty; null is not)."""
    return _list(d[key], key) if key in d else []


def _opt_obj(d: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any] | None:
    value = _get(d, key, where, required=False)
    return None if value is None else _obj(value, _where(where, key))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRef:
    """A release by version and payload digest (its payload is kept in ``STATE/releases``)."""

    version: int
    payload_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "payload_digest": self.payload_digest}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> ReleaseRef:
        d = _obj(d, where or "release")
        return cls(version=_int(d, "version", where), payload_digest=_str(d, "payload_digest", where))


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord:
    """One instance the agent started, and what it must still be (drift detection)."""

    id: str
    service: str
    release: int
    image: str  # the digest the release pins
    manifest: str  # the platform manifest unpacked (the root's name)
    fingerprint: str  # root_fingerprint of the unpacked root at start
    config: str  # digest of what the instance was started with (image, env, port)
    port: int | None  # the port the service listens on inside the instance
    started_at: float  # wall-clock seconds (max_lifetime)
    bundle: str | None = None  # digest of the runtime's bundle config (runc), if the runtime has one
    # The root the instance runs from, when it is not ``STATE/roots/<manifest hex>`` (a root set
    # aside by a drift repair until the instance stops).
    root: str | None = None
    # The health check the instance is watched with (``HealthSpec.to_dict()``), if it has one.
    health: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "service": self.service,
            "release": self.release,
            "image": self.image,
            "manifest": self.manifest,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "port": self.port,
            "started_at": self.started_at,
            "bundle": self.bundle,
        }
        if self.root is not None:
            out["root"] = self.root
        if self.health is not None:
            out["health"] = dict(self.health)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> InstanceRecord:
        d = _obj(d, where or "instance")
        health = _opt_obj(d, "health", where)
        return cls(
            id=_str(d, "id", where),
            service=_str(d, "service", where),
            release=_int(d, "release", where),
            image=_str(d, "image", where),
            manifest=_str(d, "manifest", where),
            fingerprint=_str(d, "fingerprint", where),
            config=_str(d, "config", where),
            port=_int(d, "port", where, required=False),
            started_at=_num(d, "started_at", where),
            bundle=_str(d, "bundle", where, required=False),
            root=_str(d, "root", where, required=False),
            health=dict(health) if health is not None else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    version: int
    attempts: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "attempts": self.attempts, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> Failure:
        d = _obj(d, where or "failure")
        return cls(
            version=_int(d, "version", where),
            attempts=_int(d, "attempts", where),
            reason=_str(d, "reason", where),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    reason: str
    detail: str
    version: int | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "version": self.version, "at": self.at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> Refusal:
        d = _obj(d, where or "refusal")
        return cls(
            reason=_str(d, "reason", where),
            detail=_str(d, "detail", where),
            version=_int(d, "version", where, required=False),
            at=_num(d, "at", where),
        )


def _ref(d: Mapping[str, Any], key: str, where: str = "") -> ReleaseRef | None:
    """The release at ``d[key]``: null or absent is none; anything else must be a release."""
    value = _get(d, key, where, required=False)
    return None if value is None else ReleaseRef.from_dict(value, _where(where, key))


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalState:
    seq: int = 0
    root_version: int | None = None
    highest: ReleaseRef | None = None
    good: ReleaseRef | None = None
    previous: ReleaseRef | None = None
    rollout_to: ReleaseRef | None = None
    rollout_from: ReleaseRef | None = None
    instances: tuple[InstanceRecord, ...] = ()
    known: tuple[str, ...] = ()
    failures: tuple[Failure, ...] = ()
    last_refusal: Refusal | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- queries

    def serving(self, service: str) -> tuple[InstanceRecord, ...]:
        return tuple(i for i in self.instances if i.service == service)

    def failure(self, version: int) -> Failure | None:
        return next((f for f in self.failures if f.version == version), None)

    @property
    def rolling_out(self) -> bool:
        return self.rollout_to is not None

    # -- updates (new values; nothing is mutated)

    def with_known(self, *ids: str) -> JournalState:
        return replace(self, known=tuple(sorted(set(self.known) | set(ids))))

    def without_known(self, *ids: str) -> JournalState:
        gone = set(ids)
        return replace(self, known=tuple(i for i in self.known if i not in gone))

    def with_service(self, service: str, records: tuple[InstanceRecord, ...]) -> JournalState:
        others = tuple(i for i in self.instances if i.service != service)
        return replace(self, instances=(*others, *records))

    def with_failure(self, version: int, reason: str) -> JournalState:
        before = self.failure(version)
        attempts = (before.attempts if before is not None else 0) + 1
        rest = tuple(f for f in self.failures if f.version != version)
        entry = Failure(version=version, attempts=attempts, reason=reason)
        return replace(self, failures=tuple(sorted((*rest, entry), key=lambda f: f.version))[-32:])

    # -- serialization

    def to_dict(self) -> dict[str, Any]:
        def opt(r: ReleaseRef | None) -> dict[str, Any] | None:
            return r.to_dict() if r is not None else None

        return {
            "format": _FORMAT,
            "seq": self.seq,
            "root_version": self.root_version,
            "highest": opt(self.highest),
            "good": opt(self.good),
            "previous": opt(self.previous),
            "rollout": (
                {"to": opt(self.rollout_to), "from": opt(self.rollout_from)}
                if self.rollout_to is not None
                else None
            ),
            "instances": [i.to_dict() for i in self.instances],
            "known": list(self.known),
            "failures": [f.to_dict() for f in self.failures],
            "last_refusal": self.last_refusal.to_dict() if self.last_refusal is not None else None,
            "extra": dict(self.extra),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JournalState:
        """The state in a parsed journal document, every field type-checked.

        A ``format`` that is an integer other than 1 raises :class:`JournalError` (a journal of
        another format, which is never set aside); anything else wrong (``format`` missing or not
        an integer, a field missing or of the wrong type) raises :class:`JournalDamaged` naming
        the field, e.g. ``instances[0].port: expected an integer, got a string``.
        """
        d = _obj(d, "journal")
        fmt = _int(d, "format")
        if fmt != _FORMAT:
            raise JournalError(f"format: journal format {fmt} is not {_FORMAT}")
        seq = _int(d, "seq")
        if seq < 0:
            raise JournalDamaged(f"seq: {seq} is negative")
        rollout = _opt_obj(d, "rollout")
        refusal = _opt_obj(d, "last_refusal")
        extra = _opt_obj(d, "extra")
        instances, known, failures = (_opt_list(d, key) for key in ("instances", "known", "failures"))
        for n, k in enumerate(known):
            if not isinstance(k, str):
                raise JournalDamaged(f"known[{n}]: expected a string, got {_kind(k)}")
        return cls(
            seq=seq,
            root_version=_int(d, "root_version", required=False),
            highest=_ref(d, "highest"),
            good=_ref(d, "good"),
            previous=_ref(d, "previous"),
            rollout_to=_ref(rollout, "to", "rollout") if rollout is not None else None,
            rollout_from=_ref(rollout, "from", "rollout") if rollout is not None else None,
            instances=tuple(InstanceRecord.from_dict(i, f"instances[{n}]") for n, i in enumerate(instances)),
            known=tuple(known),
            failures=tuple(Failure.from_dict(f, f"failures[{n}]") for n, f in enumerate(failures)),
            last_refusal=Refusal.from_dict(refusal, "last_refusal") if refusal is not None else None,
            extra=dict(extra) if extra is not None else {},
        )


class Journal:
    """``STATE/journal.json``: :attr:`state` is the last committed state."""

    def __init__(self, state_dir: Path, *, recover: bool = False) -> None:
        """Load ``STATE/journal.json``.

        A damaged journal raises :class:`JournalDamaged`; with ``recover`` (the agent at start,
        holding the state lock) it is renamed to ``journal.json.damaged-<time>`` instead, the
        state starts empty, and :attr:`damaged` says what was set aside and why, so that a
        damaged file never keeps the agent from starting. A journal of another format is never
        set aside (a newer agent wrote it): that still raises.
        """
        self.path = Path(state_dir) / JOURNAL_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.damaged: tuple[Path, str] | None = None
        try:
            self.state = self._load()
        except JournalDamaged as exc:
            if not recover:
                raise
            aside = self.path.with_name(f"{JOURNAL_FILE}.damaged-{time.time_ns()}")
            os.replace(self.path, aside)
            self.damaged = (aside, exc.message)
            self.state = JournalState()
        self._commits = 0
        self._lock = threading.RLock()  # commit and update (several rollouts commit at once)
        self._freeze_after = _freeze_point(os.environ.get(FREEZE_AFTER_COMMIT_ENV))

    def _load(self) -> JournalState:
        hint = "the journal is written atomically: restore it from a backup, or move it away to start over"
        try:
            with open_regular(self.path) as fh:
                data = fh.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            return JournalState()
        except DocumentError as exc:  # a directory, FIFO, device or link where the file belongs
            raise JournalDamaged(f"{exc.message}", hint=hint) from None
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc.strerror}") from exc
        if len(data) > MAX_JOURNAL_BYTES:
            raise JournalDamaged(f"{self.path}: larger than {MAX_JOURNAL_BYTES} bytes", hint=hint)
        try:
            doc = read_json_object(data, what=str(self.path), caps=_CAPS)
        except DocumentError as exc:
            message = exc.message.removeprefix(f"{self.path}: ")
            message = "not an object" if message.startswith("expected a JSON object") else message
            raise JournalDamaged(f"{self.path}: not a kiln agent journal ({message})", hint=hint) from None
        try:
            return JournalState.from_dict(doc)
        except JournalDamaged as exc:
            raise JournalDamaged(f"{self.path}: {exc.message}", hint=hint) from None
        except JournalError as exc:  # another format (a newer agent's): never set aside
            raise JournalError(f"{self.path}: {exc.message}") from None

    def commit(self, state: JournalState) -> JournalState:
        """Write ``state`` (with the next ``seq``) atomically and make it the current state."""
        with self._lock:
            new = replace(state, seq=self.state.seq + 1)
            atomic_write(self.path, new.to_bytes(), mode=0o600)
            self.state = new
            self._commits += 1
            if self._commits == self._freeze_after:  # test instrumentation (module docstring)
                os.kill(os.getpid(), signal.SIGSTOP)
            return new

    def update(self, change: Callable[[JournalState], JournalState]) -> JournalState:
        """Commit ``change(current state)``, with no other commit in between: what threads that
        commit concurrently (the rollouts of several services) use, so none loses another's."""
        with self._lock:
            return self.commit(change(self.state))


def _freeze_point(text: str | None) -> int | None:
    """The commit to stop after, from ``KILN_AGENT_TEST_FREEZE_AFTER_COMMIT`` (unset or bad: never)."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text) if int(text) > 0 else None


# -- the release source's state (its own small file: polling must not grow the journal's seq) ----

SOURCE_FILE = "source.json"
MAX_SOURCE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceState:
    """What ``kiln agent status`` shows about the release source: the last successful fetch (wall
    seconds) and the last error, with its reason (``auth``, ``unreachable``, ``not-found``,
    ``parse``). ``ok`` is whether the last fetch succeeded."""

    source: str = ""
    ok: bool | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_reason: str | None = None
    last_error_at: float | None = None

    def succeeded(self, source: str, at: float) -> SourceState:
        return replace(self, source=source, ok=True, last_success=at)

    def failed(self, source: str, reason: str, detail: str, at: float) -> SourceState:
        return replace(
            self, source=source, ok=False, last_error=detail, last_error_reason=reason, last_error_at=at
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "last_error_at": self.last_error_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceState:
        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        def text(key: str) -> str | None:
            v = d.get(key)
            return v if isinstance(v, str) else None

        ok = d.get("ok")
        return cls(
            source=text("source") or "",
            ok=ok if isinstance(ok, bool) else None,
            last_success=num("last_success"),
            last_error=text("last_error"),
            last_error_reason=text("last_error_reason"),
            last_error_at=num("last_error_at"),
        )


def read_source_state(state_dir: Path) -> SourceState:
    """``STATE/source.json`` (an empty state when it is missing or unreadable: it is only shown)."""
    path = Path(state_dir) / SOURCE_FILE
    try:
        doc = read_json_object(read_regular(path, MAX_SOURCE_BYTES), what=str(path))
    except (OSError, DocumentError):
        return SourceState()
    return SourceState.from_dict(doc)


def write_source_state(state_dir: Path, state: SourceState) -> None:
    atomic_write(Path(state_dir) / SOURCE_FILE, canonical_json(state.to_dict()), mode=0o600)
