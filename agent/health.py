"""Health checks for an instance, through the same connector the traffic switch uses.

A check reaches the instance with ``connect(timeout) -> socket`` (``agent.netns.connect_in_netns``
bound to the instance's namespace and the check's port; a plain loopback connect in tests), so a
check sees exactly what the forwarder would see.

::

    HealthSpec                 what to check: http (GET path, 200-399 pass) or tcp (connect), and how
                               often; from the image's ``dev.kiln.health`` label or its HealthCheck
    check_once(spec, connect, timeout) -> HealthResult(ok, detail, latency)     one bounded probe
    wait_healthy(spec, connect, grace=..., deadline=...) -> HealthResult
                               "after ``grace``, ``retries`` consecutive passes", within ``deadline``
    HealthWatch                continuous checking: consecutive passes/failures, HEALTHY/UNHEALTHY,
                               and whether health has *held* for a grace period
    HealthMonitor              every serving instance probed on its own cadence, in its own thread;
                               ``retries`` consecutive failures: ``on_unhealthy`` (out of rotation)

Nothing here sleeps or reads the clock except through injected ``clock``/``sleep`` callables, and
nothing raises for an unhealthy instance: a failed probe is a ``HealthResult(ok=False)``. The
response of an instance is untrusted: only its head is read, with a size cap and a deadline.

``exec`` checks (a command run inside the instance) cannot go through a connector; they are parsed
here, and the agent runs them with its runtime by passing a ``probe`` of its own.
"""

from __future__ import annotations

import contextlib
import enum
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.errors import AgentError
from manifests.errors import KilnError
from manifests.image import ExecCheck, HealthCheck, HttpCheck, TcpCheck
from manifests.imageconfig import health_from_json, health_problems, read_health_label

__all__ = [
    "MAX_RESPONSE_HEAD",
    "Clock",
    "Connector",
    "HealthError",
    "HealthResult",
    "HealthSpec",
    "HealthState",
    "HealthWatch",
    "HealthMonitor",
    "MonitorTarget",
    "Probe",
    "ProbeKind",
    "Sleep",
    "check_once",
    "wait_healthy",
]

#: The most bytes of an HTTP response (status line + headers) a check reads.
MAX_RESPONSE_HEAD: Final = 16 * 1024

_USER_AGENT: Final = "kiln-agent"
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\x09\x20-\x7e\x80-\xff]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL: Final = "dev.kiln.health label"

Connector = Callable[[float], socket.socket]
Clock = Callable[[], float]
Sleep = Callable[[float], None]


class HealthError(AgentError):
    """A health check cannot be run as asked (an exec check without a runtime probe)."""


class ProbeKind(enum.StrEnum):
    HTTP = "http"  # GET path; status 200-399 passes
    TCP = "tcp"  # the connect succeeding passes
    EXEC = "exec"  # a command inside the instance; run by the runtime, not through a connector

    @property
    def uses_connector(self) -> bool:
        return self is not ProbeKind.EXEC


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSpec:
    """What to check and how often. ``port`` is for the caller's connector (and the Host header)."""

    kind: ProbeKind
    port: int | None = None
    path: str = "/"
    host: str = "localhost"
    command: tuple[str, ...] = ()
    interval: float = 2.0
    timeout: float = 1.0
    retries: int = 3

    def __post_init__(self) -> None:
        problems = _spec_problems(self)
        if problems:
            raise HealthError("invalid health check: " + "; ".join(problems))

    @classmethod
    def http(cls, port: int, path: str = "/", **kw: Any) -> HealthSpec:
        return cls(kind=ProbeKind.HTTP, port=port, path=path, **kw)

    @classmethod
    def tcp(cls, port: int, **kw: Any) -> HealthSpec:
        return cls(kind=ProbeKind.TCP, port=port, **kw)

    @classmethod
    def from_check(cls, health: HealthCheck) -> HealthSpec:
        """From an image manifest's validated health check."""
        check = health.check
        command: tuple[str, ...]
        port: int | None
        if isinstance(check, HttpCheck):
            kind, port, path, command = ProbeKind.HTTP, check.port, check.path, ()
        elif isinstance(check, TcpCheck):
            kind, port, path, command = ProbeKind.TCP, check.port, "/", ()
        elif isinstance(check, ExecCheck):
            kind, port, path, command = ProbeKind.EXEC, None, "/", check.command
        else:  # pragma: no cover - closed union
            raise HealthError(f"unsupported health check {type(check).__name__}")
        return cls(
            kind=kind,
            port=port,
            path=path,
            command=command,
            interval=health.interval,
            timeout=health.timeout,
            retries=health.retries,
        )

    @classmethod
    def from_label(cls, text: str | bytes) -> HealthSpec:
        """From the ``dev.kiln.health`` image config label, read as untrusted input by
        :func:`manifests.imageconfig.read_health_label` (which owns the label's schema)."""
        return cls.from_check(read_health_label(text, what=_LABEL))

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> HealthSpec:
        """From :meth:`to_dict` (e.g. the agent's journal); a malformed one is a DocumentError."""
        return cls.from_check(health_from_json(value, what=_LABEL))

    def to_dict(self) -> dict[str, Any]:
        """The ``dev.kiln.health`` label's shape (the builder writes the same keys)."""
        out: dict[str, Any] = {"type": str(self.kind)}
        if self.kind is ProbeKind.HTTP:
            out.update(port=self.port, path=self.path)
        elif self.kind is ProbeKind.TCP:
            out["port"] = self.port
        else:
            out["command"] = list(self.command)
        out.update(interval=self.interval, timeout=self.timeout, retries=self.retries)
        return out


def _spec_problems(spec: HealthSpec) -> list[str]:
    fields = {
        "port": spec.port,
        "command": spec.command,
        "path": spec.path,
        "host": spec.host,
        "interval": spec.interval,
        "timeout": spec.timeout,
        "retries": spec.retries,
    }
    return health_problems(spec.kind, fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthResult:
    ok: bool
    detail: str  # one line: "HTTP 200 OK", "connect failed: ...", "timed out after 1s ..."
    latency: float  # seconds the probe took
    # The HTTP status the instance answered with, when it answered one.
    status: int | None = None


class Probe(Protocol):
    """One bounded check; :func:`check_once` is the connector-based one."""

    def __call__(self, spec: HealthSpec, connect: Connector, timeout: float) -> HealthResult: ...


# -- one probe ----------------------------------------------------------------------------------------


def check_once(
    spec: HealthSpec, connect: Connector, timeout: float | None = None, *, clock: Clock = time.monotonic
) -> HealthResult:
    """Probe once, within ``timeout`` seconds overall (default: the spec's). Never raises for a
    failing instance; raises :class:`HealthError` only for an exec spec (no connector can run it).
    """
    if not spec.kind.uses_connector:
        raise HealthError(
            "an exec health check cannot run through a connector",
            hint="pass the runtime's exec probe as probe= to wait_healthy or HealthWatch",
        )
    budget = spec.timeout if timeout is None else timeout
    start = clock()
    deadline = start + max(0.0, budget)

    def result(ok: bool, detail: str, *, status: int | None = None) -> HealthResult:
        return HealthResult(ok=ok, detail=detail, latency=max(0.0, clock() - start), status=status)

    if budget <= 0:
        return result(False, "no time left for the check")
    try:
        sock = connect(budget)
    except (OSError, KilnError) as exc:
        return result(False, f"connect failed: {_describe(exc)}")
    try:
        if spec.kind is ProbeKind.TCP:
            return result(True, "tcp connect ok")
        ok, detail, status = _http_get(sock, spec, budget, deadline, clock)
        return result(ok, detail, status=status)
    finally:
        sock.close()


class _CheckTimeout(Exception):
    pass


def _remaining(deadline: float, clock: Clock) -> float:
    left = deadline - clock()
    if left <= 0:
        raise _CheckTimeout
    return left


def _http_get(
    sock: socket.socket, spec: HealthSpec, budget: float, deadline: float, clock: Clock
) -> tuple[bool, str, int | None]:
    host = spec.host if spec.port in (None, 80) else f"{spec.host}:{spec.port}"
    request = (
        f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {_USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        sock.settimeout(_remaining(deadline, clock))
        # A server may answer (and close) before it reads the request: still read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        head = bytearray()
        while True:
            end = _end_of_head(head)
            if end is not None:
                return _judge(bytes(head[:end]))
            if len(head) >= MAX_RESPONSE_HEAD:
                return False, f"response head is larger than {MAX_RESPONSE_HEAD} bytes", None
            if not _plausible_start(head):
                return False, f"not an HTTP response: {_show(head)}", None
            sock.settimeout(_remaining(deadline, clock))
            chunk = sock.recv(MAX_RESPONSE_HEAD - len(head))
            if not chunk:
                if not head:
                    return False, "connection closed without a response", None
                return False, f"connection closed before the end of the response head: {_show(head)}", None
            head += chunk
    except (_CheckTimeout, TimeoutError):
        return False, f"timed out after {budget:g}s waiting for the response", None
    except OSError as exc:
        return False, f"connection failed: {_describe(exc)}", None


def _end_of_head(buf: bytearray) -> int | None:
    """The end of the status line + headers (the blank line), or None while incomplete."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = buf.find(sep)
        if i >= 0:
            return i
    return None


def _plausible_start(buf: bytearray) -> bool:
    """False as soon as the bytes cannot be the start of an HTTP/1.x status line."""
    prefix = b"HTTP/1."
    n = min(len(buf), len(prefix))
    return bytes(buf[:n]) == prefix[:n]


def _judge(head: bytes) -> tuple[bool, str, int | None]:
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        return False, f"malformed status line: {_show(lines[0])}", None
    status = int(m.group(1))
    for line in lines[1:]:
        name, colon, _ = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return False, f"malformed header line: {_show(line)}", None
    reason = (m.group(2) or b"").decode("latin-1").strip()
    detail = f"HTTP {status} {reason}".rstrip()
    return 200 <= status <= 399, detail, status


def _show(data: bytes | bytearray, limit: int = 60) -> str:
    text = repr(bytes(data[:limit]))
    return text + ("..." if len(data) > limit else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KilnError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- waiting for health ---------------------------------------------------------------------------------


FAST_CAP = 0.02  # seconds: the longest wait between probes of a new instance in its first seconds
FAST_WINDOW = 2.0  # seconds after the start during which probes stay that close


def wait_healthy(
    spec: HealthSpec,
    connect: Connector,
    *,
    grace: float = 0.0,
    interval: float | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    deadline: float = 60.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    probe: Probe | None = None,
    alive: Callable[[], bool] | None = None,
    backoff: float = 0.0,
) -> HealthResult:
    """Wait ``grace`` seconds, then probe every ``interval`` until ``retries`` consecutive passes.

    With ``backoff`` (seconds, > 0) the first probe is made at once, without the ``grace`` wait;
    the waits between probes start at ``backoff`` and double, up to :data:`FAST_CAP` for the first
    :data:`FAST_WINDOW` seconds (when instances usually come up) and then up to ``interval``: an
    instance that answers after 300 ms is seen within 320 ms, not a whole interval later. (The
    rollout still holds the instance's health for ``grace`` before the release is good.)

    Gives up (``ok=False``, the last failure in ``detail``) when the next probe could not finish
    within ``deadline`` seconds of the call; sooner when the instance has answered with a 4xx
    status ``retries`` times in a row (it is up and the check itself is refused, as with a wrong
    path: no amount of waiting fixes that), or when ``alive`` says it stopped running. An
    instance that does not answer yet, or answers 5xx (503 while warming up), is still starting
    and gets the whole ``deadline``.
    ``interval``, ``timeout`` and ``retries`` default to the spec's. The number of probes is
    bounded even if ``clock`` stands still.
    """
    interval = spec.interval if interval is None else interval
    timeout = spec.timeout if timeout is None else timeout
    retries = spec.retries if retries is None else retries
    if interval <= 0 or timeout <= 0 or retries < 1 or grace < 0 or deadline <= 0:
        raise ValueError(
            "interval, timeout, deadline must be positive, retries at least 1, grace not negative"
        )
    run: Probe = probe if probe is not None else check_once
    waits = _Waits(interval=interval, backoff=backoff)
    start = clock()
    end = start + deadline
    if grace > 0 and not backoff:
        sleep(min(grace, deadline))
    streak = _Streak(retries=retries)
    probes = 0
    most = waits.max_probes(deadline)

    def result(ok: bool, detail: str) -> HealthResult:
        return HealthResult(ok=ok, detail=detail, latency=max(0.0, clock() - start))

    while probes < most:
        left = end - clock()
        if left <= 0:
            break
        if alive is not None and not alive():
            return result(False, f"the instance stopped running after {probes} checks")
        verdict = streak.record(run(spec, connect, min(timeout, left)))
        probes += 1
        if verdict is not None:
            return result(*verdict)
        if clock() + waits.delay >= end:
            break
        sleep(waits.delay)
        waits.lengthen(elapsed=clock() - start)
    return result(False, f"not healthy within {deadline:g}s after {probes} checks: {streak.shortfall()}")


@dataclass(slots=True)
class _Waits:
    """The waits between the probes of :func:`wait_healthy`: ``interval`` each; with ``backoff``,
    from ``backoff`` doubling, up to :data:`FAST_CAP` in the first :data:`FAST_WINDOW` seconds and
    then up to ``interval``."""

    interval: float
    backoff: float
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.backoff < 0:
            raise ValueError("backoff must not be negative")
        self.delay = min(self.backoff, self.interval) if self.backoff else self.interval

    def max_probes(self, deadline: float) -> int:
        """A bound on the probes within ``deadline``, that holds even if the clock stands still."""
        bound = math.ceil(deadline / self.interval) + 1
        if self.backoff:  # the short waits of the fast window and before the delay reaches the interval
            first = min(self.backoff, self.interval)
            bound += math.ceil(FAST_WINDOW / first) + math.ceil(math.log2(self.interval / first)) + 2
        return bound

    def lengthen(self, *, elapsed: float) -> None:
        """The next wait, ``elapsed`` seconds after the first probe."""
        cap = min(self.interval, FAST_CAP) if self.backoff and elapsed < FAST_WINDOW else self.interval
        self.delay = min(self.delay * 2, cap)


@dataclass(slots=True)
class _Streak:
    """Consecutive passes, and consecutive 4xx answers (the instance is up and the check itself is
    refused, as with a wrong path: no amount of waiting fixes that); ``retries`` of either decide."""

    retries: int
    passes: int = 0
    refusals: int = 0
    last: HealthResult | None = None
    answered: HealthResult | None = None  # the last failed check the instance answered (a status)

    def record(self, result: HealthResult) -> tuple[bool, str] | None:
        """The verdict (healthy?, why) once ``result`` decides one, else None."""
        self.last = result
        if result.status is not None and not result.ok:
            self.answered = result
        refused = result.status is not None and 400 <= result.status <= 499
        self.refusals = self.refusals + 1 if refused else 0
        self.passes = self.passes + 1 if result.ok else 0
        if self.refusals >= self.retries:
            return False, f"answered {result.detail} {self.refusals} times in a row"
        if self.passes >= self.retries:
            return True, f"healthy: {self.passes} consecutive passes ({result.detail})"
        return None

    def shortfall(self) -> str:
        """Why there is no verdict yet: the last failure, or too few passes."""
        if self.last is None:
            return "no check could run"
        if self.last.ok:
            return f"only {self.passes} of {self.retries} consecutive passes"
        if self.last.status is None and self.answered is not None:
            # the last check ran out of time (or could not connect); what the instance said before
            # is what an operator needs to see, say HTTP 500
            return f"{self.last.detail}; before that it answered {self.answered.detail}"
        return self.last.detail


# -- continuous checking ----------------------------------------------------------------------------------


class HealthState(enum.StrEnum):
    STARTING = "starting"  # not yet ``retries`` consecutive passes
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # was healthy, then ``failures`` consecutive failures

    @property
    def serving(self) -> bool:
        return self is HealthState.HEALTHY


class HealthWatch:
    """Tracks one instance's health across probes.

    STARTING becomes HEALTHY after ``passes`` consecutive passes (default: the spec's retries);
    HEALTHY becomes UNHEALTHY after ``failures`` consecutive failures (default: the spec's retries);
    UNHEALTHY recovers like STARTING. Failures while STARTING do not make it UNHEALTHY: the start
    deadline (:func:`wait_healthy`) decides that. :meth:`held` answers "healthy, without a single
    failure, for at least ``grace`` seconds" — what a rollout waits for before it retires the old
    instance.
    """

    def __init__(
        self,
        spec: HealthSpec,
        *,
        passes: int | None = None,
        failures: int | None = None,
        clock: Clock = time.monotonic,
        probe: Probe | None = None,
    ) -> None:
        self.spec = spec
        self._need_passes = spec.retries if passes is None else passes
        self._need_failures = spec.retries if failures is None else failures
        if self._need_passes < 1 or self._need_failures < 1:
            raise ValueError("passes and failures must be at least 1")
        self._clock = clock
        self._probe: Probe = probe if probe is not None else check_once
        self.state = HealthState.STARTING
        self.consecutive_passes = 0
        self.consecutive_failures = 0
        self.checks = 0
        self.last: HealthResult | None = None
        self._passing_since: float | None = None
        self._last_check: float | None = None

    def observe(self, result: HealthResult) -> HealthState:
        """Record one probe's result (taken now) and return the new state."""
        now = self._clock()
        self.checks += 1
        self.last = result
        self._last_check = now
        if result.ok:
            if self.consecutive_passes == 0:
                self._passing_since = now
            self.consecutive_passes += 1
            self.consecutive_failures = 0
            if self.state is not HealthState.HEALTHY and self.consecutive_passes >= self._need_passes:
                self.state = HealthState.HEALTHY
        else:
            self.consecutive_failures += 1
            self.consecutive_passes = 0
            self._passing_since = None
            if self.state is HealthState.HEALTHY and self.consecutive_failures >= self._need_failures:
                self.state = HealthState.UNHEALTHY
        return self.state

    def check(self, connect: Connector) -> HealthState:
        """Probe once (bounded by the spec's timeout) and record it."""
        return self.observe(self._probe(self.spec, connect, self.spec.timeout))

    def due(self) -> bool:
        """Whether ``interval`` has passed since the last probe (or none was made)."""
        return self._last_check is None or self._clock() - self._last_check >= self.spec.interval

    def held_for(self) -> float:
        """Seconds the instance has been HEALTHY without a failed probe (0 when it is not)."""
        if self.state is not HealthState.HEALTHY or self._passing_since is None:
            return 0.0
        return max(0.0, self._clock() - self._passing_since)

    def held(self, grace: float) -> bool:
        return (
            self.state is HealthState.HEALTHY and self._passing_since is not None and self.held_for() >= grace
        )


# -- watching every serving instance ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorTarget:
    """One instance to watch: ``check(timeout)`` runs one bounded probe (never raises for a failing
    instance); ``retries`` consecutive failures make it unhealthy; probes start every ``interval``."""

    id: str
    interval: float
    timeout: float
    retries: int
    check: Callable[[float], HealthResult]


class _Watched:
    def __init__(self, target: MonitorTarget) -> None:
        self.target = target
        self.failures = 0
        self.checks = 0
        self.unhealthy = False
        self.last: HealthResult | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def state(self) -> str | None:
        if self.checks == 0:
            return None
        if self.unhealthy:
            return "unhealthy"
        return "healthy" if self.failures == 0 else "failing"


class HealthMonitor:
    """Probes every target continuously until :meth:`stop`.

    ``targets()`` (called every ``tick`` seconds) says what serves now; each target gets its own
    thread, so a frozen instance (its probes time out) never delays the others. Probes start on a
    fixed cadence (every ``interval``, or at once when the previous probe overran it), so a target
    that stops answering is reported after at most ``retries x interval + timeout`` seconds:
    ``on_unhealthy(id)`` once, when its ``retries``-th consecutive probe failed, and
    ``on_healthy(id)`` when an unhealthy target passes again. An exception out of a probe or a
    callback is a bug, not the instance's fault: it goes to ``on_error`` and the thread goes on.
    """

    def __init__(
        self,
        *,
        targets: Callable[[], Sequence[MonitorTarget]],
        on_unhealthy: Callable[[str, HealthResult | None], None],
        on_healthy: Callable[[str], None],
        on_error: Callable[[str, BaseException], None],
        clock: Clock = time.monotonic,
        tick: float = 0.1,
    ) -> None:
        self._targets = targets
        self._on_unhealthy = on_unhealthy
        self._on_healthy = on_healthy
        self._on_error = on_error
        self._clock = clock
        self._tick = tick
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queries

    def state(self, instance_id: str) -> str | None:
        """``healthy``, ``failing`` (fewer than ``retries`` failures), ``unhealthy``, or None when
        the instance has not been probed yet (or is not watched)."""
        with self._lock:
            w = self._watched.get(instance_id)
        return w.state if w is not None else None

    def last(self, instance_id: str) -> HealthResult | None:
        with self._lock:
            w = self._watched.get(instance_id)
        return w.last if w is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kiln-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            watched = list(self._watched.values())
            self._watched.clear()
        for w in watched:
            w.stop.set()
        for w in watched:
            if w.thread is not None:
                w.thread.join(timeout)

    def sync(self) -> None:
        """Start watching new targets and stop watching those gone (the supervisor's tick)."""
        try:
            targets = {t.id: t for t in self._targets()}
        except Exception as exc:  # noqa: BLE001 - the last-resort guard of the health step
            self._on_error("targets", exc)
            return
        with self._lock:
            gone = [w for iid, w in self._watched.items() if iid not in targets]
            for w in gone:
                del self._watched[w.target.id]
            fresh = [_Watched(t) for iid, t in targets.items() if iid not in self._watched]
            for w in fresh:
                self._watched[w.target.id] = w
        for w in gone:
            w.stop.set()
        for w in fresh:
            w.thread = threading.Thread(target=self._watch, args=(w,), name=f"kiln-health-{w.target.id}")
            w.thread.daemon = True
            w.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sync()
            self._stop.wait(self._tick)

    def _watch(self, w: _Watched) -> None:
        t = w.target
        while not w.stop.is_set() and not self._stop.is_set():
            began = self._clock()
            try:
                self._probe(w)
            except Exception as exc:  # noqa: BLE001 - the last-resort guard of the health step
                self._on_error(t.id, exc)
            wait = max(0.0, began + t.interval - self._clock())
            w.stop.wait(wait)

    def _probe(self, w: _Watched) -> None:
        t = w.target
        result = t.check(t.timeout)
        if w.stop.is_set():
            return
        w.last = result
        w.checks += 1
        if result.ok:
            w.failures = 0
            if w.unhealthy:
                w.unhealthy = False
                self._on_healthy(t.id)
            return
        w.failures += 1
        if w.failures >= t.retries and not w.unhealthy:
            w.unhealthy = True
            self._on_unhealthy(t.id, result)
