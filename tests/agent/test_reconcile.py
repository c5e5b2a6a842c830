"""The reconcile loop end to end over oci:DIR sources, with the in-process fake runtime.

Real signatures, real release artifacts, real content store and unpacking, the real forwarder in
front of the instances; only the runtime is a fake (HTTP servers in this process). The same flows
on real runc and a real registry are in ``test_reconcile_runc.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.events import read_events
from agent.journal import Journal
from agent.reconcile import Agent, AgentBusy
from agent.rollout import rollout_steps
from manifests.release import CanaryStep, Strategy, StrategyKind
from tests.agent.agentkit import (
    NOW,
    FakeRuntime,
    Published,
    Workspace,
    free_port,
    http_get,
    loopback_connector,
    make_release,
    make_root,
    service_yaml,
    signed,
    tiny_image,
)
from tests.agent.snapkit import layer_file


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    ws: Workspace
    web: Published
    runtime: FakeRuntime
    clock: Clock
    port: int
    agents: list[Agent]

    def agent(self, *, deadline: float = 5.0, **config: object) -> Agent:
        agent = Agent(
            self.ws.config(**config),
            runtime=self.runtime,
            connector=loopback_connector,
            wall=self.clock,
            health_deadline=deadline,
            drain_timeout=1.0,
            stop_grace=0.1,
        )
        self.agents.append(agent)
        agent.start()
        return agent

    def release(self, version: int, **kw: object) -> bytes:
        svc = service_yaml("web", self.web.pin, listen=f"127.0.0.1:{self.port}", **kw)  # type: ignore[arg-type]
        return signed(make_release(version, [svc]))

    def get(self) -> tuple[int, bytes]:
        return http_get("127.0.0.1", self.port)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    e = Env(ws=ws, web=web, runtime=FakeRuntime(), clock=Clock(NOW), port=free_port(), agents=[])
    yield e
    for agent in reversed(e.agents):
        agent.close(stop_instances=True)
    e.runtime.close_all()


def serving_ids(agent: Agent) -> list[str]:
    return sorted(r.id for r in agent.journal.state.instances)


class Poller:
    """A client hitting the service address throughout a rollout (bounded)."""

    def __init__(self, port: int, *, limit: float = 30.0) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._limit = limit
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self._limit
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                status, _ = http_get("127.0.0.1", self.port, timeout=2.0)
            except OSError as exc:
                self.failures.append(repr(exc))
            else:
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {status}")
            time.sleep(0.005)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- steps (pure) -------------------------------------------------------------------------------------

STEP_CASES = [
    (Strategy(), 3, 3, (3,)),
    (Strategy(kind=StrategyKind.ROLLING), 3, 3, (1, 2, 3)),
    (Strategy(kind=StrategyKind.ROLLING), 3, 1, (1,)),
    (
        Strategy(
            kind=StrategyKind.CANARY,
            steps=(
                CanaryStep(value=1),
                CanaryStep(value=50, percent=True),
                CanaryStep(value=100, percent=True),
            ),
        ),
        4,
        4,
        (1, 2, 4),
    ),
    (Strategy(), 2, 0, ()),
]


@pytest.mark.parametrize(("strategy", "replicas", "need", "expected"), STEP_CASES)
def test_rollout_steps(strategy: Strategy, replicas: int, need: int, expected: tuple[int, ...]) -> None:
    assert rollout_steps(strategy, replicas, need) == expected


# -- flows ----------------------------------------------------------------------------------------------


def test_first_release_rolls_out_and_serves_through_its_address(env: Env) -> None:
    env.ws.publish(env.release(1))
    agent = env.agent()
    result = agent.reconcile_once()
    assert (result.outcome, result.version) == ("rolled-out", 1)
    st = agent.journal.state
    assert st.good is not None
    assert st.good.version == 1
    assert st.highest == st.good
    assert st.rollout_to is None
    assert len(st.instances) == 1
    assert st.known == (st.instances[0].id,)
    status, body = env.get()
    assert status == 200
    assert st.instances[0].id.encode() in body
    assert agent.reconcile_once().outcome == "current"
    assert serving_ids(agent) == [st.instances[0].id]
    events = [e["event"] for e in read_events(env.ws.state)]
    assert events.count("rolled_out") == 1
    assert "accepted" in events


def test_blue_green_switch_keeps_answering_and_retires_the_old_instances(env: Env) -> None:
    env.ws.publish(env.release(1, replicas=2))
    agent = env.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    old = serving_ids(agent)
    env.ws.publish(env.release(2, replicas=2, env={"GREETING": "v2"}))
    with Poller(env.port) as poller:
        time.sleep(0.1)
        result = agent.reconcile_once()
        time.sleep(0.1)
    assert result.outcome == "rolled-out"
    assert poller.failures == []
    assert poller.ok > 5
    new = serving_ids(agent)
    assert len(new) == 2
    assert not set(new) & set(old)
    assert sorted(env.runtime.running()) == new  # the old ones were stopped
    st = agent.journal.state
    assert (st.good.version, st.previous.version) == (2, 1)  # type: ignore[union-attr]
    assert all(r.release == 2 for r in st.instances)


def test_failed_health_returns_to_the_previous_release_and_is_retried_a_bounded_number_of_times(
    env: Env,
) -> None:
    env.ws.publish(env.release(2))
    agent = env.agent(max_attempts=2, deadline=1.0)
    assert agent.reconcile_once().outcome == "rolled-out"
    v2 = serving_ids(agent)
    env.ws.publish(env.release(3, env={"HEALTH": "fail"}))
    with Poller(env.port) as poller:
        result = agent.reconcile_once()
    assert result.outcome == "failed"
    assert result.version == 3
    assert "HTTP 500" in result.detail
    assert poller.failures == []
    st = agent.journal.state
    assert serving_ids(agent) == v2
    assert env.runtime.running() == tuple(v2)
    assert st.good.version == 2
    assert st.highest.version == 3
    assert st.failure(3) is not None
    assert st.failure(3).attempts == 1
    assert agent.reconcile_once().outcome == "failed"  # attempt 2
    skipped = agent.reconcile_once()
    assert skipped.outcome == "skipped"
    assert skipped.version == 3
    assert serving_ids(agent) == v2
    assert agent.metrics.rollouts["failed"] == 2


def test_operator_rollback_is_local_recorded_and_not_undone_by_the_loop(env: Env) -> None:
    env.ws.publish(env.release(1))
    agent = env.agent()
    agent.reconcile_once()
    v1_instances = serving_ids(agent)
    env.ws.publish(env.release(2, env={"GREETING": "v2"}))
    agent.reconcile_once()
    env.ws.config()  # nothing else changes
    # The source disappears: rollback needs nothing from it.
    (env.ws.releases / "index.json").rename(env.ws.releases / "index.json.away")
    target = agent.rollback()
    assert target.version == 1
    st = agent.journal.state
    assert st.good.version == 1
    assert st.previous is None
    assert all(r.release == 1 for r in st.instances)
    assert serving_ids(agent) != v1_instances
    assert env.get()[0] == 200
    (env.ws.releases / "index.json.away").rename(env.ws.releases / "index.json")
    assert agent.reconcile_once().outcome == "skipped"
    assert st.good.version == 1  # type: ignore[union-attr]
    assert next(e for e in read_events(env.ws.state) if e["event"] == "rollback")["left"] == 2


@pytest.mark.parametrize("strategy", ["rolling", {"canary": {"steps": [1, "50%", "100%"]}}])
def test_rolling_and_canary_replace_every_instance_without_failures(env: Env, strategy: object) -> None:
    env.ws.publish(env.release(1, replicas=3, strategy=strategy))
    agent = env.agent()
    agent.reconcile_once()
    old = serving_ids(agent)
    env.ws.publish(env.release(2, replicas=3, strategy=strategy, env={"V": "2"}))
    with Poller(env.port) as poller:
        assert agent.reconcile_once().outcome == "rolled-out"
    assert poller.failures == []
    new = serving_ids(agent)
    assert len(new) == 3
    assert not set(new) & set(old)
    assert env.runtime.running() == tuple(new)


def test_a_killed_instance_is_replaced_within_one_reconcile(env: Env) -> None:
    env.ws.publish(env.release(1, replicas=2))
    agent = env.agent()
    agent.reconcile_once()
    victim = serving_ids(agent)[0]
    env.runtime.kill(victim)
    with Poller(env.port) as poller:
        result = agent.reconcile_once()
    assert result.replaced == 1
    assert poller.failures == []  # the forwarder falls through to the other replica
    ids = serving_ids(agent)
    assert victim not in ids
    assert len(ids) == 2
    assert victim not in env.runtime.list()
    assert agent.metrics.replacements["died"] == 1


def test_a_modified_root_is_unpacked_again_and_its_instances_replaced(env: Env) -> None:
    env.ws.publish(env.release(1))
    agent = env.agent()
    agent.reconcile_once()
    rec = agent.journal.state.instances[0]
    marker = agent.roots_dir / rec.manifest.split(":")[1] / "app" / "marker.txt"
    layer_file(agent.state_dir, rec.manifest, "app/marker.txt").write_bytes(b"tampered")
    assert marker.read_bytes() == b"tampered"  # seen through the composed root
    result = agent.reconcile_once()
    assert result.replaced == 1
    assert marker.read_bytes() == b"web"  # unpacked again from the verified store
    new = agent.journal.state.instances[0]
    assert new.id != rec.id
    assert new.fingerprint == rec.fingerprint
    assert agent.reconcile_once().replaced == 0


def test_an_instance_past_max_lifetime_is_replaced_without_the_service_failing(env: Env) -> None:
    env.ws.publish(env.release(1, max_lifetime="1h"))
    agent = env.agent()
    agent.reconcile_once()
    first = serving_ids(agent)
    assert agent.reconcile_once().replaced == 0
    env.clock.now = NOW + timedelta(hours=1, seconds=1)
    with Poller(env.port) as poller:
        result = agent.reconcile_once()
    assert result.replaced == 1
    assert poller.failures == []
    assert serving_ids(agent) != first
    assert agent.metrics.replacements["lifetime"] == 1


def test_an_unreachable_source_keeps_everything_serving(env: Env) -> None:
    env.ws.publish(env.release(1))
    agent = env.agent()
    agent.reconcile_once()
    ids = serving_ids(agent)
    agent.config = replace(agent.config, source=f"oci:{env.ws.base / 'gone'}")
    result = agent.reconcile_once()
    assert result.outcome == "unavailable"
    assert serving_ids(agent) == ids
    assert env.get()[0] == 200


def test_restart_after_a_crash_mid_rollout_leaves_one_release_serving(env: Env) -> None:
    env.ws.publish(env.release(1, replicas=2))
    agent = env.agent()
    agent.reconcile_once()
    v1 = serving_ids(agent)
    # Crash in the middle of a rollout: v2 accepted, one new instance started, nothing switched.
    env.ws.publish(env.release(2, replicas=2, env={"V": "2"}))
    from agent.journal import ReleaseRef
    from signing.release import check_release

    envelope = env.release(2, replicas=2, env={"V": "2"})
    verified = check_release(
        envelope, root=agent.root, channel="stable", now=NOW, highest_accepted=1, current_payload_digest=None
    )
    prepared = agent.preparer.prepare(verified.release, root=agent.root, fetch=True)
    agent.releases.save(verified.payload, verified.payload_digest)
    ref = ReleaseRef(version=2, payload_digest=str(verified.payload_digest))
    agent.journal.commit(
        replace(agent.journal.state, highest=ref, rollout_to=ref, rollout_from=agent.journal.state.good)
    )
    orphan = agent.deployer.start_instance(prepared["web"])
    agent.deployer.close()  # the process dies: its forwarders go with it
    agent.close()
    env.agents.remove(agent)
    assert orphan.id in env.runtime.running()

    again = env.agent()  # start() recovers
    assert orphan.id not in env.runtime.list()
    st = again.journal.state
    assert st.rollout_to is None
    assert st.good.version == 1
    assert serving_ids(again) == v1
    assert set(env.runtime.running()) == set(v1)
    assert st.failure(2) is not None
    assert st.failure(2).reason == "interrupted"
    assert env.get()[0] == 200  # the forwarder was re-created over the serving instances
    assert again.reconcile_once().outcome == "rolled-out"  # the retry succeeds
    assert all(r.release == 2 for r in again.journal.state.instances)


def test_one_agent_per_state_directory(env: Env) -> None:
    env.agent()
    second = Agent(env.ws.config(), runtime=env.runtime)  # no I/O until open()
    with pytest.raises(AgentBusy, match="another kiln agent is running"):
        second.open()


def test_journal_survives_reopen_with_the_same_sequence(env: Env) -> None:
    env.ws.publish(env.release(1))
    agent = env.agent()
    agent.reconcile_once()
    seq = agent.journal.state.seq
    assert Journal(env.ws.state).state == agent.journal.state
    assert seq > 3


def test_release_resources_and_user_namespace_reach_the_runtime(env: Env) -> None:
    svc = service_yaml("web", env.web.pin, listen=f"127.0.0.1:{env.port}")
    svc["resources"] = {"memory": "64Mi", "cpus": 0.25, "pids": 32}
    svc["user_namespace"] = True
    env.ws.publish(signed(make_release(1, [svc])))
    agent = env.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    (spec,) = env.runtime.specs.values()
    assert (spec.limits.memory_bytes, spec.limits.cpu_millis, spec.limits.pids) == (64 << 20, 250, 32)
    assert spec.user_namespace is True
    # A release that changes only the caps replaces the instance (the old one is not "current").
    svc["resources"] = {"memory": "128Mi"}
    env.ws.publish(signed(make_release(2, [svc])))
    assert agent.reconcile_once().outcome == "rolled-out"
    (again,) = env.runtime.specs.values()
    assert again.instance_id != spec.instance_id
    assert (again.limits.memory_bytes, again.limits.cpu_millis, again.limits.pids) == (128 << 20, None, 512)
