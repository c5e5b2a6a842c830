"""The data plane outside the agent: the same tests for every implementation of ``DataPlane``.

Two "instances" are HTTP servers on 127.0.0.1:8080 inside two network namespaces of their own;
the data plane reaches them there (setns for the embedded one, HAProxy's ``namespace`` keyword).
A client polls the service address while the test switches, drains, drops the driving object
(the agent going away), drives the data plane from a new object (the agent restarted: it adopts
what runs), and, for the embedded one, replaces a data plane of another protocol version and
restarts one that was killed. No request may fail.
"""

from __future__ import annotations

import array
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.dataplane import DataPlane, DataPlaneError, Target, make_dataplane, wire
from agent.dataplane.embedded import ProcessDataPlane
from agent.netns import create_netns, delete_netns
from manifests.agentconfig import DataPlaneKind, parse_agent_config
from manifests.errors import ManifestError
from tests.agent.agentkit import free_port, http_get
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration

SERVER = """
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = (name + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H)
srv.daemon_threads = True
print("ready", flush=True)
srv.serve_forever()
"""


@dataclass
class Instance:
    name: str
    ns: str
    netns: str
    proc: subprocess.Popen[str]

    def target(self) -> Target:
        return Target(id=self.name, netns=self.netns, port=8080)


@dataclass
class Poller:
    """GET / every 20 ms on the address until stopped; what answered, what failed."""

    port: int
    answers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = http_get("127.0.0.1", self.port, timeout=5.0)
            except OSError as exc:
                self.failures.append(repr(exc))
            else:
                if status == 200:
                    self.answers.append(body.decode().strip())
                else:
                    self.failures.append(f"HTTP {status}")
            time.sleep(0.02)

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def wait_for(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.answers)
        while time.monotonic() < deadline:
            if name in self.answers[start:]:
                return
            time.sleep(0.02)
        raise AssertionError(f"{name} never answered; last answers {self.answers[-5:]}")


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    require_root("named network namespaces need root")
    require_tool("ip", "iproute2")
    out: list[Instance] = []
    tag = secrets.token_hex(3)
    try:
        for label in ("v1", "v2"):
            ns = f"kiln-dptest-{tag}-{label}"
            path = create_netns(ns)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, label],
                stdout=subprocess.PIPE,
                text=True,
            )
            out.append(Instance(name=label, ns=ns, netns=path, proc=proc))
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        yield out
    finally:
        for inst in out:
            inst.proc.kill()
            inst.proc.wait(10)
            if inst.proc.stdout is not None:
                inst.proc.stdout.close()
            delete_netns(inst.ns)


KINDS = [DataPlaneKind.EMBEDDED, DataPlaneKind.HAPROXY]


@pytest.fixture(params=KINDS, ids=str)
def planes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], DataPlane]]:
    """A factory of data plane drivers over one state directory: each call is "an agent"."""
    kind = DataPlaneKind(request.param)
    if kind is DataPlaneKind.HAPROXY:
        require_tool("haproxy", "haproxy")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    made: list[DataPlane] = []

    def make() -> DataPlane:
        plane = make_dataplane(kind, state)
        made.append(plane)
        return plane

    try:
        yield make
    finally:
        make_dataplane(kind, state).stop()


def test_switch_drain_and_remove_without_a_failed_request(
    planes: Callable[[], DataPlane], instances: list[Instance]
) -> None:
    v1, v2 = instances
    port = free_port()
    plane = planes()
    plane.serve("web", ("127.0.0.1", port), [v1.target()])
    assert http_get("127.0.0.1", port)[1] == b"v1\n"
    with Poller(port) as poller:
        poller.wait_for("v1")
        plane.serve("web", ("127.0.0.1", port), [v2.target()])
        assert plane.drain("web", "v1", 10.0) is True
        poller.wait_for("v2")
        answers_after = len(poller.answers)
        time.sleep(0.3)
        assert set(poller.answers[answers_after:]) == {"v2"}
    assert poller.failures == []
    view = plane.services()["web"]
    assert view.listen == ("127.0.0.1", port)
    assert [t.id for t in view.targets] == ["v2"]
    plane.remove("web")
    assert "web" not in plane.services()
    with pytest.raises(OSError):
        http_get("127.0.0.1", port, timeout=2.0)


def test_the_address_outlives_its_driver_and_is_adopted(
    planes: Callable[[], DataPlane], instances: list[Instance]
) -> None:
    v1, v2 = instances
    port = free_port()
    first = planes()
    first.serve("web", ("127.0.0.1", port), [v1.target()])
    with Poller(port) as poller:
        poller.wait_for("v1")
        first.detach()  # the agent goes away (stop, crash, upgrade): the address stays
        del first
        time.sleep(0.3)
        poller.wait_for("v1")
        second = planes()  # the agent is back: it finds the data plane and adopts it
        views = second.services()
        assert [t.id for t in views["web"].targets] == ["v1"]
        second.serve("web", ("127.0.0.1", port), [v1.target()])  # what the journal says: no change
        second.serve("web", ("127.0.0.1", port), [v1.target(), v2.target()])
        poller.wait_for("v2")
        second.retain({"web"})
        assert set(second.services()) == {"web"}
    assert poller.failures == []
    if isinstance(second, ProcessDataPlane):
        assert second.adopted is not None
    assert second.stop() is True
    assert second.stop() is False  # idempotent: nothing runs any more
    with pytest.raises(OSError):
        http_get("127.0.0.1", port, timeout=2.0)


def test_retain_closes_addresses_the_journal_lost(
    planes: Callable[[], DataPlane], instances: list[Instance]
) -> None:
    v1, _ = instances
    a, b = free_port(), free_port()
    plane = planes()
    plane.serve("web", ("127.0.0.1", a), [v1.target()])
    plane.serve("api", ("127.0.0.1", b), [v1.target()])
    plane.retain({"web"})
    assert set(plane.services()) == {"web"}
    assert http_get("127.0.0.1", a)[0] == 200
    with pytest.raises(OSError):
        http_get("127.0.0.1", b, timeout=2.0)


# -- the embedded process only -------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_dead(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.02)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    require_root("named network namespaces need root")
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    yield path
    ProcessDataPlane(path).stop()


def test_another_protocol_version_is_replaced_without_closing_the_address(
    state: Path, instances: list[Instance]
) -> None:
    v1, v2 = instances
    port = free_port()
    old = ProcessDataPlane(state, extra_args=["--protocol", "0"])  # "another kiln version"
    old.serve("web", ("127.0.0.1", port), [v1.target()])
    old_pid = old.hello()["pid"]  # type: ignore[index]
    old.detach()
    with Poller(port) as poller:
        poller.wait_for("v1")
        new = ProcessDataPlane(state)
        new.ensure()
        assert new.replaced == old_pid
        hello = new.hello()
        assert hello is not None
        assert hello["protocol"] == 1
        assert hello["pid"] != old_pid
        assert [t.id for t in new.services()["web"].targets] == ["v1"]  # the state came along
        _wait_dead(old_pid)
        poller.wait_for("v1")
        new.serve("web", ("127.0.0.1", port), [v2.target()])
        poller.wait_for("v2")
    assert poller.failures == []
    assert len(poller.answers) > 10


def test_a_killed_data_plane_is_restarted_with_every_address(state: Path, instances: list[Instance]) -> None:
    v1, _ = instances
    port = free_port()
    plane = ProcessDataPlane(state)
    plane.serve("web", ("127.0.0.1", port), [v1.target()])
    pid = plane.hello()["pid"]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    assert "web" in plane.services()  # the next call starts a new one and replays what was set
    assert plane.hello()["pid"] != pid  # type: ignore[index]
    assert http_get("127.0.0.1", port)[1] == b"v1\n"


def test_the_data_plane_survives_the_process_that_started_it(state: Path, instances: list[Instance]) -> None:
    """The agent process (here: a child python) starts the data plane and is SIGKILLed."""
    v1, _ = instances
    port = free_port()
    script = (
        "import sys; from pathlib import Path; from agent.dataplane import Target;"
        "from agent.dataplane.embedded import ProcessDataPlane;"
        f"p = ProcessDataPlane(Path({str(state)!r}));"
        f"p.serve('web', ('127.0.0.1', {port}), [Target(id='v1', netns={v1.netns!r}, port=8080)]);"
        "print('served', flush=True); sys.stdin.read()"
    )
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "served"
    parent.kill()
    parent.wait(10)
    parent.stdout.close()
    assert parent.stdin is not None
    parent.stdin.close()
    assert http_get("127.0.0.1", port)[1] == b"v1\n"
    adopted = ProcessDataPlane(state)
    adopted.ensure()
    assert adopted.adopted is not None


def test_control_socket_refuses_bad_requests(state: Path) -> None:
    plane = ProcessDataPlane(state)
    with pytest.raises(DataPlaneError, match="not a kiln service name"):
        plane.serve("../x", ("127.0.0.1", free_port()), [])
    with pytest.raises(DataPlaneError, match="not an absolute path"):
        plane.serve("web", ("127.0.0.1", free_port()), [Target(id="a", netns="relative", port=80)])
    with pytest.raises(DataPlaneError, match="cannot listen"):
        plane.serve("web", ("192.0.2.1", free_port()), [])
    assert plane.services() == {}


# -- the agent config ----------------------------------------------------------------------------------

CONFIG = b"""apiVersion: kiln.dev/v1
kind: AgentConfig
source: oci:/srv/releases
channel: stable
trust_root: /etc/kiln/root.yaml
state: /var/lib/kiln
"""


def test_config_selects_the_data_plane() -> None:
    assert parse_agent_config(CONFIG, source="agent.yaml").dataplane is DataPlaneKind.EMBEDDED
    cfg = parse_agent_config(CONFIG + b"dataplane: haproxy\n", source="agent.yaml")
    assert cfg.dataplane is DataPlaneKind.HAPROXY
    assert cfg.to_dict()["dataplane"] == "haproxy"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            b"dataplane: haproxi\n",
            "agent.yaml:7:1: dataplane: unknown value 'haproxi' (did you mean 'haproxy'?)",
        ),
        (
            b"dataplane: nginx\n",
            "agent.yaml:7:1: dataplane: unknown value 'nginx' (expected one of: embedded",
        ),
        (b"dataplane: 3\n", "agent.yaml:7:1: dataplane:"),
        (
            b"runtime: docker\ndocker_host: unix:///run/docker.sock\ndataplane: haproxy\n",
            "agent.yaml:9:1: dataplane: haproxy cannot reach docker instances",
        ),
    ],
)
def test_config_bad_data_plane_is_a_positioned_error(line: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_agent_config(CONFIG + line, source="agent.yaml")
    assert message in str(info.value)


# -- the control protocol's reader (no root needed) ----------------------------------------------------


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * (wire.MAX_REQUEST + 10), "larger than"),
        (b"{not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'"text"\n', "not a JSON object"),
        (b"[" * 100_000 + b"\n", "not"),
        (b'{"v": 1', "closed mid-message"),
    ],
    ids=["oversized", "not-json", "list", "string", "deep", "truncated"],
)
def test_control_messages_are_read_with_caps(data: bytes, message: str) -> None:
    ours, theirs = _pair()
    with ours, theirs:
        writer = threading.Thread(target=lambda: (theirs.sendall(data), theirs.shutdown(socket.SHUT_WR)))
        writer.start()
        with pytest.raises(DataPlaneError, match=message):
            wire.receive(ours, wire.MAX_REQUEST)
        ours.close()  # unblock a writer stuck on a full buffer
        writer.join(10)


def test_fds_ride_along_and_are_closed_when_the_message_is_refused() -> None:
    ours, theirs = _pair()
    r, w = os.pipe()
    try:
        with ours, theirs:
            wire.send(theirs, {"v": 1, "ok": True}, [r])
            doc, fds = wire.receive(ours, wire.MAX_REPLY, max_fds=4)
            assert doc == {"ok": True, "v": 1}
            assert len(fds) == 1
            os.close(fds[0])
            theirs.sendmsg([b"[1]\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
            before = len(os.listdir("/proc/self/fd"))
            with pytest.raises(DataPlaneError, match="not a JSON object"):
                wire.receive(ours, wire.MAX_REPLY, max_fds=4)
            assert len(os.listdir("/proc/self/fd")) == before  # the fd that came along was closed
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"id": "", "netns": "", "port": 80}, "short non-empty"),
        ({"id": "a", "netns": "rel/path", "port": 80}, "absolute path"),
        ({"id": "a", "netns": "", "port": 0}, "1..65535"),
        ({"id": "a", "netns": "", "port": True}, "1..65535"),
        ({"id": "a", "netns": "", "port": 80, "host": ""}, "not an address"),
    ],
)
def test_targets_from_the_wire_are_checked(doc: dict[str, object], message: str) -> None:
    with pytest.raises(DataPlaneError, match=message):
        Target.from_dict(doc)


def test_haproxy_config_is_deterministic_and_refuses_unnamed_namespaces(tmp_path: Path) -> None:
    from agent.dataplane import ServiceView
    from agent.dataplane.haproxy import render_config

    view = ServiceView(
        name="web",
        listen=("127.0.0.1", 8080),
        targets=(Target(id="kiln-web-1", netns="/run/netns/kiln-web-1", port=8080),),
    )
    text = render_config([view], admin=tmp_path / "admin.sock")
    assert text == render_config([view], admin=tmp_path / "admin.sock")
    assert "    bind 127.0.0.1:8080\n" in text
    assert "    server kiln-web-1 127.0.0.1:8080 namespace kiln-web-1\n" in text
    docker = Target(id="d", netns="/proc/123/ns/net", port=80)
    with pytest.raises(DataPlaneError, match="named network namespaces only"):
        render_config([ServiceView(name="web", listen=("127.0.0.1", 1), targets=(docker,))], admin=tmp_path)
