"""The agent's traffic switch, on real loopback sockets with small backend servers in threads.

Every loop here is bounded (a request count or a deadline), every socket is on loopback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent.forwarder import Backend, Forwarder, ForwarderError, ForwarderStats

# -- small backend servers ----------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class BackendServer:
    """A threaded TCP server on 127.0.0.1 with a pluggable per-connection handler.

    ``stop()`` closes the listener and every accepted socket and joins every thread.
    """

    def __init__(self, name: str, handler: Callable[[BackendServer, socket.socket], None]) -> None:
        self.name = name
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self.served = 0
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"backend-{name}", daemon=True)
        self._accept_thread.start()

    def backend(self) -> Backend:
        return Backend.tcp(self.name, "127.0.0.1", self.port)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopped.is_set():
                    sock.close()
                    return
                self._socks.add(sock)
                self.served += 1
                t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            self._handler(self, sock)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def stop(self) -> None:
        self._stopped.set()
        # shutdown() wakes a thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accept_thread.join(5)
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads)


def name_handler(server: BackendServer, sock: socket.socket) -> None:
    """Read one line, answer with the server's name, close."""
    _read_line(sock)
    sock.sendall(f"{server.name}\n".encode())


def echo_to_eof_handler(server: BackendServer, sock: socket.socket) -> None:
    """Read until the client half-closes, then answer with what it sent, prefixed by the name."""
    data = _read_all(sock)
    sock.sendall(server.name.encode() + b":" + data)


def echo_lines_handler(server: BackendServer, sock: socket.socket) -> None:
    """Echo every line with the server's name until the client closes."""
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            sock.sendall(server.name.encode() + b":" + line + b"\n")


def _read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < limit:
        chunk = sock.recv(limit)
        if not chunk:
            break
        buf += chunk
    return buf


def _read_all(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    parts = []
    total = 0
    while total < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


@pytest.fixture
def servers() -> Iterator[Callable[..., BackendServer]]:
    made: list[BackendServer] = []

    def make(
        name: str, handler: Callable[[BackendServer, socket.socket], None] = name_handler
    ) -> BackendServer:
        s = BackendServer(name, handler)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    fwd = Forwarder(("127.0.0.1", 0), connect_timeout=1.0)
    fwd.start()
    yield fwd
    fwd.stop()


def _addr(fwd: Forwarder) -> tuple[str, int]:
    address = fwd.address
    assert isinstance(address, tuple)
    return address


def request(fwd: Forwarder, payload: bytes = b"ping\n", timeout: float = 5.0) -> bytes:
    with socket.create_connection(_addr(fwd), timeout=timeout) as c:
        c.sendall(payload)
        return _read_all(c)


def refused_request(fwd: Forwarder) -> bytes:
    """A request the forwarder drops: it closes the client (a reset if our bytes were unread)."""
    try:
        return request(fwd)
    except ConnectionResetError:
        return b""


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# -- basics ---------------------------------------------------------------------------------------------


def test_forwards_to_the_backend_and_counts(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    a = servers("a")
    forwarder.set_backends([a.backend()])
    assert request(forwarder) == b"a\n"
    assert wait_for(lambda: forwarder.stats().open == 0)
    st = forwarder.stats()
    assert st.accepted == 1
    assert st.dropped == 0
    assert st.bytes_up == len(b"ping\n")
    assert st.bytes_down == len(b"a\n")
    row = st.backend("a")
    assert row is not None
    assert (row.in_set, row.open, row.connecting, row.total) == (True, 0, 0, 1)


def test_round_robin_over_the_set(forwarder: Forwarder, servers: Callable[..., BackendServer]) -> None:
    a, b, c = servers("a"), servers("b"), servers("c")
    forwarder.set_backends([a.backend(), b.backend(), c.backend()])
    answers = [request(forwarder) for _ in range(9)]
    assert sorted(answers) == sorted([b"a\n", b"b\n", b"c\n"] * 3)
    # Strict rotation: every window of three consecutive requests hits all three backends.
    for i in range(0, 9, 3):
        assert sorted(answers[i : i + 3]) == [b"a\n", b"b\n", b"c\n"]


def test_switch_sends_new_connections_to_the_new_set(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    a, b = servers("a"), servers("b")
    forwarder.set_backends([a.backend()])
    assert request(forwarder) == b"a\n"
    forwarder.set_backends([b.backend()])
    assert [request(forwarder) for _ in range(5)] == [b"b\n"] * 5
    assert [x.id for x in forwarder.stats().backends] == ["b"]


def test_half_close_is_propagated(forwarder: Forwarder, servers: Callable[..., BackendServer]) -> None:
    a = servers("a", echo_to_eof_handler)
    forwarder.set_backends([a.backend()])
    payload = os.urandom(300_000)  # several times the forwarder's buffer
    with socket.create_connection(_addr(forwarder), timeout=10) as c:
        sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        sender.start()
        answer = _read_all(c)
        sender.join(10)
    # The backend only answers after it saw EOF, so the answer proves SHUT_WR reached it, and
    # the client's EOF after the answer proves the backend's close came back.
    assert answer == b"a:" + payload


def test_backend_half_close_keeps_the_client_direction_open(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    def greet_then_read(server: BackendServer, sock: socket.socket) -> None:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)  # backend is done talking but still listens
        data = _read_all(sock)
        assert data == b"late data"
        server.served += 1000  # a marker the test can see

    a = servers("a", greet_then_read)
    forwarder.set_backends([a.backend()])
    with socket.create_connection(_addr(forwarder), timeout=5) as c:
        assert _read_all(c) == b"hello\n"  # EOF from the backend reached the client
        c.sendall(b"late data")  # ... and the client can still send
        c.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: a.served >= 1000)


def test_large_transfer_both_directions_is_intact(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    def big(server: BackendServer, sock: socket.socket) -> None:
        data = _read_all(sock)
        sock.sendall(data[::-1] * 3)

    a = servers("a", big)
    forwarder.set_backends([a.backend()])
    payload = os.urandom(2_000_000)
    with socket.create_connection(_addr(forwarder), timeout=20) as c:
        sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        sender.start()
        answer = _read_all(c)
        sender.join(20)
    assert answer == payload[::-1] * 3


# -- the blue-green acceptance: a client polls throughout, bounded -------------------------------------


def _poll(fwd: Forwarder, stop: threading.Event, results: dict[str, int], errors: list[str]) -> None:
    deadline = time.monotonic() + 5.0
    n = 0
    while n < 2000 and time.monotonic() < deadline and not stop.is_set():
        n += 1
        try:
            answer = request(fwd, timeout=3.0)
        except OSError as exc:
            errors.append(f"request {n}: {exc!r}")
            continue
        if not answer.endswith(b"\n") or len(answer) < 2:
            errors.append(f"request {n}: short answer {answer!r}")
            continue
        key = answer.decode().strip()
        results[key] = results.get(key, 0) + 1
    results["_total"] = n


@pytest.mark.slow
def test_switching_back_and_forth_drops_no_request(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    a, b = servers("a"), servers("b")
    forwarder.set_backends([a.backend()])
    stop = threading.Event()
    results: dict[str, int] = {}
    errors: list[str] = []
    poller = threading.Thread(target=_poll, args=(forwarder, stop, results, errors))
    poller.start()
    switches = 0
    try:
        while poller.is_alive() and switches < 400:
            forwarder.set_backends([b.backend()] if switches % 2 == 0 else [a.backend()])
            switches += 1
            time.sleep(0.005)
    finally:
        stop.set()
        poller.join(15)
    assert not poller.is_alive()
    assert errors == []
    assert switches >= 50
    assert results["_total"] >= 200
    assert results.get("a", 0) > 0
    assert results.get("b", 0) > 0
    assert results["a"] + results["b"] == results["_total"]
    assert forwarder.stats().dropped == 0


@pytest.mark.slow
def test_blue_green_with_drain_and_stop_drops_no_request(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    """v1 -> v2 -> v3 ...: start the new one, switch, drain the old one, stop it; the client never fails."""
    current = servers("v0")
    forwarder.set_backends([current.backend()])
    stop = threading.Event()
    results: dict[str, int] = {}
    errors: list[str] = []
    poller = threading.Thread(target=_poll, args=(forwarder, stop, results, errors))
    poller.start()
    generation = 0
    try:
        while poller.is_alive() and generation < 40:
            generation += 1
            new = servers(f"v{generation}")
            forwarder.set_backends([new.backend()])
            assert forwarder.drain(current.name, timeout=5.0)
            current.stop()
            current = new
            time.sleep(0.02)
    finally:
        stop.set()
        poller.join(15)
    assert not poller.is_alive()
    assert errors == []
    assert generation >= 5
    served = sum(v for k, v in results.items() if k != "_total")
    assert served == results["_total"]
    assert forwarder.stats().dropped == 0


# -- open connections drain ----------------------------------------------------------------------------


def test_open_connection_survives_a_switch_and_drains(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    a, b = servers("a", echo_lines_handler), servers("b", echo_lines_handler)
    forwarder.set_backends([a.backend()])
    with socket.create_connection(_addr(forwarder), timeout=5) as long_lived:
        long_lived.sendall(b"one\n")
        assert _read_line(long_lived) == b"a:one\n"

        forwarder.set_backends([b.backend()])
        # New connections go to b ...
        with socket.create_connection(_addr(forwarder), timeout=5) as fresh:
            fresh.sendall(b"x\n")
            assert _read_line(fresh) == b"b:x\n"
        # ... while the open one keeps flowing to a.
        long_lived.sendall(b"two\n")
        assert _read_line(long_lived) == b"a:two\n"

        row = forwarder.stats().backend("a")
        assert row is not None
        assert (row.in_set, row.open) == (False, 1)
        started = time.monotonic()
        assert forwarder.drain("a", timeout=0.2) is False
        assert time.monotonic() - started >= 0.19

        closer = threading.Timer(0.1, long_lived.close)
        closer.start()
        assert forwarder.drain("a", timeout=5.0) is True
        closer.join()
    assert forwarder.stats().backend("a") is None  # out of the set and idle: forgotten
    assert forwarder.drain("never-seen", timeout=0) is True


def test_close_backend_connections_ends_a_stuck_drain(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    a, b = servers("a", echo_lines_handler), servers("b")
    forwarder.set_backends([a.backend()])
    with socket.create_connection(_addr(forwarder), timeout=5) as c:
        c.sendall(b"hi\n")
        assert _read_line(c) == b"a:hi\n"
        forwarder.set_backends([b.backend()])
        assert forwarder.drain("a", timeout=0.05) is False
        forwarder.close_backend_connections("a")
        assert forwarder.drain("a", timeout=5.0) is True
        assert c.recv(10) == b""  # the client sees the connection end


# -- connect failures fall through ---------------------------------------------------------------------


def _refusing_backend(backend_id: str) -> Backend:
    """A backend whose port nobody listens on: connect is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return Backend.tcp(backend_id, "127.0.0.1", port)


def test_connect_failure_falls_through_to_the_next_backend(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    good = servers("good")
    calls: list[float] = []

    def raising(timeout: float) -> socket.socket:
        calls.append(timeout)
        raise ConnectionRefusedError("nobody home")

    forwarder.set_backends([Backend(id="broken", connect=raising), _refusing_backend("dead"), good.backend()])
    answers = [request(forwarder) for _ in range(6)]
    assert answers == [b"good\n"] * 6
    st = forwarder.stats()
    assert st.dropped == 0
    assert st.connect_failures > 0
    broken, dead, ok = (st.backend(x) for x in ("broken", "dead", "good"))
    assert broken is not None
    assert dead is not None
    assert ok is not None
    assert broken.connect_failures == len(calls) > 0
    assert dead.connect_failures > 0
    assert (broken.total, dead.total, ok.total) == (0, 0, 6)
    assert calls[0] == 1.0  # the forwarder's connect_timeout is passed to the connector


def test_client_is_closed_when_no_backend_answers(
    forwarder: Forwarder, servers: Callable[..., BackendServer]
) -> None:
    forwarder.set_backends([_refusing_backend("x"), _refusing_backend("y")])
    assert refused_request(forwarder) == b""
    assert wait_for(lambda: forwarder.stats().dropped == 1)
    st = forwarder.stats()
    assert st.connect_failures == 2  # each backend tried once
    assert st.open == 0


def test_attempts_are_bounded(servers: Callable[..., BackendServer]) -> None:
    calls: list[str] = []

    def failing(name: str) -> Backend:
        def connect(timeout: float) -> socket.socket:
            calls.append(name)
            raise OSError("down")

        return Backend(id=name, connect=connect)

    with Forwarder(("127.0.0.1", 0), max_attempts=2) as fwd:
        fwd.set_backends([failing(f"b{i}") for i in range(5)])
        assert refused_request(fwd) == b""
        assert wait_for(lambda: fwd.stats().dropped == 1)
    assert len(calls) == 2


def test_slow_connect_is_bounded_by_connect_timeout(servers: Callable[..., BackendServer]) -> None:
    good = servers("good")

    def hanging(timeout: float) -> socket.socket:
        time.sleep(timeout)
        raise TimeoutError("connect timed out")

    with Forwarder(("127.0.0.1", 0), connect_timeout=0.2) as fwd:
        fwd.set_backends([Backend(id="slow", connect=hanging), good.backend()])
        started = time.monotonic()
        answers = [request(fwd) for _ in range(2)]
        elapsed = time.monotonic() - started
    assert sorted(answers) == [b"good\n", b"good\n"]
    assert elapsed < 2.0


def test_empty_set_closes_clients_without_refusing(forwarder: Forwarder) -> None:
    # The listener is bound, so the connect succeeds; the client is closed, not refused.
    assert refused_request(forwarder) == b""
    assert wait_for(lambda: forwarder.stats().dropped == 1)


def test_a_slow_backend_connect_does_not_stall_other_clients(servers: Callable[..., BackendServer]) -> None:
    fast = servers("fast")
    release = threading.Event()

    def gated(timeout: float) -> socket.socket:
        release.wait(timeout)
        return socket.create_connection(("127.0.0.1", fast.port), timeout=timeout)

    with Forwarder(("127.0.0.1", 0), connect_timeout=5.0) as fwd:
        fwd.set_backends([Backend(id="gated", connect=gated)])
        waiting = socket.create_connection(_addr(fwd), timeout=5)
        waiting.sendall(b"ping\n")
        assert wait_for(lambda: fwd.stats().backends[0].connecting == 1)
        fwd.set_backends([fast.backend()])
        assert request(fwd) == b"fast\n"  # served while the first connect still hangs
        release.set()
        assert _read_all(waiting) == b"fast\n"
        waiting.close()


# -- many connections, bounded resources ---------------------------------------------------------------


@pytest.mark.slow
def test_hundreds_of_concurrent_connections(servers: Callable[..., BackendServer]) -> None:
    a, b = servers("a", echo_lines_handler), servers("b", echo_lines_handler)
    with Forwarder(("127.0.0.1", 0), connect_workers=8) as fwd:
        fwd.set_backends([a.backend(), b.backend()])
        clients = [socket.create_connection(_addr(fwd), timeout=10) for _ in range(300)]
        try:
            for i, c in enumerate(clients):
                c.sendall(f"{i}\n".encode())
            names = []
            for i, c in enumerate(clients):
                line = _read_line(c)
                name, _, rest = line.partition(b":")
                assert rest == f"{i}\n".encode()
                names.append(name)
            assert names.count(b"a") == names.count(b"b") == 150
            st = fwd.stats()
            assert st.open == 300
            assert [(r.id, r.open) for r in st.backends] == [("a", 150), ("b", 150)]
        finally:
            for c in clients:
                c.close()
        assert wait_for(lambda: fwd.stats().open == 0)


def test_max_connections_queues_instead_of_refusing(servers: Callable[..., BackendServer]) -> None:
    a = servers("a", echo_lines_handler)
    with Forwarder(("127.0.0.1", 0), max_connections=2) as fwd:
        fwd.set_backends([a.backend()])
        c1 = socket.create_connection(_addr(fwd), timeout=5)
        c2 = socket.create_connection(_addr(fwd), timeout=5)
        for c in (c1, c2):
            c.sendall(b"x\n")
            assert _read_line(c) == b"a:x\n"
        c3 = socket.create_connection(_addr(fwd), timeout=5)  # accepted by the kernel, waits
        c3.sendall(b"y\n")
        c3.settimeout(0.3)
        with pytest.raises(TimeoutError):
            c3.recv(10)
        assert fwd.stats().accepted == 2
        c1.close()
        c3.settimeout(5)
        assert _read_line(c3) == b"a:y\n"
        c2.close()
        c3.close()


def test_stalled_client_does_not_grow_buffers_without_bound(servers: Callable[..., BackendServer]) -> None:
    sent = []

    def firehose(server: BackendServer, sock: socket.socket) -> None:
        sock.settimeout(0.5)
        chunk = b"z" * 65536
        total = 0
        try:
            while total < 64 * 1024 * 1024:
                sock.sendall(chunk)
                total += len(chunk)
        except OSError:
            pass
        sent.append(total)

    a = servers("a", firehose)
    with Forwarder(("127.0.0.1", 0), buffer_size=16 * 1024) as fwd:
        fwd.set_backends([a.backend()])
        c = socket.create_connection(_addr(fwd), timeout=5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert wait_for(lambda: bool(sent), timeout=10)  # the backend was blocked by back-pressure
        c.close()
    # Only socket buffers (kernel-sized) and one 16 KiB forwarder buffer absorbed the stream.
    assert sent[0] < 16 * 1024 * 1024


def test_no_fd_or_thread_leak(servers: Callable[..., BackendServer]) -> None:
    gc.collect()  # sockets of earlier tests must not close in the middle of the count
    baseline_fds = _open_fds()
    baseline_threads = threading.active_count()
    a = BackendServer("a", echo_lines_handler)
    b = BackendServer("b", name_handler)
    fwd = Forwarder(("127.0.0.1", 0))
    fwd.start()
    try:
        fwd.set_backends([a.backend(), _refusing_backend("dead")])
        held = socket.create_connection(_addr(fwd), timeout=5)
        held.sendall(b"x\n")
        assert _read_line(held) == b"a:x\n"
        fwd.set_backends([b.backend()])
        for _ in range(50):
            assert request(fwd) == b"b\n"
        for _ in range(20):  # clients that vanish without a word
            socket.create_connection(_addr(fwd), timeout=5).close()
        assert _open_fds() > baseline_fds
    finally:
        fwd.stop()  # closes the held connection's forwarder side too
        held.close()
        a.stop()
        b.stop()
    gc.collect()
    assert _open_fds() <= baseline_fds
    assert wait_for(lambda: threading.active_count() <= baseline_threads)


# -- listening and errors ------------------------------------------------------------------------------


def test_listen_on_ipv6_loopback(servers: Callable[..., BackendServer]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 is not configured")
    a = servers("a")
    with Forwarder(("::1", 0)) as fwd:
        fwd.set_backends([a.backend()])
        host, port = _addr(fwd)
        assert host == "::1"
        with socket.create_connection(("::1", port), timeout=5) as c:
            c.sendall(b"ping\n")
            assert _read_all(c) == b"a\n"


def test_listen_on_a_unix_socket(tmp_path: os.PathLike[str], servers: Callable[..., BackendServer]) -> None:
    a = servers("a", echo_to_eof_handler)
    path = os.path.join(tmp_path, "svc.sock")
    with Forwarder(path) as fwd:
        fwd.set_backends([a.backend()])
        assert fwd.address == path
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(path)
            c.sendall(b"over unix")
            c.shutdown(socket.SHUT_WR)
            assert _read_all(c) == b"a:over unix"
    assert not os.path.exists(path)


def test_address_in_use_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        fwd = Forwarder(("127.0.0.1", port))
        with pytest.raises(ForwarderError) as info:
            fwd.start()
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: Address already in use "
        "(hint: another process may hold the port; the service address must be free)"
    )


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        (
            [
                Backend(id="a", connect=lambda t: socket.socket()),
                Backend(id="a", connect=lambda t: socket.socket()),
            ],
            "backend id 'a' appears twice in the set (hint: backend ids must be unique)",
        ),
        (["127.0.0.1:80"], "not a Backend: '127.0.0.1:80'"),
    ],
)
def test_bad_backend_sets_are_refused(forwarder: Forwarder, backends: list[Backend], message: str) -> None:
    forwarder.set_backends([])
    with pytest.raises(ForwarderError) as info:
        forwarder.set_backends(backends)
    assert str(info.value) == message
    assert forwarder.backends() == ()  # a refused set leaves the old one in place


def test_lifecycle_errors() -> None:
    fwd = Forwarder(("127.0.0.1", 0))
    with pytest.raises(ForwarderError, match="not started"):
        _ = fwd.address
    fwd.stop()  # stopping a forwarder never started is a no-op
    fwd.start()
    with pytest.raises(ForwarderError, match="already started"):
        fwd.start()
    fwd.stop()
    fwd.stop()  # idempotent


def test_stats_is_a_frozen_snapshot(forwarder: Forwarder) -> None:
    st = forwarder.stats()
    assert isinstance(st, ForwarderStats)
    with pytest.raises(AttributeError):
        st.accepted = 5  # type: ignore[misc]
