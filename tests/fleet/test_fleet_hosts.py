"""A fleet of 5 hosts in 3 groups, each a network namespace with its own address and its own real
agent (``kiln agent run`` on runc), coordinating through a real etcd.

- v1, then v2, roll out wave by wave (one canary, the other canary, then everyone); etcd's whole
  history shows that no two hosts of one group ever held a slot at the same moment;
- a host SIGKILLed while it holds its slot frees it when its lease expires, and after a restart the
  fleet converges;
- v3 fails health on the canary: the canary rolls it back, the release is halted with the reason,
  no host of a later wave ever starts it, every host keeps serving v2, and ``kiln fleet status``
  and the dashboard (headless Chromium) show the halt and every host's version.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.etcd import EtcdClient
from fleet.gate import store_config
from fleet.server import FleetServer
from fleet.state import FleetStore
from kiln.cli import main
from manifests.fleet import FleetConfig
from manifests.oci import Descriptor
from manifests.release import parse_release
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release
from tests.agent.agentkit import FAR, make_root, service_yaml, sign_and_attest, signed
from tests.agent.conftest import WebImage
from tests.agent.crashkit import REPO_ROOT, agent_config_yaml, echo_image
from tests.fleet.dashboardkit import elements, rendered_dom, screenshot
from tests.fleet.etcdkit import Etcd, private_etcd
from tests.fleet.hostkit import Host, fleet_hosts
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"
GROUPS = {"canary-1": "canary", "canary-2": "canary", "web-1": "web", "web-2": "web", "db-1": "db"}
PORT = 8080
ROLLOUT = {"waves": [{"group": "canary", "hosts": 1}, {"group": "canary"}, {"group": "*"}]}
LEASE = 4.0
CONVERGE = 240.0
SCREENSHOT = os.environ.get("KILN_FLEET_SCREENSHOT")  # docs/fleet-dashboard.png is made this way


def http_get(address: str, path: str = "/", timeout: float = 3.0) -> tuple[int, bytes]:
    with socket.create_connection((address, PORT), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < 65536 and (chunk := s.recv(65536)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass
class HostAgent:
    host: Host
    group: str
    state: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        argv = self.host.command([sys.executable, "-m", "kiln", "agent", "run", "--config", str(self.config)])
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def version(self) -> str | None:
        try:
            status, body = http_get(self.host.address)
        except OSError:
            return None
        return str(json.loads(body).get("version")) if status == 200 else None


@dataclass
class Fleet:
    tmp: Path
    name: str
    etcd: Etcd
    store: FleetStore
    hosts: dict[str, HostAgent]
    releases: LayoutRepository
    images: dict[str, Descriptor]
    started_revision: int = 0
    logs: list[str] = field(default_factory=list)

    def publish(self, version: int, flavour: str, *, health_path: str = "/healthz") -> None:
        svc = service_yaml(
            "web",
            f"{REPO}@{self.images[flavour].digest}",
            listen=f"0.0.0.0:{PORT}",
            health_path=health_path,
            grace="300ms",
            interval="300ms",
            retries=2,
            env={"VERSION": f"v{version}"},
        )
        doc = {
            "apiVersion": "kiln.dev/v1",
            "kind": "Release",
            "channel": "stable",
            "version": version,
            "expires": FAR,
            "services": [svc],
            "rollout": ROLLOUT,
        }
        release = parse_release(json.dumps(doc).encode(), source=f"v{version}.yaml")
        publish_release(self.releases, signed(release))

    def wait(self, what: str, ok: Callable[[], bool], timeout: float = CONVERGE) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                tails = {n: h.log.read_text(errors="replace")[-1500:] for n, h in self.hosts.items()}
                raise AssertionError(
                    f"{what}: not within {timeout:g}s; versions {self.versions()}; logs {tails}"
                )
            time.sleep(0.3)

    def versions(self) -> dict[str, str | None]:
        return {n: h.version() for n, h in self.hosts.items()}


@pytest.fixture
def fleet(python_web: WebImage, tmp_path: Path) -> Iterator[Fleet]:
    require_root("network namespaces, veth pairs and runc need root")
    for tool, package in (("runc", "runc"), ("ip", "iproute2"), ("nsenter", "util-linux")):
        require_tool(tool, package)
    layout = tmp_path / "images"
    images = {f: echo_image(python_web, layout, flavour=f) for f in ("blue", "green")}
    for desc in images.values():
        sign_and_attest(layout, desc, identity=REPO)
    root = tmp_path / "root.yaml"
    root.write_text(make_root().to_yaml())
    with fleet_hosts(list(GROUPS)) as hosts, private_etcd(also=[h.gateway for h in hosts]) as etcd:
        port = etcd.url.rsplit(":", 1)[1]
        name = etcd.fleet_name()
        client = EtcdClient(etcd.url)
        store = FleetStore(client, name)
        store_config(store, FleetConfig(name=name, default_max=1, lease_ttl=LEASE))
        agents: dict[str, HostAgent] = {}
        for host in hosts:
            state = tmp_path / "hosts" / host.name
            doc = json.loads(
                agent_config_yaml(
                    source=f"oci:{tmp_path / 'releases'}",
                    trust_root=root,
                    state=state,
                    images={REPO: f"oci:{layout}"},
                    poll_interval="300ms",
                    max_attempts=3,
                )
            )
            doc["group"] = GROUPS[host.name]
            doc["fleet"] = {"etcd": f"http://{host.gateway}:{port}", "name": name, "host": host.name}
            config = tmp_path / f"{host.name}.yaml"
            config.write_text(json.dumps(doc, indent=2) + "\n")
            agents[host.name] = HostAgent(
                host=host,
                group=GROUPS[host.name],
                state=state,
                config=config,
                log=tmp_path / f"{host.name}.log",
            )
        f = Fleet(
            tmp=tmp_path,
            name=name,
            etcd=etcd,
            store=store,
            hosts=agents,
            releases=LayoutRepository(tmp_path / "releases", create=True),
            images=images,
            started_revision=store.snapshot().revision,
        )
        try:
            yield f
        finally:
            for agent in agents.values():
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGTERM)
            for agent in agents.values():
                if agent.proc is not None:
                    try:
                        agent.proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                # everything the agent ran (instances, data plane, namespaces) goes with it
                main(["agent", "down", "--config", str(agent.config)])
            client.close()
            shutil.rmtree(tmp_path / "hosts", ignore_errors=True)


def most_holders(store: FleetStore, since: int) -> dict[str, int]:
    """The most slot holders each group ever had at once, over every etcd revision since ``since``."""
    worst: dict[str, int] = {}
    prefix = store.prefix + "slots/"
    latest = store.snapshot().revision
    for revision in range(max(1, since), latest + 1):
        counts: dict[str, int] = {}
        for kv in store.etcd.range(prefix, prefix=True, revision=revision)[1]:
            group, kind = kv.key[len(prefix) :].split("/")[:2]
            if kind == "holders":
                counts[group] = counts.get(group, 0) + 1
        for group, n in counts.items():
            worst[group] = max(worst.get(group, 0), n)
    return worst


def test_waves_slots_a_dead_host_and_a_halt(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = fleet
    f.publish(1, "blue")
    for agent in f.hosts.values():
        agent.start()
    f.wait("every host serves v1", lambda: set(f.versions().values()) == {"v1"})

    # v2: wave by wave, one host per group at a time
    f.publish(2, "green")
    f.wait("every host serves v2", lambda: set(f.versions().values()) == {"v2"})
    assert max(most_holders(f.store, f.started_revision).values()) == 1
    progress = f.store.snapshot().releases[2].progress
    done = sorted(progress, key=lambda h: progress[h].at)
    assert done[0] == "canary-1", f"the first wave is one canary: {done}"
    assert done[1] == "canary-2", f"then the other canary: {done}"

    # a host dies holding its slot: the lease frees it
    f.publish(3, "blue")
    holder: list[str] = []

    def someone_holds() -> bool:
        slots = f.store.snapshot().slots
        holder[:] = [h.id for g in slots.values() for h in g]
        return bool(holder)

    f.wait("a host takes a slot for v3", someone_holds, timeout=60)
    victim = f.hosts[holder[0]]
    victim.kill()
    killed = time.monotonic()
    f.wait(
        f"{victim.host.name}'s slot freed by its lease",
        lambda: victim.host.name not in [h.id for g in f.store.snapshot().slots.values() for h in g],
        timeout=LEASE * 4 + 10,
    )
    assert time.monotonic() - killed >= LEASE - 1.5, "freed by the lease's expiry, not before"
    victim.start()
    f.wait("every host serves v3 after the restart", lambda: set(f.versions().values()) == {"v3"})
    assert max(most_holders(f.store, f.started_revision).values()) == 1

    # v4 fails health on the canary: it rolls back and halts v4 for the whole fleet
    f.publish(4, "green", health_path="/missing")
    f.wait("v4 halted", lambda: (r := f.store.snapshot().releases.get(4)) is not None and r.halt is not None)
    time.sleep(3)  # several polls of every agent: none may start v4 now
    record = f.store.snapshot().releases[4]
    assert set(record.progress) == {"canary-1"}, f"only the canary tried v4: {record.progress}"
    assert record.halt is not None
    assert record.halt["host"] == "canary-1"
    assert "404" in record.halt["reason"] or "health" in record.halt["reason"]
    assert set(f.versions().values()) == {"v3"}, "every host still serves v3"

    assert main(["fleet", "status", "--etcd", f.etcd.url, "--name", f.name, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    v4 = next(r for r in status["releases"] if r["version"] == 4)
    assert v4["halted"]
    assert v4["halt"]["host"] == "canary-1"
    versions = {h["id"]: h["version"] for g in status["groups"].values() for h in g["hosts"]}
    assert versions == dict.fromkeys(GROUPS, 3)

    server = FleetServer(f.store, FleetConfig(name=f.name, default_max=1, lease_ttl=LEASE))
    server.start()
    try:
        page = elements(rendered_dom(server.url + "/"))
        if SCREENSHOT:
            screenshot(server.url + "/", Path(SCREENSHOT))
    finally:
        server.close()
    shown = {a["data-host"]: a["data-version"] for a, _t in page.with_attr("data-host")}
    assert shown == dict.fromkeys(GROUPS, "3")
    halts = {a["data-halt"]: text for a, text in page.with_attr("data-halt")}
    assert "canary-1" in halts["4"]


def test_kiln_fleet_status_names_an_unreachable_etcd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "status", "--etcd", "http://127.0.0.1:9", "--name", "prod", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert "is etcd running" in (error["hint"] or "") + error["message"]
