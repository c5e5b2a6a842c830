"""Chaos on real runc: the service address answers every request while the agent is abused.

``kiln agent run`` (a separate process, real runc, the embedded data plane in its own process)
serves an echo service (two replicas, blue-green). A client asks the address every 20 ms for the
whole test, while:

- the agent is SIGKILLed 10 times, each at a random moment after it came back up (seeded RNG),
  while v2 is published (kills land in its rollout), an unsigned junk envelope is published to the
  channel (refused with reason ``signature``), and a new good release v4 is published (more kills
  land in that rollout);
- the agent is SIGTERMed and restarted;
- it converges: exactly v4's instances serve, and nothing else runs.

No request may fail, and every answer comes from a release that was published and signed. The
data plane survives a SIGTERM of the agent too; ``kiln agent down`` then stops everything (the
address closes; no process, runc container, namespace, mount or bundle is left) and a second
``down`` is a no-op that exits 0.

``test_sigstopped_instance_leaves_rotation_after_a_restart`` is the SIGSTOP step, on its own: after
an agent restart, the health monitor takes a frozen instance out of rotation and it is replaced.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.dataplane.embedded import ProcessDataPlane
from agent.events import read_events
from agent.netns import list_netns
from kiln.cli import main
from manifests.oci import Descriptor
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release
from signing.dsse import Envelope
from signing.release import RELEASE_PAYLOAD_TYPE
from tests.agent.agentkit import free_port, make_release, make_root, service_yaml, sign_and_attest, signed
from tests.agent.conftest import WebImage
from tests.agent.crashkit import (
    AgentProcess,
    agent_config_yaml,
    ask,
    cleanup,
    converged_problems,
    echo_image,
    runc_list,
    snapshot,
)
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"
SEED = 0x6368616F  # "chao"
KILLS = 10
REPLICAS = 2
UP_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 90.0


@dataclass
class Poller:
    """``GET /`` through the service address every 20 ms, from start to stop."""

    port: int
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # (time, version, instance)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                doc = ask(self.port, timeout=10.0)
            except (OSError, AssertionError, ValueError) as exc:
                self.failures.append((t, repr(exc)))
            else:
                self.answers.append((t, str(doc.get("version")), str(doc.get("instance"))))
            time.sleep(0.02)

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name="chaos-poller", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(15)

    def longest_gap(self) -> float:
        """The longest time between two answers (seconds): a closed address would show here."""
        times = [a[0] for a in self.answers]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@dataclass
class World:
    tmp: Path
    service: str
    port: int
    images: dict[str, Descriptor]
    releases: LayoutRepository
    config: Path
    state: Path
    log: Path
    dataplane: str = "embedded"
    processes: list[AgentProcess] = field(default_factory=list)

    def publish(self, version: int, flavour: str) -> None:
        svc = self.service_doc(version, flavour)
        publish_release(self.releases, signed(make_release(version, [svc])))

    def service_doc(self, version: int, flavour: str) -> dict[str, Any]:
        return service_yaml(
            self.service,
            f"{REPO}@{self.images[flavour].digest}",
            replicas=REPLICAS,
            listen=f"127.0.0.1:{self.port}",
            strategy="blue-green",
            grace="300ms",
            interval="200ms",
            retries=2,
            env={"VERSION": f"v{version}"},
        )

    def publish_unsigned(self, version: int) -> None:
        payload = make_release(version, [self.service_doc(version, "blue")]).to_bytes()
        env = Envelope(payload_type=RELEASE_PAYLOAD_TYPE, payload=payload, signatures=())
        publish_release(self.releases, env.to_bytes())

    def agent(self) -> AgentProcess:
        proc = AgentProcess(self.config, self.state, self.log)
        self.processes.append(proc)
        return proc

    def wait_good(self, agent: AgentProcess, version: int) -> None:
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while True:
            doc = agent.status()
            snap = snapshot(self.state, self.service)
            if (
                doc is not None
                and doc["rollout"] is None
                and (doc["release"] or {}).get("version") == version
                and snap.runc == snap.serving
                and len(snap.serving) == REPLICAS
            ):
                return
            assert time.monotonic() < deadline, f"no convergence to v{version}: {doc}, runc {snap.runc}"
            time.sleep(0.1)


@pytest.fixture
def world(request: pytest.FixtureRequest, python_web: WebImage, tmp_path: Path) -> Iterator[World]:
    require_root("runc and network namespaces need root")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    dataplane = str(getattr(request, "param", "embedded"))
    if dataplane == "haproxy":
        require_tool("haproxy", "haproxy")
    layout = tmp_path / "images"
    images = {f: echo_image(python_web, layout, flavour=f) for f in ("blue", "green")}
    for desc in images.values():
        sign_and_attest(layout, desc, identity=REPO)
    root = tmp_path / "root.yaml"
    root.write_text(make_root().to_yaml())
    state = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    doc = json.loads(
        agent_config_yaml(
            source=f"oci:{tmp_path / 'releases'}",
            trust_root=root,
            state=state,
            images={REPO: f"oci:{layout}"},
        )
    )
    config.write_text(json.dumps({**doc, "dataplane": dataplane}, indent=2) + "\n")
    w = World(
        tmp=tmp_path,
        service=f"chaos-{secrets.token_hex(3)}",
        port=free_port(),
        images=images,
        releases=LayoutRepository(tmp_path / "releases", create=True),
        config=config,
        state=state,
        log=tmp_path / "agent.log",
        dataplane=dataplane,
    )
    try:
        yield w
    finally:
        for proc in w.processes:
            if proc.proc.poll() is None:
                proc.kill()
        cleanup(state, w.service)
        shutil.rmtree(state / "roots", ignore_errors=True)


def leaks(w: World) -> list[str]:
    """What is left of the agent on the host: processes, containers, namespaces, mounts, bundles."""
    out = []
    marker = os.fsencode(str(w.state))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker in a for a in argv):
            out.append(f"process {entry}: {b' '.join(argv)[:120]!r}")
    if runc_list(w.state):
        out.append(f"runc containers {runc_list(w.state)}")
    netns = [n for n in list_netns() if n.startswith(f"kiln-{w.service}-")]
    if netns:
        out.append(f"network namespaces {netns}")
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(w.state) in line]
    if mounts:
        out.append(f"mounts {mounts}")
    bundles = os.listdir(w.state / "bundles") if (w.state / "bundles").exists() else []
    if bundles:
        out.append(f"bundles {bundles}")
    return out


def _refusals(state: Path) -> set[str]:
    return {str(e.get("reason")) for e in read_events(state, limit=100_000) if e.get("event") == "refused"}


# The embedded data plane (the default) only. HAProxy passes the data plane's shared tests
# (tests/agent/test_dataplane.py), but under this chaos one clean-clone run saw one request of
# ~1,000 answered with nothing: its drain cannot see per-backend connections across reloads, so an
# old instance may stop under an open request. Until that is fixed, HAProxy does not claim this.
@pytest.mark.parametrize("world", ["embedded"], indirect=True)
def test_chaos_no_request_fails_and_down_leaves_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    world.publish(1, "blue")
    agent = world.agent()
    agent.wait_up(UP_TIMEOUT)
    world.wait_good(agent, 1)
    assert ask(world.port)["version"] == "v1"

    plan = {2: ("publish", 2, "green"), 5: ("junk", 3, ""), 7: ("publish", 4, "blue")}
    delays = []
    with Poller(world.port) as poller:
        for i in range(KILLS):
            step = plan.get(i)
            if step is not None and step[0] == "publish":
                world.publish(step[1], step[2])
            elif step is not None:
                world.publish_unsigned(step[1])
            if i > 0:
                agent = world.agent()
                agent.wait_up(UP_TIMEOUT)
            delay = rng.uniform(0.0, 2.0)
            delays.append(delay)
            time.sleep(delay)
            agent.kill()

        agent = world.agent()
        agent.wait_up(UP_TIMEOUT)
        time.sleep(rng.uniform(0.5, 2.0))
        assert agent.terminate() == 0  # SIGTERM: the agent stops, the address stays
        agent = world.agent()
        agent.wait_up(UP_TIMEOUT)
        world.wait_good(agent, 4)
        time.sleep(0.5)
    elapsed_chaos = time.monotonic() - began

    assert poller.failures == [], poller.failures[:5]
    assert len(poller.answers) > 100
    assert {v for _, v, _ in poller.answers} <= {"v1", "v2", "v4"}
    assert "signature" in _refusals(world.state)  # the junk was seen and refused
    snap = snapshot(world.state, world.service)
    assert snap.journal.good is not None
    assert snap.journal.good.version == 4
    assert converged_problems(snap, replicas=REPLICAS, keep_roots=_roots(world, snap)) == []
    serving = set(snap.serving)
    for _ in range(10):
        answer = ask(world.port)
        assert answer["version"] == "v4"
        assert answer["instance"] in serving

    # The data plane outlives a SIGTERMed agent; `kiln agent down` stops it and everything else.
    assert agent.terminate() == 0
    assert ask(world.port)["version"] == "v4"
    assert main(["agent", "down", "--config", str(world.config), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert sorted(first["stopped"]) == sorted(serving)
    assert first["dataplanes"] == [world.dataplane]
    assert leaks(world) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", world.port), timeout=2.0).close()
    st = snapshot(world.state, world.service).journal
    assert st.instances == ()
    assert st.known == ()
    assert main(["agent", "down", "--config", str(world.config), "--json"]) == 0  # again: a no-op
    assert json.loads(capsys.readouterr().out)["noop"] is True
    downs = [e for e in read_events(world.state, limit=100_000) if e.get("event") == "down"]
    assert [e.get("action") for e in downs] == ["start", "done"]

    with capsys.disabled():
        print(
            f"\nchaos ({world.dataplane}): {KILLS} SIGKILLs at {[round(d, 2) for d in delays]}s after up, "
            "1 SIGTERM, "
            f"{len(poller.answers)} answers, {len(poller.failures)} failed, longest gap between answers "
            f"{poller.longest_gap() * 1000:.0f} ms, chaos {elapsed_chaos:.1f}s, "
            f"total {time.monotonic() - began:.1f}s"
        )


def _roots(w: World, snap: object) -> set[str]:
    st = snapshot(w.state, w.service).journal
    flavours = {1: "blue", 2: "green", 4: "blue"}
    out: set[str] = set()
    for ref in (st.good, st.previous):
        if ref is not None and ref.version in flavours:
            hexd = w.images[flavours[ref.version]].digest.hex
            out |= {hexd, f"{hexd}.json"}
    return out


def test_agent_down_refuses_while_the_agent_runs(world: World) -> None:
    world.publish(1, "blue")
    agent = world.agent()
    agent.wait_up(UP_TIMEOUT)
    assert main(["agent", "down", "--config", str(world.config)]) == 1
    assert agent.proc.poll() is None
    assert agent.terminate() == 0
    assert main(["agent", "down", "--config", str(world.config)]) == 0
    assert leaks(world) == []
    assert not ProcessDataPlane(world.state).pid_alive()


def _instance_pid(state: Path, iid: str) -> int:
    from agent.runc import RuncRuntime

    handle = RuncRuntime(state).state(iid)
    assert handle.pid, f"no pid for {iid}"
    return int(handle.pid)


def test_sigstopped_instance_leaves_rotation_after_a_restart(world: World) -> None:
    """After a restart the health monitor probes every serving instance: a frozen one leaves the
    rotation within ``retries x interval`` (+1 s) and is replaced.
    Requests already sent to it before that cannot be saved by any TCP data plane; requests
    sent after it left the rotation must all succeed."""
    world.publish(1, "blue")
    agent = world.agent()
    agent.wait_up(UP_TIMEOUT)
    world.wait_good(agent, 1)
    agent.kill()
    agent = world.agent()
    agent.wait_up(UP_TIMEOUT)
    frozen = snapshot(world.state, world.service).serving[0]
    pid = _instance_pid(world.state, frozen)
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        deadline = stopped_at + 30.0
        while frozen in snapshot(world.state, world.service).serving:
            assert time.monotonic() < deadline, f"{frozen} is frozen and still serves after 30s"
            time.sleep(0.05)
        out_after = time.monotonic() - stopped_at
        with Poller(world.port) as poller:
            time.sleep(2.0)
        assert poller.failures == []
        assert frozen not in {i for _, _, i in poller.answers}
        world.wait_good(agent, 1)
        print(f"\nfrozen instance replaced (left the serving set) after {out_after:.2f}s")
    finally:
        os.kill(pid, signal.SIGCONT)
