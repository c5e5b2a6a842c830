"""The embedded data plane process: kiln's forwarders, outside the agent, driven over a socket.

``python -m agent.dataplane --state STATE`` (started detached by
:class:`agent.dataplane.embedded.ProcessDataPlane`, in a session of its own) holds one
:class:`agent.forwarder.Forwarder` per service address and answers the control protocol of
:mod:`agent.dataplane.wire` on ``STATE/dataplane.sock``. It never reads the journal and decides
nothing: it serves what it was last told until told otherwise, so it keeps every address open
while the agent is gone. Backends are reached inside their instance's network namespace
(:func:`agent.netns.connect_in_netns`).

Replacement (``--takeover``, when the agent finds a data plane of another protocol version): the
new process asks the old one for a ``handover`` and receives its state and its LISTENING SOCKETS
(``SCM_RIGHTS``); both now accept on the same sockets (one accept queue, nothing is refused or
reset). The new process then moves the control socket's name to itself (``rename``) and tells the
old one to ``retire``: it closes its copies of the listeners, lets its open connections finish
(bounded by ``retire_timeout``) and exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.dataplane import DataPlaneError, ServiceView, Target, parse_listen
from agent.dataplane.wire import MAX_FDS, MAX_REPLY, MAX_REQUEST, PROTOCOL_VERSION, SOCKET_FILE, receive, send
from agent.forwarder import Backend, Forwarder
from agent.netns import connect_in_netns
from manifests.errors import KilnError
from manifests.version import VERSION

__all__ = ["DataPlaneServer", "PID_FILE", "run_dir"]

PID_FILE: Final = "pid"
MAX_SERVICES: Final = 1024
MAX_BACKENDS: Final = 1024
MAX_DRAIN: Final = 300.0
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_CONTROL_TIMEOUT: Final = 30.0
_HANDOVER_WAIT: Final = 60.0


def run_dir(state_dir: Path) -> Path:
    """``STATE/dataplane``: the process's pid file and log."""
    return Path(state_dir) / "dataplane"


def _connector(target: Target) -> Callable[[float], socket.socket]:
    if target.netns:

        def in_netns(timeout: float) -> socket.socket:
            return connect_in_netns(target.netns, target.host, target.port, timeout)

        return in_netns

    def on_host(timeout: float) -> socket.socket:
        return socket.create_connection((target.host, target.port), timeout=timeout)

    return on_host


@dataclass(slots=True)
class _Served:
    listen: tuple[str, int]
    targets: tuple[Target, ...]
    forwarder: Forwarder


class DataPlaneServer:
    """The process's state and its control loop (module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        protocol: int = PROTOCOL_VERSION,
        connect_timeout: float = 1.0,
        retire_timeout: float = 30.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SOCKET_FILE
        self.protocol = protocol
        self.connect_timeout = connect_timeout
        self.retire_timeout = retire_timeout
        self._log = log or (lambda line: print(f"kiln dataplane[{os.getpid()}]: {line}", file=sys.stderr))
        self._lock = threading.Lock()
        self._services: dict[str, _Served] = {}
        self._done = threading.Event()
        self._control: socket.socket | None = None
        self._control_ino: int | None = None
        self._retired = False

    # -- the process ---------------------------------------------------------------------------------

    def run(self, *, takeover: bool = False) -> int:
        """Serve until ``stop`` (or SIGTERM), or until retired by a successor; the exit code."""
        run_dir(self.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        predecessor = self._take_over() if takeover else None
        self._bind_control()
        _write_pid(run_dir(self.state_dir) / PID_FILE)
        if predecessor is not None:
            with contextlib.suppress(OSError, DataPlaneError):
                send(predecessor, {"v": PROTOCOL_VERSION, "op": "retire"})
                receive(predecessor, MAX_REPLY)
            predecessor.close()
        self._log(f"serving {len(self._services)} addresses (protocol {self.protocol}, kiln {VERSION})")
        signal.signal(signal.SIGTERM, lambda *_: self._done.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert self._control is not None  # noqa: S101
        with selectors.DefaultSelector() as sel:
            sel.register(self._control, selectors.EVENT_READ)
            while not self._done.is_set():
                if not sel.select(0.2):
                    continue
                try:
                    conn, _ = self._control.accept()
                except OSError:
                    continue
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        self._shutdown()
        return 0

    def _bind_control(self) -> None:
        tmp = self.path.with_name(f".{SOCKET_FILE}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        sock.listen(64)
        sock.setblocking(False)
        self._control_ino = os.stat(tmp).st_ino
        os.replace(tmp, self.path)  # atomically the data plane that answers from now on
        self._control = sock

    def _shutdown(self) -> None:
        with self._lock:
            served = list(self._services.values())
            self._services.clear()
        if self._retired:
            self._wait_connections(served)
        for s in served:
            s.forwarder.stop()
        if self._control is not None:
            self._control.close()
        if not self._retired:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._control_ino:
                    self.path.unlink()
            pid = run_dir(self.state_dir) / PID_FILE
            with contextlib.suppress(OSError):
                if pid.read_text().strip() == str(os.getpid()):
                    pid.unlink()
        self._log("retired" if self._retired else "stopped")

    def _wait_connections(self, served: list[_Served]) -> None:
        deadline = time.monotonic() + self.retire_timeout
        while time.monotonic() < deadline:
            if all(s.forwarder.stats().open == 0 for s in served):
                return
            time.sleep(0.05)

    # -- taking over from another data plane process -------------------------------------------------

    def _take_over(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(_CONTROL_TIMEOUT)
        try:
            sock.connect(str(self.path))
            send(sock, {"v": PROTOCOL_VERSION, "op": "handover"})
            answer, fds = receive(sock, MAX_REPLY, max_fds=MAX_FDS)
        except (OSError, DataPlaneError) as exc:
            sock.close()
            self._log(f"no data plane to take over ({exc}); starting empty")
            return None
        try:
            self._adopt_handover(answer, fds)
        except (KilnError, OSError, ValueError) as exc:
            self._log(f"handover refused ({exc}); starting empty")
            sock.close()
            return None
        return sock

    def _adopt_handover(self, answer: dict[str, Any], fds: list[int]) -> None:
        entries = answer.get("services")
        if answer.get("ok") is not True or not isinstance(entries, list):
            for fd in fds:
                os.close(fd)
            raise DataPlaneError("the old data plane's handover has no services")
        socks = [socket.socket(fileno=fd) for fd in fds]
        for entry in entries:
            view = ServiceView.from_dict(entry)
            index = entry.get("fd")
            if not isinstance(index, int) or not 0 <= index < len(socks):
                raise DataPlaneError(f"service {view.name}: no listening socket in the handover")
            fw = self._forwarder(view.name, view.listen, socks[index])
            fw.set_backends([Backend(id=t.id, connect=_connector(t)) for t in view.targets])
            self._services[view.name] = _Served(listen=view.listen, targets=view.targets, forwarder=fw)
        self._log(f"took over {len(self._services)} addresses")

    # -- requests ------------------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(_CONTROL_TIMEOUT)
            try:
                request, _ = receive(conn, MAX_REQUEST)
            except (OSError, DataPlaneError):
                return
            op = request.get("op")
            try:
                if op == "handover":
                    self._handover(conn)
                    return
                answer = self._answer(op, request)
            except (KilnError, ValueError) as exc:
                answer = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):
                send(conn, {"v": self.protocol, **answer})

    def _answer(self, op: object, req: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return {"ok": True, "protocol": self.protocol, "kiln": VERSION, "pid": os.getpid()}
        if op == "state":
            return {"ok": True, "pid": os.getpid(), "services": [v.to_dict() for v in self._views()]}
        if op == "set":
            self._set(req)
            return {"ok": True}
        if op == "drain":
            return {"ok": True, "drained": self._drain(req)}
        if op == "remove":
            name = _name(req.get("service"))
            with self._lock:
                served = self._services.pop(name, None)
            if served is not None:
                served.forwarder.stop()
                self._log(f"{name}: closed {served.listen[0]}:{served.listen[1]}")
            return {"ok": True}
        if op == "stop":
            self._done.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown operation {op!r}"}

    def _views(self) -> list[ServiceView]:
        with self._lock:
            items = sorted(self._services.items())
        out = []
        for name, v in items:
            st = v.forwarder.stats()
            out.append(
                ServiceView(
                    name=name,
                    listen=v.listen,
                    targets=v.targets,
                    open=st.open,
                    dropped=st.dropped,
                    connect_failures=st.connect_failures,
                )
            )
        return out

    def _forwarder(self, name: str, listen: tuple[str, int], sock: socket.socket | None = None) -> Forwarder:
        fw = Forwarder(
            listen, connect_timeout=self.connect_timeout, max_attempts=4, name=f"kiln-fwd-{name}", sock=sock
        )
        fw.start()
        return fw

    def _set(self, req: dict[str, Any]) -> None:
        name = _name(req.get("service"))
        listen = parse_listen(req.get("listen"), where=f"service {name}")
        raw = req.get("backends")
        if not isinstance(raw, list) or len(raw) > MAX_BACKENDS or not all(isinstance(b, dict) for b in raw):
            raise DataPlaneError(f"service {name}: backends must be a list of at most {MAX_BACKENDS} objects")
        targets = tuple(Target.from_dict(b) for b in raw)
        backends = [Backend(id=t.id, connect=_connector(t)) for t in targets]
        with self._lock:
            served = self._services.get(name)
            if served is not None and served.listen != listen:
                served.forwarder.stop()
                del self._services[name]
                served = None
            if served is None:
                if len(self._services) >= MAX_SERVICES:
                    raise DataPlaneError(f"more than {MAX_SERVICES} service addresses")
                fw = self._forwarder(name, listen)
                served = _Served(listen=listen, targets=(), forwarder=fw)
                self._services[name] = served
                self._log(f"{name}: listening on {listen[0]}:{listen[1]}")
            if served.targets != targets:
                served.forwarder.set_backends(backends)
                served.targets = targets
                self._log(f"{name}: backends {[t.id for t in targets]}")

    def _drain(self, req: dict[str, Any]) -> bool:
        name = _name(req.get("service"))
        bid, timeout = req.get("id"), req.get("timeout", 10.0)
        if not isinstance(bid, str) or not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise DataPlaneError("drain needs an id (string) and a timeout (seconds)")
        with self._lock:
            served = self._services.get(name)
        if served is None:
            return True
        if served.forwarder.drain(bid, min(max(0.0, float(timeout)), MAX_DRAIN)):
            return True
        served.forwarder.close_backend_connections(bid)
        return False

    def _handover(self, conn: socket.socket) -> None:
        """Give a successor the state and the listening sockets; retire if it asks."""
        with self._lock:
            items = sorted(self._services.items())
            entries, fds = [], []
            for i, (name, s) in enumerate(items):
                view = ServiceView(name=name, listen=s.listen, targets=s.targets)
                entries.append({**view.to_dict(), "fd": i})
                fds.append(s.forwarder.listener_fd())
        send(conn, {"v": self.protocol, "ok": True, "services": entries}, fds)
        conn.settimeout(_HANDOVER_WAIT)
        try:
            request, _ = receive(conn, MAX_REQUEST)
        except (OSError, DataPlaneError):
            self._log("a successor asked for a handover and went away; still serving")
            return
        if request.get("op") != "retire":
            return
        self._log("retiring: a successor accepts on the same sockets")
        with self._lock:
            for s in self._services.values():
                s.forwarder.release_listener()
        self._retired = True
        with contextlib.suppress(OSError):
            send(conn, {"v": self.protocol, "ok": True})
        self._done.set()


def _name(value: object) -> str:
    if not isinstance(value, str) or not _SERVICE.match(value):
        raise DataPlaneError(f"service name {value!r} is not a kiln service name")
    return value


def _write_pid(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
