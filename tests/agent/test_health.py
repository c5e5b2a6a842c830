"""Health checks: real loopback servers for the probes, a fake clock for the waiting logic."""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.health import (
    MAX_RESPONSE_HEAD,
    HealthError,
    HealthResult,
    HealthSpec,
    HealthState,
    HealthWatch,
    ProbeKind,
    check_once,
    wait_healthy,
)
from manifests.canonical import canonical_json
from manifests.errors import DocumentError, UnavailableError
from manifests.image import ExecCheck, HealthCheck, HttpCheck, TcpCheck
from manifests.vm import health_to_dict

# -- a scripted server ---------------------------------------------------------------------------------


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs ``script(conn, request_bytes)`` for each, in a thread."""

    def __init__(self, script: Callable[[socket.socket, bytes], None], *, read_request: bool = True) -> None:
        self._script = script
        self._read_request = read_request
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.requests: list[bytes] = []
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)
        self._accept.start()

    def connect(self, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = b""
                if self._read_request:
                    while b"\r\n\r\n" not in request and len(request) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request)
                self._script(conn, request)
            except OSError:
                pass

    def close(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(script: Callable[[socket.socket, bytes], None], **kw: bool) -> ScriptedServer:
        s = ScriptedServer(script, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def respond(data: bytes) -> Callable[[socket.socket, bytes], None]:
    def script(conn: socket.socket, _: bytes) -> None:
        conn.sendall(data)

    return script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- HTTP probes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ok", "detail"),
    [
        (b"200 OK", True, "HTTP 200 OK"),
        (b"204 No Content", True, "HTTP 204 No Content"),
        (b"302 Found", True, "HTTP 302 Found"),
        (b"399 Odd", True, "HTTP 399 Odd"),
        (b"200", True, "HTTP 200"),
        (b"100 Continue", False, "HTTP 100 Continue"),
        (b"199 Odd", False, "HTTP 199 Odd"),
        (b"400 Bad Request", False, "HTTP 400 Bad Request"),
        (b"404 Not Found", False, "HTTP 404 Not Found"),
        (b"500 Internal Server Error", False, "HTTP 500 Internal Server Error"),
        (b"503 Service Unavailable", False, "HTTP 503 Service Unavailable"),
    ],
)
def test_http_status_decides(
    serve: Callable[..., ScriptedServer], status: bytes, ok: bool, detail: str
) -> None:
    srv = serve(respond(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nhi"))
    result = check_once(HealthSpec.http(srv.port, "/healthz"), srv.connect, 2.0)
    assert (result.ok, result.detail) == (ok, detail)
    assert 0 <= result.latency < 2.0


def test_http_request_is_minimal_and_closes(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(respond(b"HTTP/1.0 200 OK\r\n\r\n"))
    spec = HealthSpec.http(srv.port, "/healthz?probe=1")
    assert check_once(spec, srv.connect, 2.0).ok
    assert srv.requests == [
        b"GET /healthz?probe=1 HTTP/1.1\r\n"
        + f"Host: localhost:{srv.port}\r\n".encode()
        + b"User-Agent: kiln-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ]


def _pair_server(response: bytes, requests: list[bytes], threads: list[threading.Thread]) -> socket.socket:
    """A connector's socket whose peer, in a thread, reads the request head and then answers."""
    ours, theirs = socket.socketpair()

    def peer() -> None:
        with theirs:
            theirs.settimeout(5)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = theirs.recv(4096)
                if not chunk:
                    break
                got += chunk
            requests.append(got)
            theirs.sendall(response)

    t = threading.Thread(target=peer)
    threads.append(t)
    t.start()
    return ours


def test_http_on_port_80_sends_a_bare_host() -> None:
    requests: list[bytes] = []
    threads: list[threading.Thread] = []
    spec = HealthSpec.http(80, host="svc.internal")
    result = check_once(spec, lambda t: _pair_server(b"HTTP/1.1 200 OK\r\n\r\n", requests, threads), 2.0)
    for t in threads:
        t.join(5)
    assert result.ok
    assert requests == [
        b"GET / HTTP/1.1\r\nHost: svc.internal\r\nUser-Agent: kiln-agent\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    ]


def test_bare_lf_response_head_is_accepted(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(respond(b"HTTP/1.1 200 OK\nServer: tiny\n\nbody"))
    result = check_once(HealthSpec.http(srv.port), srv.connect, 2.0)
    assert (result.ok, result.detail) == (True, "HTTP 200 OK")


def test_big_body_is_not_read(serve: Callable[..., ScriptedServer]) -> None:
    body = b"x" * (8 * 1024 * 1024)
    srv = serve(respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    result = check_once(HealthSpec.http(srv.port), srv.connect, 2.0)
    assert (result.ok, result.detail) == (True, "HTTP 200 OK")


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (b"", "connection closed without a response"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response: b'SSH-2.0-OpenSSH_9.2\\r\\n'"),
        (b"\x16\x03\x01\x02\x00\x01\x00", "not an HTTP response: b'\\x16\\x03\\x01\\x02\\x00\\x01\\x00'"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "malformed status line: b'HTTP/1.1 abc OK'"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line: b'HTTP/1.1 2000 OK'"),
        (b"HTTP/2 200\r\n\r\n", "malformed status line: b'HTTP/2 200'"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line: b'no colon here'"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line: b' folded: x'"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed header line: b'Bad Name: x'"),
        (
            b"HTTP/1.1 200 OK\r\nServer: half",
            "connection closed before the end of the response head: b'HTTP/1.1 200 OK\\r\\nServer: half'",
        ),
    ],
)
def test_garbage_responses_fail(serve: Callable[..., ScriptedServer], response: bytes, detail: str) -> None:
    srv = serve(respond(response))
    result = check_once(HealthSpec.http(srv.port), srv.connect, 2.0)
    assert (result.ok, result.detail) == (False, detail)


def test_oversized_response_head_is_capped(serve: Callable[..., ScriptedServer]) -> None:
    written: list[int] = []

    def endless_headers(conn: socket.socket, _: bytes) -> None:
        conn.settimeout(1)
        total = 0
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
            while total < 4 * 1024 * 1024:
                conn.sendall(line)
                total += len(line)
        written.append(total)

    srv = serve(endless_headers)
    result = check_once(HealthSpec.http(srv.port), srv.connect, 3.0)
    assert (result.ok, result.detail) == (False, f"response head is larger than {MAX_RESPONSE_HEAD} bytes")
    srv.close()
    assert written
    assert written[0] < 4 * 1024 * 1024  # the check stopped reading: the server could not write it all


def test_silent_server_times_out_within_the_budget(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(lambda conn, _: srv.stop_event.wait(10))
    started = time.monotonic()
    result = check_once(HealthSpec.http(srv.port), srv.connect, 0.3)
    elapsed = time.monotonic() - started
    assert (result.ok, result.detail) == (False, "timed out after 0.3s waiting for the response")
    assert 0.25 <= elapsed < 1.5
    assert 0.25 <= result.latency < 1.5


def test_dripping_server_is_bounded_by_the_overall_deadline(serve: Callable[..., ScriptedServer]) -> None:
    def drip(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        # One header byte every 50 ms: each recv succeeds, only the overall deadline ends it.
        for _ in range(200):
            if srv.stop_event.wait(0.05):
                return
            conn.sendall(b"X")

    srv = serve(drip)
    started = time.monotonic()
    result = check_once(HealthSpec.http(srv.port), srv.connect, 0.4)
    elapsed = time.monotonic() - started
    assert (result.ok, result.detail) == (False, "timed out after 0.4s waiting for the response")
    assert elapsed < 1.5


def test_connect_failures_fail_the_check() -> None:
    port = _free_port()
    spec = HealthSpec.http(port)

    def refused(timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def kiln_failure(timeout: float) -> socket.socket:
        raise UnavailableError("netns kiln-x is gone", hint="the instance stopped")

    def slow(timeout: float) -> socket.socket:
        raise TimeoutError

    assert check_once(spec, refused, 1.0).detail == "connect failed: Connection refused"
    assert check_once(spec, kiln_failure, 1.0).detail == "connect failed: netns kiln-x is gone"
    assert check_once(spec, slow, 1.0).detail == "connect failed: timed out"
    assert check_once(spec, refused, 0).detail == "no time left for the check"


def test_connector_gets_the_budget(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(respond(b"HTTP/1.1 200 OK\r\n\r\n"))
    seen: list[float] = []

    def connect(timeout: float) -> socket.socket:
        seen.append(timeout)
        return srv.connect(timeout)

    assert check_once(HealthSpec.http(srv.port, timeout=0.7), connect).ok  # default: the spec's timeout
    assert check_once(HealthSpec.http(srv.port), connect, 0.25).ok
    assert seen == [0.7, 0.25]


# -- TCP and exec ------------------------------------------------------------------------------------


def test_tcp_check(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(lambda conn, _: None, read_request=False)
    assert check_once(HealthSpec.tcp(srv.port), srv.connect, 1.0).detail == "tcp connect ok"
    port = _free_port()
    result = check_once(
        HealthSpec.tcp(port), lambda t: socket.create_connection(("127.0.0.1", port), timeout=t), 1.0
    )
    assert (result.ok, result.detail) == (False, "connect failed: Connection refused")


def test_exec_check_needs_a_runtime_probe() -> None:
    spec = HealthSpec(kind=ProbeKind.EXEC, command=("/app/check",))
    with pytest.raises(HealthError) as info:
        check_once(spec, lambda t: socket.socket(), 1.0)
    assert str(info.value) == (
        "an exec health check cannot run through a connector "
        "(hint: pass the runtime's exec probe as probe= to wait_healthy or HealthWatch)"
    )


# -- specs and the dev.kiln.health label -------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        HealthCheck(check=HttpCheck(port=8080, path="/healthz"), interval=1.5, timeout=0.5, retries=2),
        HealthCheck(check=TcpCheck(port=5432)),
        HealthCheck(check=ExecCheck(command=("/bin/true", "--quiet")), retries=5),
    ],
)
def test_label_round_trips_with_the_builder(check: HealthCheck) -> None:
    label = canonical_json(health_to_dict(check)).decode()
    spec = HealthSpec.from_label(label)
    assert spec == HealthSpec.from_check(check)
    assert spec.to_dict() == health_to_dict(check)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (
            "not json",
            "dev.kiln.health label: not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        ("[1]", "dev.kiln.health label: must be a JSON object, not list"),
        (
            '{"type":"grpc","port":1}',
            "dev.kiln.health label: type: must be one of http, tcp, exec, not 'grpc'",
        ),
        ("{}", "dev.kiln.health label: type: must be one of http, tcp, exec, not None"),
        ('{"type":"http"}', "dev.kiln.health label: port: must be an integer, not null"),
        ('{"type":"tcp","port":"80"}', "dev.kiln.health label: port: must be an integer, not str"),
        ('{"type":"tcp","port":true}', "dev.kiln.health label: port: must be an integer, not bool"),
        ('{"type":"tcp","port":70000}', "dev.kiln.health label: port: must be an integer from 1 to 65535"),
        (
            '{"type":"http","port":80,"path":"/a b"}',
            "dev.kiln.health label: path: must start with '/' and hold printable ASCII without spaces, "
            "not '/a b'",
        ),
        (
            '{"type":"http","port":80,"path":"/x\\r\\nX-Injected: 1"}',
            "dev.kiln.health label: path: must start with '/' and hold printable ASCII without spaces, "
            "not '/x\\r\\nX-Injected: 1'",
        ),
        ('{"type":"http","port":80,"path":7}', "dev.kiln.health label: path: must be a string, not int"),
        (
            '{"type":"exec","command":[]}',
            "dev.kiln.health label: command: must be a non-empty list of strings",
        ),
        (
            '{"type":"tcp","port":1,"interval":0,"timeout":"1","retries":0}',
            "dev.kiln.health label: interval: must be a number of seconds above 0 and at most 3600; "
            "timeout: must be a number, not str; retries: must be an integer from 1 to 100",
        ),
        (
            '{"type":"tcp","port":1,"interval":0}',
            "dev.kiln.health label: interval: must be a number of seconds above 0 and at most 3600",
        ),
        (
            '{"type":"tcp","port":1,"timeout":1e400}',
            "dev.kiln.health label: the number 1e400 is out of range (overflows a float)",
        ),
        (
            '{"type":"tcp","port":1,"timeout":600.5}',
            "dev.kiln.health label: timeout: must be a number of seconds above 0 and at most 600",
        ),
        (
            '{"type":"tcp","port":1,"retries":2.5}',
            "dev.kiln.health label: retries: must be an integer, not float",
        ),
        (
            '{"type":"tcp","port":1,"pad":"' + "a" * 5000 + '"}',
            "dev.kiln.health label: is 5032 bytes, more than 4096",
        ),
    ],
)
def test_bad_labels_are_refused(label: str, message: str) -> None:
    with pytest.raises(DocumentError) as info:
        HealthSpec.from_label(label)
    assert info.value.message == message
    assert info.value.hint == (
        "the image's health check label is malformed; rebuild the image with a valid health check"
    )


def test_label_ignores_unknown_keys() -> None:
    spec = HealthSpec.from_label('{"type":"tcp","port":9000,"future":{"x":1}}')
    assert spec == HealthSpec.tcp(9000)


def test_spec_validates_on_construction() -> None:
    with pytest.raises(HealthError) as info:
        HealthSpec.http(0, "nope", host="a b", interval=-1.0, retries=101)
    assert info.value.message == (
        "invalid health check: port: must be an integer from 1 to 65535; "
        "path: must start with '/' and hold printable ASCII without spaces, not 'nope'; "
        "host: not a valid Host header value: 'a b'; "
        "interval: must be a number of seconds above 0 and at most 3600; "
        "retries: must be an integer from 1 to 100"
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "port", "path", "command", "interval", "timeout", "retries", "x"]),
        json_values | st.sampled_from(["http", "tcp", "exec", "/", "/ok"]) | st.integers(1, 65535),
        max_size=8,
    )
)
def test_label_parser_only_raises_document_errors(value: dict[str, object]) -> None:
    import json

    try:
        spec = HealthSpec.from_label(json.dumps(value))
    except DocumentError:
        return
    assert HealthSpec.from_label(canonical_json(spec.to_dict())) == spec


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_never_pass_unless_http(data: bytes) -> None:
    def connect(timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        theirs.sendall(data)
        theirs.close()
        return ours

    result = check_once(HealthSpec.http(80), connect, 1.0)
    assert isinstance(result, HealthResult)
    if result.ok:
        assert data.startswith(b"HTTP/1.")


@settings(max_examples=100, deadline=None)
@given(st.integers(100, 999), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_status_range_decides(status: int, reason: str) -> None:
    response = f"HTTP/1.1 {status} {reason}\r\nX: y\r\n\r\n".encode()

    def connect(timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        theirs.sendall(response)
        theirs.close()
        return ours

    result = check_once(HealthSpec.http(80), connect, 1.0)
    assert result.ok is (200 <= status <= 399)
    assert result.detail == f"HTTP {status} {reason.strip()}".rstrip()


# -- waiting, with a fake clock ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, *, advances: bool = True) -> None:
        self.now = 1000.0
        self.advances = advances
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advances:
            self.now += seconds


class ScriptedProbe:
    """Returns scripted results; each probe costs ``cost`` fake seconds. Records when it ran."""

    def __init__(self, clock: FakeClock, outcomes: str, cost: float = 0.1) -> None:
        self.clock = clock
        self.outcomes = outcomes  # e.g. "ffpfppp"; repeats its last letter when exhausted
        self.cost = cost
        self.calls: list[tuple[float, float]] = []  # (time, timeout)

    def __call__(
        self, spec: HealthSpec, connect: Callable[[float], socket.socket], timeout: float
    ) -> HealthResult:
        i = len(self.calls)
        self.calls.append((self.clock.now - 1000.0, timeout))
        ok = (self.outcomes[i] if i < len(self.outcomes) else self.outcomes[-1]) == "p"
        self.clock.now += self.cost
        return HealthResult(
            ok=ok, detail="HTTP 200 OK" if ok else "HTTP 503 Service Unavailable", latency=self.cost
        )


def _no_connect(timeout: float) -> socket.socket:
    raise AssertionError("the scripted probe does not connect")


SPEC = HealthSpec.http(8080, "/healthz", interval=1.0, timeout=0.5, retries=3)


def test_grace_then_consecutive_passes() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "pfppfppp")
    result = wait_healthy(
        SPEC, _no_connect, grace=5.0, deadline=30.0, clock=clock, sleep=clock.sleep, probe=probe
    )
    assert result.ok
    assert result.detail == "healthy: 3 consecutive passes (HTTP 200 OK)"
    assert clock.sleeps[0] == 5.0  # grace first
    times = [t for t, _ in probe.calls]
    assert len(times) == 8  # the streak broke twice; the 3-pass streak is probes 6, 7, 8
    assert times[0] == pytest.approx(5.0)
    assert all(b - a == pytest.approx(1.1) for a, b in itertools.pairwise(times))
    assert result.latency == pytest.approx(5.0 + 7 * 1.1 + 0.1)


def test_never_healthy_gives_up_at_the_deadline() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "f")
    result = wait_healthy(
        SPEC, _no_connect, grace=2.0, deadline=10.0, clock=clock, sleep=clock.sleep, probe=probe
    )
    assert not result.ok
    assert result.detail == "not healthy within 10s after 8 checks: HTTP 503 Service Unavailable"
    assert clock.now - 1000.0 <= 10.0
    assert all(t + timeout <= 10.0 + 1e-9 for t, timeout in probe.calls)


def test_passing_too_late_reports_the_streak() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "ffffffpp")
    result = wait_healthy(SPEC, _no_connect, deadline=8.5, clock=clock, sleep=clock.sleep, probe=probe)
    assert not result.ok
    assert result.detail == "not healthy within 8.5s after 8 checks: only 2 of 3 consecutive passes"


def test_probe_timeout_is_cut_to_the_deadline() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "f", cost=0.0)
    wait_healthy(
        SPEC,
        _no_connect,
        interval=0.7,
        timeout=5.0,
        deadline=2.0,
        clock=clock,
        sleep=clock.sleep,
        probe=probe,
    )
    assert [round(t, 6) for t, _ in probe.calls] == [0.0, 0.7, 1.4]
    assert [round(timeout, 6) for _, timeout in probe.calls] == [2.0, 1.3, 0.6]


def test_a_frozen_clock_cannot_loop_forever() -> None:
    clock = FakeClock(advances=False)
    probe = ScriptedProbe(clock, "f", cost=0.0)
    result = wait_healthy(SPEC, _no_connect, deadline=10.0, clock=clock, sleep=clock.sleep, probe=probe)
    assert not result.ok
    assert len(probe.calls) == math.ceil(10.0 / SPEC.interval) + 1


def test_overrides_and_argument_checks() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "p")
    result = wait_healthy(
        SPEC, _no_connect, retries=1, interval=0.2, deadline=5.0, clock=clock, sleep=clock.sleep, probe=probe
    )
    assert result.ok
    assert len(probe.calls) == 1
    with pytest.raises(ValueError, match="retries at least 1"):
        wait_healthy(SPEC, _no_connect, retries=0, clock=clock, sleep=clock.sleep, probe=probe)


def test_wait_healthy_with_the_real_probe_and_a_fake_clock() -> None:
    """The default probe, fed by a connector that answers 503 twice, then 200."""
    answers = [b"HTTP/1.1 503 Busy\r\n\r\n"] * 2 + [b"HTTP/1.1 200 OK\r\n\r\n"] * 5
    clock = FakeClock()

    def connect(timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        theirs.sendall(answers.pop(0))
        theirs.close()
        return ours

    result = wait_healthy(SPEC, connect, grace=1.0, deadline=20.0, clock=clock, sleep=clock.sleep)
    assert result.ok
    assert clock.sleeps == [1.0] + [1.0] * 4
    assert len(answers) == 2


def test_wait_healthy_for_real(serve: Callable[..., ScriptedServer]) -> None:
    """Real clock and sockets: an instance that answers 503 for its first requests."""
    count = [0]

    def warming(conn: socket.socket, _: bytes) -> None:
        count[0] += 1
        conn.sendall(b"HTTP/1.1 503 Warming\r\n\r\n" if count[0] <= 3 else b"HTTP/1.1 200 OK\r\n\r\n")

    srv = serve(warming)
    spec = HealthSpec.http(srv.port, interval=0.02, timeout=1.0, retries=2)
    started = time.monotonic()
    result = wait_healthy(spec, srv.connect, grace=0.05, deadline=5.0)
    assert result.ok
    assert count[0] == 5
    assert time.monotonic() - started < 3.0


# -- continuous checking --------------------------------------------------------------------------------


def _r(ok: bool) -> HealthResult:
    return HealthResult(ok=ok, detail="pass" if ok else "fail", latency=0.01)


def test_watch_states_and_holding() -> None:
    clock = FakeClock()
    watch = HealthWatch(SPEC, clock=clock)  # 3 passes to become healthy, 3 failures to lose it
    assert watch.state is HealthState.STARTING
    assert watch.due()

    for _ in range(5):  # failures while starting never make it unhealthy
        assert watch.observe(_r(False)) is HealthState.STARTING
    assert watch.consecutive_failures == 5
    assert not watch.held(0)

    assert watch.observe(_r(True)) is HealthState.STARTING
    clock.now += 1
    assert watch.observe(_r(True)) is HealthState.STARTING
    clock.now += 1
    assert watch.observe(_r(True)) is HealthState.HEALTHY
    assert watch.state.serving
    assert watch.held_for() == pytest.approx(2.0)  # counted from the first pass of the streak
    assert watch.held(2.0)
    assert not watch.held(2.5)
    assert not watch.due()
    clock.now += 1.0
    assert watch.due()

    assert watch.observe(_r(False)) is HealthState.HEALTHY  # one failure: still serving ...
    assert not watch.held(0)  # ... but health no longer "held"
    assert watch.held_for() == 0.0
    assert watch.observe(_r(False)) is HealthState.HEALTHY
    assert watch.observe(_r(False)) is HealthState.UNHEALTHY
    assert not watch.state.serving

    assert watch.observe(_r(True)) is HealthState.UNHEALTHY
    assert watch.observe(_r(True)) is HealthState.UNHEALTHY
    assert watch.observe(_r(True)) is HealthState.HEALTHY  # recovered like a start
    assert watch.checks == 14
    assert watch.last == _r(True)


def test_watch_thresholds_and_check(serve: Callable[..., ScriptedServer]) -> None:
    srv = serve(respond(b"HTTP/1.1 200 OK\r\n\r\n"))
    watch = HealthWatch(HealthSpec.http(srv.port, timeout=1.0), passes=1, failures=1)
    assert watch.check(srv.connect) is HealthState.HEALTHY
    srv.close()
    assert watch.check(srv.connect) is HealthState.UNHEALTHY
    assert watch.last is not None
    assert watch.last.detail == "connect failed: Connection refused"
    with pytest.raises(ValueError, match="at least 1"):
        HealthWatch(SPEC, passes=0)


def test_a_last_check_that_ran_out_of_time_still_reports_what_the_instance_answered() -> None:
    """Under load the last probe of a deadline can time out; the verdict keeps the answer before it."""
    clock = FakeClock()
    answers = iter(
        [HealthResult(ok=False, detail="HTTP 500 Internal Server Error", latency=0.1, status=500)] * 3
    )

    def probe(spec: HealthSpec, connect: Callable[[float], socket.socket], timeout: float) -> HealthResult:
        clock.now += 0.1
        return next(answers, HealthResult(ok=False, detail="timed out waiting for the response", latency=0.1))

    result = wait_healthy(SPEC, _no_connect, deadline=10.0, clock=clock, sleep=clock.sleep, probe=probe)
    assert not result.ok
    assert result.detail.endswith(
        "timed out waiting for the response; before that it answered HTTP 500 Internal Server Error"
    )
