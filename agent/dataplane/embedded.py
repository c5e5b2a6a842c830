"""The agent's side of the embedded data plane: find it, adopt it, start it, replace it, drive it.

:class:`ProcessDataPlane` talks to ``STATE/dataplane.sock`` (:mod:`agent.dataplane.wire`). On the
first call it says ``hello``:

- a data plane of this protocol version answers: it is ADOPTED as it is (it keeps serving; the
  agent then re-sends what the journal says, and equal backend sets change nothing);
- one of another version answers: a new process is started with ``--takeover`` and receives the
  old one's listening sockets (:mod:`agent.dataplane.server`), so no address ever closes;
- nothing answers: a new process is started, detached (its own session, stdin from /dev/null,
  output to ``STATE/dataplane/log``): it is no child the agent's death can take along.

If the process disappears later (killed by an operator, crashed), the next call starts a new one
and sends it every address this agent set, then retries the call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import agent
from agent.dataplane import DataPlaneError, ServiceView, Target
from agent.dataplane.server import PID_FILE, run_dir
from agent.dataplane.wire import PROTOCOL_VERSION, SOCKET_FILE, call

__all__ = ["ProcessDataPlane", "LOG_FILE"]

LOG_FILE = "log"
_GONE = (errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE)


class ProcessDataPlane:
    """A :class:`agent.dataplane.DataPlane` in a process of its own (module docstring)."""

    kind = "embedded"

    def __init__(
        self,
        state_dir: Path,
        *,
        python: str = sys.executable,
        start_timeout: float = 30.0,
        call_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SOCKET_FILE
        self.python = python
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.extra_args = tuple(extra_args)
        self._ready = False
        self._desired: dict[str, tuple[tuple[str, int], tuple[Target, ...]]] = {}
        self.adopted: int | None = None  # pid of a data plane found running (None: started or replaced)
        self.replaced: int | None = None  # pid of a data plane of another version that was replaced

    # -- finding, starting, replacing ----------------------------------------------------------------

    def hello(self) -> dict[str, Any] | None:
        """The running data plane's ``hello`` answer, or None when nothing answers."""
        try:
            answer, _ = call(self.path, {"op": "hello"}, timeout=self.call_timeout)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise DataPlaneError(
                    f"the data plane at {self.path} does not answer within {self.call_timeout:g}s",
                    hint="is it stopped (SIGSTOP)? `kiln agent down` stops it by its pid file",
                ) from None
            return None
        return answer

    def ensure(self) -> None:
        """Adopt, replace or start the data plane (module docstring). Idempotent."""
        if self._ready:
            return
        hello = self.hello()
        if hello is None:
            self._spawn(takeover=False)
        elif hello.get("protocol") != PROTOCOL_VERSION:
            self.replaced = hello.get("pid") if isinstance(hello.get("pid"), int) else None
            self._spawn(takeover=True)
        else:
            self.adopted = hello.get("pid") if isinstance(hello.get("pid"), int) else None
        self._ready = True

    def _spawn(self, *, takeover: bool) -> None:
        rd = run_dir(self.state_dir)
        rd.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [self.python, "-m", "agent.dataplane", "--state", str(self.state_dir), "--detach"]
        argv += self.extra_args
        if takeover:
            argv.append("--takeover")
        env = dict(os.environ)
        here = str(Path(agent.__file__).resolve().parents[1])  # the agent package's import root
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        with (rd / LOG_FILE).open("ab") as log:
            try:
                # --detach forks the server and exits: it is no child of the agent.
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                    close_fds=True,
                    cwd="/",
                    env=env,
                    timeout=self.start_timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DataPlaneError(f"cannot start the data plane: {exc}") from None
        text = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0 or not text.isdigit():
            raise DataPlaneError(
                f"the data plane did not start (exit {done.returncode}): {self._log_tail()}",
                hint=f"see {rd / LOG_FILE}",
            )
        pid = int(text)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise DataPlaneError(
                    f"the data plane exited as it started: {self._log_tail()}", hint=f"see {rd / LOG_FILE}"
                )
            hello = self.hello()
            if hello is not None and hello.get("pid") == pid:
                return
            time.sleep(0.02)
        raise DataPlaneError(f"the data plane did not answer within {self.start_timeout:g}s of starting")

    def _log_tail(self) -> str:
        try:
            text = (run_dir(self.state_dir) / LOG_FILE).read_bytes()[-2000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "(empty log)"

    def _call(self, doc: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        self.ensure()
        try:
            answer, _ = call(self.path, doc, timeout=timeout or self.call_timeout)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise DataPlaneError(f"data plane {doc.get('op')}: {exc}") from None
            if self.hello() is None:
                # It went away since: start another, give it every address, then ask again.
                self._spawn(takeover=False)
                for name, (listen, targets) in sorted(self._desired.items()):
                    self._send_set(name, listen, targets)
            try:
                answer, _ = call(self.path, doc, timeout=timeout or self.call_timeout)
            except OSError as again:
                raise DataPlaneError(f"data plane {doc.get('op')}: {again}") from None
        return answer

    def _send_set(self, service: str, listen: tuple[str, int], targets: Sequence[Target]) -> None:
        try:
            call(self.path, _set_doc(service, listen, targets), timeout=self.call_timeout)
        except OSError as exc:
            raise DataPlaneError(f"data plane set {service}: {exc}") from None

    # -- the DataPlane interface ---------------------------------------------------------------------

    def serve(self, service: str, listen: tuple[str, int], targets: Sequence[Target]) -> None:
        self._desired[service] = (listen, tuple(targets))
        self._call(_set_doc(service, listen, targets))

    def _absent(self) -> bool:
        """Nothing runs (and this object started nothing): there is nothing to drain or remove."""
        return not self._ready and self.hello() is None

    def drain(self, service: str, backend_id: str, timeout: float) -> bool:
        if self._absent():
            return True
        answer = self._call(
            {"op": "drain", "service": service, "id": backend_id, "timeout": timeout},
            timeout=timeout + self.call_timeout,
        )
        return answer.get("drained") is True

    def remove(self, service: str) -> None:
        self._desired.pop(service, None)
        if not self._absent():
            self._call({"op": "remove", "service": service})

    def retain(self, names: Collection[str]) -> None:
        for name in sorted(set(self.services()) - set(names)):
            self.remove(name)

    def services(self) -> dict[str, ServiceView]:
        if self._absent():
            return {}  # nothing runs, nothing serves: asking starts nothing
        answer = self._call({"op": "state"})
        entries = answer.get("services")
        if not isinstance(entries, list):
            raise DataPlaneError("the data plane's state has no list of services")
        views = [ServiceView.from_dict(e) for e in entries if isinstance(e, dict)]
        return {v.name: v for v in views}

    def detach(self) -> None:
        """The agent goes away; the data plane stays (there is nothing to release)."""
        self._ready = False

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the data plane (``stop`` over the socket; SIGKILL by pid file if it does not answer).
        True if one was running. Nothing is started to be stopped."""
        pid = self._pid()
        running = False
        try:
            call(self.path, {"op": "stop"}, timeout=min(self.call_timeout, 10.0))
            running = True
        except OSError as exc:
            if exc.errno not in _GONE and pid is not None and self._is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    running = True
        if pid is not None and (running or self._is_ours(pid)):
            running = _wait_gone(pid, timeout) or running
        self._desired.clear()
        self._ready = False
        return running

    def pid_alive(self) -> bool:
        """The pid file names a live data plane process of this state directory."""
        pid = self._pid()
        return pid is not None and self._is_ours(pid) and _alive(pid)

    def _is_ours(self, pid: int) -> bool:
        """``pid`` is this state directory's data plane (not a stranger that reused the pid)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"agent.dataplane" in argv and os.fsencode(str(self.state_dir)) in argv

    def _pid(self) -> int | None:
        try:
            text = (run_dir(self.state_dir) / PID_FILE).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None


def _set_doc(service: str, listen: tuple[str, int], targets: Sequence[Target]) -> dict[str, Any]:
    backends = [t.to_dict() for t in targets]
    return {"op": "set", "service": service, "listen": list(listen), "backends": backends}


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited; True if it was alive."""
    alive = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return alive
        alive = True
        time.sleep(0.02)
    return alive


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie has exited: its parent, init, reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
