"""The agent's local status endpoint: HTTP on a Unix socket (``STATE/agent.sock``, mode 0600) and,
optionally, on a loopback TCP port.

::

    GET  /status     the status document (JSON, :func:`status_document`): release, previous,
                     instances and their health (``state`` ``serving``), the ``standby`` instances
                     (``keep_previous``: release, ``until``), the release source's state, last refusal
    GET  /metrics    Prometheus text: kiln_agent_reconciles_total, kiln_agent_refusals_total{reason},
                     kiln_agent_rollouts_total{result}, kiln_agent_rollbacks_total,
                     kiln_agent_verify_bytes_per_second, kiln_agent_standby_instances{service},
                     kiln_agent_standby_until_seconds{service,instance,release}, ...
    POST /rollback   the operator's rollback, run by the agent that owns the instances (Unix socket only)
    POST /reconcile  wake the loop for a reconcile now (``kiln agent reconcile --now``; Unix socket only)
    POST /chaos?kill_rate=1/h&min_healthy=1&seconds=600   the operator's chaos policy for this host
                     (``?off=1``: back to the release's); Unix socket only

Requests are small and bounded: only the request line and headers are read (the http.server
limits), bodies are ignored, each connection has a timeout.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.journal import JournalState, ReleaseRef, SourceState
from agent.standby import Standby, standby_of
from manifests.agentconfig import AgentConfig
from manifests.errors import KilnError

__all__ = ["SOCKET_FILE", "StatusServer", "query", "status_document"]

SOCKET_FILE = "agent.sock"
_MAX_REPLY = 4 * 1024 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Any
    timeout = 5.0

    def do_GET(self) -> None:
        app: StatusServer = self.server.app
        if self.path == "/status":
            self._send(200, json.dumps(app.status(), sort_keys=True).encode(), "application/json")
        elif self.path == "/metrics":
            self._send(200, app.metrics().encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def do_POST(self) -> None:
        app: StatusServer = self.server.app
        path, _, query = self.path.partition("?")
        if path == "/reconcile" and self.server.allow_control and app.wake is not None:
            app.wake()
            self._send(202, b'{"woken": true}', "application/json")
            return
        if path == "/chaos" and self.server.allow_control and app.chaos is not None:
            self._control(lambda: app.chaos(dict(urllib.parse.parse_qsl(query[:1024]))))  # type: ignore[misc]
            return
        if path != "/rollback" or not self.server.allow_control:
            self._send(404, b'{"error": "not found"}', "application/json")
            return
        if app.rollback is None:
            self._send(503, b'{"error": "rollback is not available"}', "application/json")
            return
        self._control(app.rollback)

    def _control(self, action: Callable[[], dict[str, Any]]) -> None:
        try:
            body = action()
        except KilnError as exc:
            self._send(409, json.dumps({"error": exc.message, "hint": exc.hint}).encode(), "application/json")
            return
        self._send(200, json.dumps(body, sort_keys=True).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, _ = self.socket.accept()
        return sock, ("local", 0)


class _TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class StatusServer:
    """Serves ``status()`` and ``metrics()`` until :meth:`stop`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        status: Callable[[], dict[str, Any]],
        metrics: Callable[[], str],
        rollback: Callable[[], dict[str, Any]] | None = None,
        chaos: Callable[[dict[str, str]], dict[str, Any]] | None = None,
        tcp: tuple[str, int] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(state_dir) / SOCKET_FILE
        self.status = status
        self.metrics = metrics
        self.rollback = rollback
        self.wake = wake
        self.chaos = chaos
        self._tcp = tcp
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            unix = _UnixServer(str(self.path), _Handler)
        finally:
            os.umask(old)
        unix.app = self  # type: ignore[attr-defined]
        unix.allow_control = True  # type: ignore[attr-defined]
        self._servers.append(unix)
        if self._tcp is not None:
            tcp = _TcpServer(self._tcp, _Handler)
            tcp.app = self  # type: ignore[attr-defined]
            tcp.allow_control = False  # type: ignore[attr-defined]
            self._servers.append(tcp)
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(5)
        self._servers.clear()
        self._threads.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> StatusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def status_document(
    st: JournalState,
    *,
    instances: list[dict[str, Any]],
    metrics: dict[str, Any] | None,
    config: AgentConfig,
    source: SourceState | None = None,
) -> dict[str, Any]:
    """The ``/status`` and ``kiln agent status --json`` document."""

    def ref(r: ReleaseRef | None) -> dict[str, Any] | None:
        return r.to_dict() if r is not None else None

    for entry in instances:
        entry.setdefault("state", "serving")
    src = (source or SourceState()).to_dict()
    src["source"] = src["source"] or config.source
    return {
        "channel": config.channel,
        "group": config.group,
        "runtime": config.runtime.value,
        "seq": st.seq,
        "root_version": st.root_version,
        "release": ref(st.good),
        "previous": ref(st.previous),
        "highest_accepted": ref(st.highest),
        "rollout": {"to": ref(st.rollout_to), "from": ref(st.rollout_from)} if st.rolling_out else None,
        "instances": instances,
        "standby": [_standby_entry(item) for item in standby_of(st)],
        "failures": [f.to_dict() for f in st.failures],
        "last_refusal": st.last_refusal.to_dict() if st.last_refusal is not None else None,
        "source": src,
        "metrics": metrics,
    }


def _standby_entry(item: Standby) -> dict[str, Any]:
    """A standby instance (``keep_previous``): running out of rotation until ``until`` (wall
    seconds), when it is stopped unless a rollback inside the window switches back to it."""
    rec = item.record
    return {
        "id": rec.id,
        "service": rec.service,
        "release": rec.release,
        "image": rec.image,
        "started_at": rec.started_at,
        "state": "standby",
        "until": item.until,
    }


def query(state_dir: Path, path: str, *, method: str = "GET", timeout: float = 60.0) -> tuple[int, bytes]:
    """One request to a running agent's Unix socket; OSError when no agent answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(Path(state_dir) / SOCKET_FILE))
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: kiln-agent\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
            if len(data) > _MAX_REPLY:
                raise OSError("reply from the agent is too large")
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError("not an HTTP reply from the agent") from None
    return status, body
