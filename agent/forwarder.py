"""The agent's traffic switch: a small TCP forwarder in front of a service's instances.

Each service in a release has one stable address on the host (``127.0.0.1:8080``). The data plane
(:mod:`agent.dataplane`: its own process, which outlives the agent) binds it ONCE and moves it
between instances by swapping the backend set; the listening socket never closes during a switch,
so a client never sees a refused connection. Open connections stay on the backend they were given
until one side closes them; :meth:`Forwarder.drain` waits for that. A forwarder can also start on a
listening socket handed over by another process (``sock=``), and give its own up
(:meth:`Forwarder.release_listener`) while its connections finish: that is how one data plane
process replaces another without closing the address. ``docs/traffic.md`` explains the choices.

A backend is reached through an injected connector, ``connect(timeout) -> socket``: tests use plain
loopback sockets, the agent uses ``agent.netns.connect_in_netns`` to reach 127.0.0.1:PORT inside an
instance's network namespace (no bridge, no veth, no routing).

Design: one background thread runs a ``selectors`` loop that accepts and shuttles bytes for every
connection (bounded buffers, half-close propagated with ``shutdown(SHUT_WR)``). Backend connects are
blocking calls into the connector (setns needs a thread of its own), so they run in a small thread
pool and hand the connected socket back to the loop; the loop never blocks on a backend.

::

    Forwarder(listen, ...)      .start()  .set_backends([...])  .drain(id, timeout)  .stats()  .stop()
    Backend(id=..., connect=...)            Backend.tcp(id, host, port) for a plain TCP address
    ForwarderStats / BackendStats           a snapshot: open connections per backend, totals, errors
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from agent.errors import AgentError
from manifests.errors import UnavailableError

__all__ = [
    "Backend",
    "BackendStats",
    "ForwarderStats",
    "Forwarder",
    "ForwarderError",
    "Listen",
]

#: A TCP address ``(host, port)`` (IPv4 or IPv6 literal or name; port 0 picks a free one) or a Unix
#: socket path.
Listen = tuple[str, int] | str

Connector = Callable[[float], socket.socket]

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
_MAX_ACCEPT_BURST: Final = 64
_SELECT_TIMEOUT: Final = 0.5


class ForwarderError(AgentError, UnavailableError):
    """The forwarder could not do what was asked (bind, start, a bad backend set)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One instance behind a service address: an id (unique in a set) and how to connect to it.

    ``connect(timeout)`` returns a connected stream socket or raises (``OSError`` or a kiln error);
    it must give up within ``timeout`` seconds.
    """

    id: str
    connect: Connector

    @classmethod
    def tcp(cls, id: str, host: str, port: int) -> Backend:
        """A backend at a plain TCP address (loopback in tests, a host port for an engine)."""

        def connect(timeout: float) -> socket.socket:
            return socket.create_connection((host, port), timeout=timeout)

        return cls(id=id, connect=connect)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStats:
    """Counters for one backend id (kept while it is in the set or still has connections)."""

    id: str
    in_set: bool  # part of the current backend set
    open: int  # connections established and not yet closed
    connecting: int  # connects under way for new clients
    total: int  # connections ever established to it
    connect_failures: int  # connect attempts that failed (the client fell through to the next backend)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwarderStats:
    """A snapshot of the forwarder's state."""

    backends: tuple[BackendStats, ...]  # current set first (in order), then ones still draining
    accepted: int  # client connections accepted
    open: int  # client connections open (waiting for a backend or forwarding)
    dropped: int  # clients closed because no backend in the set answered (or the set was empty)
    connect_failures: int  # failed connect attempts, all backends
    stream_errors: int  # connections ended by a socket error (reset, broken pipe) rather than by EOF
    bytes_up: int  # client -> backend
    bytes_down: int  # backend -> client

    def backend(self, backend_id: str) -> BackendStats | None:
        for b in self.backends:
            if b.id == backend_id:
                return b
        return None


class _Counters:
    """Mutable per-backend counters; guarded by the forwarder's lock."""

    __slots__ = ("connect_failures", "connecting", "open", "total")

    def __init__(self) -> None:
        self.open = 0
        self.connecting = 0
        self.total = 0
        self.connect_failures = 0


class _Conn:
    """One forwarded connection: side 0 is the client, side 1 the backend.

    ``bufs[i]`` holds bytes read from side ``i`` not yet written to the other side. ``eof[i]`` means
    side ``i`` sent EOF; ``shut[i]`` means we have shut down writing towards side ``i``.
    """

    __slots__ = ("backend_id", "bufs", "closed", "eof", "masks", "shut", "socks")

    def __init__(self, client: socket.socket, upstream: socket.socket, backend_id: str) -> None:
        self.socks = (client, upstream)
        self.backend_id = backend_id
        self.bufs = (bytearray(), bytearray())
        self.eof = [False, False]
        self.shut = [False, False]
        self.masks = [0, 0]
        self.closed = False


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_LISTENER: Final = _Marker("listener")
_WAKER: Final = _Marker("waker")


class Forwarder:
    """A TCP forwarder (one per service address); see the module docstring.

    ``connect_timeout`` bounds each backend connect attempt, ``max_attempts`` how many backends of the
    set a new client may try before it is closed, ``buffer_size`` each direction's buffer per
    connection, ``max_connections`` how many clients are served at once (beyond that, new clients wait
    in the kernel's accept backlog, they are not refused), ``connect_workers`` how many backend connects
    run at once.
    """

    def __init__(
        self,
        listen: Listen,
        *,
        connect_timeout: float = 2.0,
        max_attempts: int = 4,
        buffer_size: int = 64 * 1024,
        max_connections: int = 4096,
        connect_workers: int = 8,
        backlog: int = 1024,
        name: str = "kiln-forwarder",
        sock: socket.socket | None = None,
    ) -> None:
        if connect_timeout <= 0 or max_attempts < 1 or buffer_size < 1 or max_connections < 1:
            raise ValueError("connect_timeout, max_attempts, buffer_size, max_connections must be positive")
        if connect_workers < 1 or backlog < 1:
            raise ValueError("connect_workers and backlog must be positive")
        self._listen = listen
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._buffer_size = buffer_size
        self._max_connections = max_connections
        self._connect_workers = connect_workers
        self._backlog = backlog
        self._name = name
        self._given = sock  # a listening socket handed over by another process (fd passing)
        self._release = threading.Event()

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._backends: tuple[Backend, ...] = ()
        self._rr = itertools.count()
        self._counters: dict[str, _Counters] = {}
        self._accepted = 0
        self._dropped = 0
        self._connect_failures = 0
        self._stream_errors = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._client_count = 0

        # Owned by the loop thread once started.
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._results: queue.SimpleQueue[tuple[int, str | None, socket.socket | None]] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: dict[int, socket.socket] = {}
        self._conns: set[_Conn] = set()
        self._tokens = itertools.count(1)
        self._accepting = False
        self._address: Listen | None = None
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def address(self) -> Listen:
        """The bound address: ``(host, port)`` with the real port, or the Unix socket path."""
        if self._address is None:
            raise ForwarderError("the forwarder is not started", hint="call start() first")
        return self._address

    def start(self) -> None:
        """Bind the listening socket (once, for the forwarder's whole life) and start serving."""
        if self._started:
            raise ForwarderError("the forwarder was already started", hint="create a new Forwarder")
        self._started = True
        listener = self._bind() if self._given is None else self._adopt(self._given)
        try:
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
        except OSError:
            listener.close()
            raise
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, _READ, _WAKER)
        selector.register(listener, _READ, _LISTENER)
        self._listener, self._selector = listener, selector
        self._wake_r, self._wake_w = wake_r, wake_w
        self._accepting = True
        self._pool = ThreadPoolExecutor(
            max_workers=self._connect_workers, thread_name_prefix=f"{self._name}-connect"
        )
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, and release every socket and thread."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            # Connect attempts under way end within connect_timeout; their sockets are closed below.
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_results()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> Forwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------------------------

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Switch atomically: new clients go to ``backends`` (round-robin) from now on.

        Connections already open keep flowing to the backend they were given. An empty set is
        allowed (new clients are closed at once) but a blue-green switch should never need it.
        """
        new = tuple(backends)
        seen: set[str] = set()
        for b in new:
            if not isinstance(b, Backend):
                raise ForwarderError(f"not a Backend: {b!r}")
            if b.id in seen:
                raise ForwarderError(
                    f"backend id {b.id!r} appears twice in the set", hint="backend ids must be unique"
                )
            seen.add(b.id)
        with self._changed:
            self._backends = new
            for b in new:
                self._counters.setdefault(b.id, _Counters())
            for bid in [bid for bid, c in self._counters.items() if bid not in seen]:
                c = self._counters[bid]
                if c.open == 0 and c.connecting == 0:
                    del self._counters[bid]
            self._changed.notify_all()

    def backends(self) -> tuple[Backend, ...]:
        with self._lock:
            return self._backends

    def drain(self, backend_id: str, timeout: float) -> bool:
        """Wait until no connection uses ``backend_id`` (open or connecting); False on timeout.

        Call it after switching the backend out of the set: while it is still in the set, new
        clients keep arriving and the wait is likely to time out.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                c = self._counters.get(backend_id)
                if c is None or (c.open == 0 and c.connecting == 0):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)

    def close_backend_connections(self, backend_id: str) -> None:
        """Ask the loop to close every open connection to ``backend_id`` (after a drain timed out)."""
        self._commands.put(backend_id)
        self._wake()

    def listener_fd(self) -> int:
        """The listening socket's fd, to hand to another process (``SCM_RIGHTS``) that then accepts
        on the same socket: the address never closes while two processes take turns."""
        if self._listener is None:
            raise ForwarderError("the forwarder is not listening")
        return self._listener.fileno()

    def release_listener(self, timeout: float = 10.0) -> None:
        """Stop accepting and close this process's copy of the listening socket, keeping the open
        connections: after a handover, the process that received the socket accepts alone."""
        if not self._started or self._stopped:
            return
        self._release.set()
        self._wake()
        deadline = time.monotonic() + timeout
        while self._listener is not None and time.monotonic() < deadline:
            time.sleep(0.005)

    def stats(self) -> ForwarderStats:
        with self._lock:
            in_set = [b.id for b in self._backends]
            order = in_set + sorted(bid for bid in self._counters if bid not in set(in_set))
            rows = []
            for bid in order:
                c = self._counters[bid]
                rows.append(
                    BackendStats(
                        id=bid,
                        in_set=bid in in_set,
                        open=c.open,
                        connecting=c.connecting,
                        total=c.total,
                        connect_failures=c.connect_failures,
                    )
                )
            return ForwarderStats(
                backends=tuple(rows),
                accepted=self._accepted,
                open=self._client_count,
                dropped=self._dropped,
                connect_failures=self._connect_failures,
                stream_errors=self._stream_errors,
                bytes_up=self._bytes_up,
                bytes_down=self._bytes_down,
            )

    # -- binding -------------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        listen = self._listen
        if isinstance(listen, str):
            return self._bind_unix(listen)
        host, port = listen
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise ForwarderError(
                f"cannot resolve listen address {host!r}: {exc}", hint="use an IP literal such as 127.0.0.1"
            ) from exc
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(self._backlog)
        except OSError as exc:
            sock.close()
            raise ForwarderError(
                f"cannot listen on {_show(listen)}: {exc.strerror or exc}",
                hint="another process may hold the port; the service address must be free",
            ) from exc
        bound = sock.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        return sock

    def _adopt(self, sock: socket.socket) -> socket.socket:
        if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
            raise ForwarderError("the socket handed over is not a listening stream socket")
        bound = sock.getsockname()
        self._address = bound if isinstance(bound, str) else (str(bound[0]), int(bound[1]))
        return sock

    def _bind_unix(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(self._backlog)
        except OSError as exc:
            sock.close()
            raise ForwarderError(
                f"cannot listen on {path}: {exc.strerror or exc}",
                hint="remove a stale socket file only if no process serves it",
            ) from exc
        self._address = path
        return sock

    # -- the loop ------------------------------------------------------------------------------------

    def _wake(self) -> None:
        sock = self._wake_w
        if sock is None:
            return
        # Full buffer: a wake-up is already pending. Closed: the loop is gone.
        with contextlib.suppress(BlockingIOError, OSError):
            sock.send(b"\0")

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None  # noqa: S101 - set by start() before the thread runs
        try:
            while not self._stopping.is_set():
                for key, mask in selector.select(_SELECT_TIMEOUT):
                    data = key.data
                    if data is _LISTENER:
                        self._accept()
                    elif data is _WAKER:
                        self._drain_waker()
                    else:
                        conn, side = data
                        if not conn.closed:
                            self._service(conn, side, mask)
                self._take_results()
                self._take_commands()
                if self._release.is_set():
                    self._drop_listener()
                self._update_accepting()
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        for conn in list(self._conns):
            self._close(conn, error=False)
        for token in list(self._pending):
            self._drop_pending(token)
        if self._selector is not None:
            self._selector.close()
        if self._listener is not None:
            self._listener.close()
            if isinstance(self._listen, str) and self._given is None:
                with contextlib.suppress(OSError):
                    os.unlink(self._listen)

    def _drop_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        assert self._selector is not None  # noqa: S101
        if self._accepting:
            self._selector.unregister(listener)
            self._accepting = False
        self._listener = None
        listener.close()  # this process's copy only: the socket lives on where it was handed

    def _drain_waker(self) -> None:
        assert self._wake_r is not None  # noqa: S101
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass

    def _update_accepting(self) -> None:
        assert self._selector is not None  # noqa: S101
        if self._listener is None:  # released after a handover
            return
        busy = len(self._pending) + len(self._conns)
        if self._accepting and busy >= self._max_connections:
            self._selector.unregister(self._listener)
            self._accepting = False
        elif not self._accepting and busy < self._max_connections:
            self._selector.register(self._listener, _READ, _LISTENER)
            self._accepting = True

    def _accept(self) -> None:
        assert self._pool is not None  # noqa: S101
        if self._listener is None:
            return
        for _ in range(_MAX_ACCEPT_BURST):
            if len(self._pending) + len(self._conns) >= self._max_connections:
                return
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ECONNABORTED and friends: the client gave up before we accepted it. Resource
                # exhaustion (EMFILE) must not spin: stop this burst and retry on the next event.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.01)
                    return
                continue
            client.setblocking(False)
            _nodelay(client)
            with self._lock:
                self._accepted += 1
                self._client_count += 1
                empty = not self._backends
                start = next(self._rr)
            if empty:
                with self._lock:
                    self._dropped += 1
                    self._client_count -= 1
                client.close()
                continue
            token = next(self._tokens)
            self._pending[token] = client
            try:
                self._pool.submit(self._connect, token, start)
            except RuntimeError:  # the pool is shutting down: we are stopping
                self._drop_pending(token)
                return

    def _pick(self, start: int, tried: set[str]) -> Backend | None:
        """Choose the next backend to try from the CURRENT set and count it as connecting.

        Both happen under the lock that :meth:`set_backends` takes, so a backend switched out of the
        set is either never picked again or already counted, and :meth:`drain` cannot miss it.
        """
        with self._lock:
            backends = self._backends
            n = len(backends)
            for k in range(n):
                backend = backends[(start + k) % n]
                if backend.id not in tried:
                    self._counters.setdefault(backend.id, _Counters()).connecting += 1
                    return backend
            return None

    def _connect(self, token: int, start: int) -> None:
        """Runs in the connect pool: try backends of the set from ``start`` on, a bounded number."""
        tried: set[str] = set()
        for _ in range(self._max_attempts):
            if self._stopping.is_set():
                break
            backend = self._pick(start, tried)
            if backend is None:
                break
            tried.add(backend.id)
            sock: socket.socket | None = None
            try:
                sock = backend.connect(self._connect_timeout)
                sock.setblocking(False)
            except Exception:  # noqa: BLE001 - an injected connector's failure means "try the next one"
                if sock is not None:
                    sock.close()
                with self._changed:
                    c = self._counters[backend.id]
                    c.connecting -= 1
                    c.connect_failures += 1
                    self._connect_failures += 1
                    self._changed.notify_all()
                continue
            _nodelay(sock)
            self._results.put((token, backend.id, sock))
            self._wake()
            return
        self._results.put((token, None, None))
        self._wake()

    def _take_results(self) -> None:
        while True:
            try:
                token, backend_id, upstream = self._results.get_nowait()
            except queue.Empty:
                return
            client = self._pending.pop(token, None)
            if backend_id is None or upstream is None:
                if client is not None:
                    with self._lock:
                        self._dropped += 1
                        self._client_count -= 1
                    client.close()
                continue
            with self._changed:
                c = self._counters.setdefault(backend_id, _Counters())
                c.connecting -= 1
                if client is not None:
                    c.open += 1
                    c.total += 1
                self._changed.notify_all()
            if client is None:  # pragma: no cover - pending entries only leave through here or at stop
                upstream.close()
                continue
            conn = _Conn(client, upstream, backend_id)
            self._conns.add(conn)
            self._update_interest(conn)

    def _close_results(self) -> None:
        """After the loop and the pool are gone: close sockets connects handed back too late."""
        while True:
            try:
                _, backend_id, upstream = self._results.get_nowait()
            except queue.Empty:
                return
            if upstream is not None:
                upstream.close()
            if backend_id is not None:
                with self._lock:
                    c = self._counters.get(backend_id)
                    if c is not None:
                        c.connecting -= 1

    def _take_commands(self) -> None:
        while True:
            try:
                backend_id = self._commands.get_nowait()
            except queue.Empty:
                return
            for conn in [c for c in self._conns if c.backend_id == backend_id]:
                self._close(conn, error=False)

    def _drop_pending(self, token: int) -> None:
        client = self._pending.pop(token, None)
        if client is not None:
            with self._lock:
                self._client_count -= 1
            client.close()

    # -- moving bytes --------------------------------------------------------------------------------

    def _service(self, conn: _Conn, side: int, mask: int) -> None:
        other = 1 - side
        try:
            if mask & _WRITE:
                self._flush(conn, other)
            if mask & _READ:
                self._read(conn, side)
            self._propagate_eof(conn)
        except OSError:
            self._close(conn, error=True)
            return
        if conn.shut[0] and conn.shut[1]:
            self._close(conn, error=False)
            return
        self._update_interest(conn)

    def _read(self, conn: _Conn, side: int) -> None:
        buf = conn.bufs[side]
        room = self._buffer_size - len(buf)
        if room <= 0 or conn.eof[side]:
            return
        try:
            data = conn.socks[side].recv(room)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            conn.eof[side] = True
            return
        buf += data
        with self._lock:
            if side == 0:
                self._bytes_up += len(data)
            else:
                self._bytes_down += len(data)
        # Forward at once when possible; what does not fit waits for the write event.
        self._flush(conn, side)

    def _flush(self, conn: _Conn, src: int) -> None:
        """Write what was read from side ``src`` to the other side."""
        buf = conn.bufs[src]
        if not buf:
            return
        try:
            sent = conn.socks[1 - src].send(buf)
        except (BlockingIOError, InterruptedError):
            return
        del buf[:sent]

    def _propagate_eof(self, conn: _Conn) -> None:
        for src in (0, 1):
            dst = 1 - src
            if conn.eof[src] and not conn.bufs[src] and not conn.shut[dst]:
                conn.socks[dst].shutdown(socket.SHUT_WR)
                conn.shut[dst] = True

    def _update_interest(self, conn: _Conn) -> None:
        assert self._selector is not None  # noqa: S101
        for side in (0, 1):
            want = 0
            if not conn.eof[side] and len(conn.bufs[side]) < self._buffer_size:
                want |= _READ
            if conn.bufs[1 - side]:
                want |= _WRITE
            have = conn.masks[side]
            if want == have:
                continue
            sock = conn.socks[side]
            if have == 0:
                self._selector.register(sock, want, (conn, side))
            elif want == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, want, (conn, side))
            conn.masks[side] = want

    def _close(self, conn: _Conn, *, error: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        assert self._selector is not None  # noqa: S101
        for side in (0, 1):
            if conn.masks[side]:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(conn.socks[side])
                conn.masks[side] = 0
            conn.socks[side].close()
        with self._changed:
            c = self._counters.get(conn.backend_id)
            if c is not None:
                c.open -= 1
                if c.open == 0 and c.connecting == 0 and all(b.id != conn.backend_id for b in self._backends):
                    del self._counters[conn.backend_id]
            self._client_count -= 1
            if error:
                self._stream_errors += 1
            self._changed.notify_all()


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _show(listen: Listen) -> str:
    if isinstance(listen, str):
        return listen
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
