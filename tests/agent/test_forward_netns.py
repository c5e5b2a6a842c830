"""The traffic switch and health checks against instances in their own network namespaces.

Two "instances" are HTTP servers on 127.0.0.1:8080 inside two named network namespaces (the same
port in both: each namespace has its own loopback). The agent-side pieces reach them only through
``connect_in_netns``. A client polls the stable address while v1 is replaced by v2: no failures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.forwarder import Backend, Forwarder
from agent.health import HealthSpec, check_once, wait_healthy
from agent.netns import connect_in_netns, create_netns, delete_netns
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration

SERVER = """
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (name + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H)
print("ready", flush=True)
srv.serve_forever()
"""


@dataclass
class Instance:
    name: str
    netns: str
    proc: subprocess.Popen[str]

    def backend(self) -> Backend:
        ns = self.netns
        return Backend(id=self.name, connect=lambda t: connect_in_netns(ns, "127.0.0.1", 8080, t))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    require_root("named network namespaces need root")
    require_tool("ip", "iproute2")
    made: list[tuple[str, Instance | None]] = []
    out: list[Instance] = []
    for label in ("v1", "v2"):
        ns_name = f"kiln-fwdtest-{os.getpid()}-{label}"
        path = create_netns(ns_name)
        made.append((ns_name, None))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns_name, sys.executable, "-c", SERVER, label],
            stdout=subprocess.PIPE,
            text=True,
        )
        inst = Instance(name=label, netns=path, proc=proc)
        made[-1] = (ns_name, inst)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        out.append(inst)
    try:
        yield out
    finally:
        for ns_name, inst in made:
            if inst is not None:
                inst.stop()
                if inst.proc.stdout is not None:
                    inst.proc.stdout.close()
            delete_netns(ns_name)


def _get(address: tuple[str, int]) -> str:
    with socket.create_connection(address, timeout=3) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        data = b""
        while len(data) < 65536:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise AssertionError(f"bad answer {data[:80]!r}")
    return body.decode().strip()


def test_instances_are_reachable_only_through_their_namespace(instances: list[Instance]) -> None:
    v1, v2 = instances
    spec = HealthSpec.http(8080, "/")
    assert check_once(spec, v1.backend().connect, 2.0).detail == "HTTP 200 OK"
    assert check_once(spec, v2.backend().connect, 2.0).ok
    # Same address, two namespaces, two different answers: each instance has its own loopback.
    with Forwarder(("127.0.0.1", 0)) as fwd:
        address = fwd.address
        assert isinstance(address, tuple)
        fwd.set_backends([v1.backend()])
        assert _get(address) == "v1"
        fwd.set_backends([v2.backend()])
        assert _get(address) == "v2"


def test_blue_green_between_namespaces_drops_nothing(instances: list[Instance]) -> None:
    v1, v2 = instances
    spec = HealthSpec.http(8080, "/", interval=0.05, timeout=1.0, retries=2)
    with Forwarder(("127.0.0.1", 0)) as fwd:
        address = fwd.address
        assert isinstance(address, tuple)
        assert wait_healthy(spec, v1.backend().connect, deadline=10).ok
        fwd.set_backends([v1.backend()])

        seen: dict[str, int] = {}
        errors: list[str] = []
        stop = threading.Event()

        def poll() -> None:
            deadline = time.monotonic() + 5.0
            n = 0
            while n < 600 and time.monotonic() < deadline and not stop.is_set():
                n += 1
                try:
                    who = _get(address)
                except (OSError, AssertionError) as exc:
                    errors.append(repr(exc))
                    continue
                seen[who] = seen.get(who, 0) + 1

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            time.sleep(0.3)
            assert wait_healthy(spec, v2.backend().connect, grace=0.05, deadline=10).ok
            fwd.set_backends([v2.backend()])
            assert fwd.drain("v1", timeout=5.0)
            v1.stop()  # v1 is gone; the address keeps answering from v2
            time.sleep(0.3)
        finally:
            stop.set()
            poller.join(15)
        assert errors == []
        assert seen.get("v1", 0) > 0
        assert seen.get("v2", 0) > 0
        assert fwd.stats().dropped == 0
