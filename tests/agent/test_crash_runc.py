"""Crash safety of the real agent on real runc: SIGKILL at random moments of a blue-green rollout.

``kiln agent run`` runs as a separate process over an ``oci:DIR`` release source, with two
replicas of an echo image (python-web whose ``/`` says ``VERSION`` and the instance id). v1
serves; then v2 (another image, ``VERSION=v2``) is published and the agent is killed with SIGKILL
again and again while it rolls v2 out:

- at random delays after it came back up, drawn from a seeded RNG over the measured duration of
  the first rollout (so they land in fetching, verifying, pulling, unpacking, starting, health
  checks, the switch, the hold and the drain), and
- right after its N-th journal commit, N drawn from the same RNG over the commits a rollout makes
  (``KILN_AGENT_TEST_FREEZE_AFTER_COMMIT`` stops the process there; the test kills it), so kills
  also land in the recovery of the previous kill.

After every kill (the agent dead, the state frozen): every runc container, network namespace and
bundle is one the journal knows, and the serving set is one release. After every restart that
came up: the status socket answers, the address answers from an instance of the serving set whose
``VERSION`` is that instance's release, and the serving set is one release. When v2 became good
before a kill, v3 (and so on) is published, so the next kills land in a rollout again. At the end
the agent converges: exactly the serving instances of one release run (``runc list``, ``ip netns``,
bundles, ``known``), the address answers from that release, and no root or temporary blob is left
beyond what the journal keeps.
"""

from __future__ import annotations

import random
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from manifests.oci import Descriptor
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release
from tests.agent.agentkit import free_port, make_release, make_root, service_yaml, sign_and_attest, signed
from tests.agent.conftest import WebImage
from tests.agent.crashkit import (
    AgentProcess,
    Snapshot,
    agent_config_yaml,
    ask,
    cleanup,
    converged_problems,
    crash_problems,
    echo_image,
    snapshot,
)
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"
SEED = 0x6B696C6E  # "kiln"
TIMED_KILLS = 20
COMMIT_KILLS = 8
REPLICAS = 2
UP_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 60.0


@dataclass
class Crash:
    """One test's world: images, releases, the agent's config and state, the service."""

    tmp: Path
    service: str
    port: int
    images: dict[str, Descriptor]
    releases: LayoutRepository
    config: Path
    state: Path
    log: Path
    published: dict[int, str] = field(default_factory=dict)  # version -> image flavour
    processes: list[AgentProcess] = field(default_factory=list)

    def publish(self, version: int, flavour: str) -> None:
        svc = service_yaml(
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
        publish_release(self.releases, signed(make_release(version, [svc])))
        self.published[version] = flavour

    def agent(self, freeze_after_commit: int | None = None) -> AgentProcess:
        proc = AgentProcess(self.config, self.state, self.log, freeze_after_commit=freeze_after_commit)
        self.processes.append(proc)
        return proc

    def root_names(self, *versions: int) -> set[str]:
        out: set[str] = set()
        for v in versions:
            hexd = self.images[self.published[v]].digest.hex
            out |= {hexd, f"{hexd}.json"}
        return out


@pytest.fixture
def crash(python_web: WebImage, tmp_path: Path) -> Iterator[Crash]:
    require_root("runc and network namespaces need root")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    layout = tmp_path / "images"
    images = {f: echo_image(python_web, layout, flavour=f) for f in ("blue", "green")}
    for desc in images.values():
        sign_and_attest(layout, desc, identity=REPO)
    root = tmp_path / "root.yaml"
    root.write_text(make_root().to_yaml())
    state = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text(
        agent_config_yaml(
            source=f"oci:{tmp_path / 'releases'}",
            trust_root=root,
            state=state,
            images={REPO: f"oci:{layout}"},
        )
    )
    # A service name of its own: /run/netns is shared with whatever else runs on the host.
    world = Crash(
        tmp=tmp_path,
        service=f"crash-{secrets.token_hex(3)}",
        port=free_port(),
        images=images,
        releases=LayoutRepository(tmp_path / "releases", create=True),
        config=config,
        state=state,
        log=tmp_path / "agent.log",
    )
    try:
        yield world
    finally:
        for proc in world.processes:
            proc.kill()
        cleanup(state, world.service)
        shutil.rmtree(state / "roots", ignore_errors=True)


def _check_up(crash: Crash, agent: AgentProcess, first: dict[str, Any]) -> str:
    """The restarted agent is up: one release serves, and the address answers from it."""
    answer = ask(crash.port)
    after = agent.status()
    assert after is not None, "the agent stopped answering on its status socket"
    for doc in (first, after):
        releases = {i["release"] for i in doc["instances"]}
        assert len(releases) == 1, f"status shows releases {sorted(releases)} serving"
    records = {i["id"]: i for doc in (first, after) for i in doc["instances"]}
    rec = records.get(answer["instance"])
    assert rec is not None, f"{answer['instance']} answered but is not in the serving set {sorted(records)}"
    assert answer["version"] == f"v{rec['release']}", (answer, rec)
    return str(answer["version"])


def _phase(snap: Snapshot, target: int) -> str:
    """Where a kill landed, as the journal and the runtime tell it."""
    st = snap.journal
    extra = len(set(snap.runc) - set(snap.serving))
    if st.good is not None and st.good.version == target and not st.rolling_out:
        return "after"
    where = "preparing"  # fetching, verifying, pulling, unpacking, or idle
    if st.rolling_out:
        where = "switched" if snap.releases == {target} else "starting"
    return f"{where}+{extra}" if extra else where


def _wait_frozen_or_idle(crash: Crash, agent: AgentProcess, target: int, timeout: float) -> bool:
    """True once the agent froze after its commit; False if it finished ``target`` before that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.wait_frozen(0.2):
            return True
        doc = agent.status(timeout=0.5)
        if doc is not None and doc["rollout"] is None and (doc["release"] or {}).get("version") == target:
            return agent.frozen()
    raise AssertionError(f"the agent neither froze nor finished v{target} within {timeout:g}s")


def test_sigkill_at_random_points_of_a_rollout_leaves_one_release_and_no_leaks(crash: Crash) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)

    # v1 from nothing: its duration (from "up" to "good") sizes the random delays.
    crash.publish(1, "blue")
    agent = crash.agent()
    agent.wait_up(UP_TIMEOUT)
    t0 = time.monotonic()
    while True:
        doc = agent.status()
        if doc is not None and doc["release"] is not None and doc["rollout"] is None:
            break
        assert time.monotonic() - t0 < CONVERGE_TIMEOUT, "v1 did not roll out"
        time.sleep(0.05)
    window = time.monotonic() - t0
    commits = int(doc["seq"])
    assert ask(crash.port)["version"] == "v1"
    agent.kill()
    assert crash_problems(snapshot(crash.state, crash.service)) == []

    target, flavour = 2, "green"
    crash.publish(target, flavour)
    plan: list[tuple[str, float]] = [("time", rng.uniform(0.0, window)) for _ in range(TIMED_KILLS)]
    plan += [("commit", float(rng.randint(1, commits + 4))) for _ in range(COMMIT_KILLS)]
    rng.shuffle(plan)

    during_rollout = 0
    came_up = 0
    froze = 0
    versions_seen: set[str] = set()
    phases: Counter[str] = Counter()
    for i, (kind, value) in enumerate(plan):
        if kind == "time":
            agent = crash.agent()
            first = agent.wait_up(UP_TIMEOUT)
            came_up += 1
            versions_seen.add(_check_up(crash, agent, first))
            time.sleep(value)
        else:
            agent = crash.agent(freeze_after_commit=int(value))
            if _wait_frozen_or_idle(crash, agent, target, UP_TIMEOUT + 2 * window):
                froze += 1
        agent.kill()
        snap = snapshot(crash.state, crash.service)
        problems = crash_problems(snap)
        assert problems == [], f"kill {i} ({kind} {value:g}): {problems}"
        phases[_phase(snap, target)] += 1
        good = snap.journal.good
        if good is None or good.version != target:
            during_rollout += 1
        else:  # the rollout finished before this kill: start the next one
            target, flavour = target + 1, "blue" if flavour == "green" else "green"
            crash.publish(target, flavour)

    # Let it converge.
    agent = crash.agent()
    agent.wait_up(UP_TIMEOUT)
    t0 = time.monotonic()
    while True:
        doc = agent.status()
        snap = snapshot(crash.state, crash.service)
        if (
            doc is not None
            and doc["rollout"] is None
            and doc["release"] is not None
            and doc["release"]["version"] == target
            and snap.runc == snap.serving
            and len(snap.serving) == REPLICAS
        ):
            break
        assert time.monotonic() - t0 < CONVERGE_TIMEOUT, (
            f"no convergence to v{target}: runc {snap.runc}, serving {snap.serving}, status {doc}"
        )
        time.sleep(0.1)
    serving = set(snap.serving)
    for _ in range(10):
        answer = ask(crash.port)
        assert answer["version"] == f"v{target}"
        assert answer["instance"] in serving
    assert agent.terminate() == 0

    snap = snapshot(crash.state, crash.service)
    st = snap.journal
    assert st.good is not None
    assert st.good.version == target
    assert st.failure(target) is None
    keep = crash.root_names(*(r.version for r in (st.good, st.previous) if r is not None))
    assert converged_problems(snap, replicas=REPLICAS, keep_roots=keep) == []

    elapsed = time.monotonic() - began
    print(
        f"\ncrash test: {len(plan)} SIGKILLs ({TIMED_KILLS} timed over a {window:.2f}s window, "
        f"{COMMIT_KILLS} after commits 1..{commits + 4}, {froze} froze there), {during_rollout} during a "
        f"rollout {dict(sorted(phases.items()))}, {came_up} restarts checked up "
        f"(answers from {sorted(versions_seen)}), final v{target}, "
        f"{elapsed:.1f}s"
    )
    assert during_rollout >= len(plan) // 2
