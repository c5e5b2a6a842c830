"""Health everywhere: every serving instance is watched, whoever started it.

With the in-process fake runtime (an instance "frozen" accepts connections and never answers, as
a SIGSTOPped process does): instances adopted after an agent restart and instances started by a
drift (lifetime) replacement are probed continuously; a frozen one is taken out of rotation and
the loop replaces it; status never says ``unknown`` after the first interval. The same on real runc
with SIGSTOP is in ``test_reconcile_runc.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.events import read_events
from agent.health import HealthMonitor, HealthResult, MonitorTarget
from agent.reconcile import Agent
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
from tests.agent.test_reconcile import Clock

INTERVAL = 0.2
RETRIES = 2


def wait_for(what: str, cond: Callable[[], Any], limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Host:
    ws: Workspace
    web: Published
    runtime: FakeRuntime
    clock: Clock
    port: int
    agents: list[Agent]

    def agent(self, **config: Any) -> Agent:
        agent = Agent(
            self.ws.config(poll_interval=60.0, **config),
            runtime=self.runtime,
            connector=loopback_connector,
            wall=self.clock,
            health_deadline=5.0,
            drain_timeout=0.5,
            stop_grace=0.1,
        )
        self.agents.append(agent)
        agent.start()
        return agent

    def publish(self, version: int, **kw: Any) -> None:
        svc = service_yaml(
            "web",
            self.web.pin,
            listen=f"127.0.0.1:{self.port}",
            interval=f"{int(INTERVAL * 1000)}ms",
            timeout=f"{int(INTERVAL * 1000)}ms",
            retries=RETRIES,
            **kw,
        )
        self.ws.publish(signed(make_release(version, [svc])))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    h = Host(ws=ws, web=web, runtime=FakeRuntime(), clock=Clock(NOW), port=free_port(), agents=[])
    yield h
    for agent in reversed(h.agents):
        agent.close(stop_instances=True)
    h.runtime.close_all()


class Loop:
    """``Agent.run`` in a thread (its poll interval is long: only the monitor wakes it)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.agent.wake.set()
        self.thread.join(30)


def ids(agent: Agent) -> list[str]:
    return sorted(r.id for r in agent.journal.state.instances)


def in_rotation(agent: Agent) -> list[str]:
    return sorted(i["id"] for i in agent.status()["instances"] if i["in_rotation"])


def answers(port: int, n: int = 10) -> list[int]:
    """``n`` requests through the service address (a frozen backend would time them out)."""
    return [http_get("127.0.0.1", port, timeout=2.0)[0] for _ in range(n)]


def freeze_and_see_it_replaced(host: Host, agent: Agent, victim: str) -> float:
    """Freeze ``victim``; it leaves the rotation, the loop replaces it; returns seconds to eject."""
    frozen_at = time.monotonic()
    host.runtime.freeze(victim)
    wait_for(f"{victim} unhealthy", lambda: agent.monitor.state(victim) == "unhealthy")
    ejected = time.monotonic() - frozen_at
    if len(ids(agent)) > 1:
        assert victim not in in_rotation(agent)
        assert answers(host.port) == [200] * 10  # nothing goes to the frozen instance any more
    with Loop(agent):
        wait_for(f"{victim} replaced", lambda: victim not in ids(agent))
    assert victim not in host.runtime.running()
    good = agent.journal.state.good
    assert good is not None
    assert len(ids(agent)) == agent.load_release(good).services[0].replicas
    assert http_get("127.0.0.1", host.port)[0] == 200
    events = [e for e in read_events(host.ws.state) if e.get("instance") == victim]
    assert any(e["event"] == "unhealthy" for e in events)
    assert any(e["event"] == "replaced" and e["cause"] == "unhealthy" for e in events)
    return ejected


def test_after_a_restart_adopted_instances_are_watched_and_a_frozen_one_is_replaced(host: Host) -> None:
    host.publish(1, replicas=2)
    first = host.agent()
    assert first.reconcile_once().outcome == "rolled-out"
    first.close()  # the agent stops; the instances go on
    host.agents.remove(first)
    again = host.agent()
    serving = ids(again)
    assert len(serving) == 2
    wait_for("a health state for every instance", lambda: all(again.monitor.state(i) for i in serving))
    doc = again.status()
    assert {i["health"] for i in doc["instances"]} == {"healthy"}
    freeze_and_see_it_replaced(host, again, serving[0])
    assert serving[1] in ids(again)


def test_an_instance_started_by_a_lifetime_replacement_is_watched(host: Host) -> None:
    host.publish(1, replicas=2, max_lifetime="1h")
    agent = host.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    host.clock.now = NOW + timedelta(hours=1, seconds=1)
    before = ids(agent)
    assert agent.reconcile_once().replaced == 2
    host.clock.now = NOW + timedelta(hours=1, seconds=2)  # young again: no lifetime drift
    fresh = ids(agent)
    assert not set(fresh) & set(before)
    wait_for("health of the replacements", lambda: all(agent.monitor.state(i) == "healthy" for i in fresh))
    freeze_and_see_it_replaced(host, agent, fresh[1])


def test_status_is_never_unknown_after_the_first_interval(host: Host) -> None:
    host.publish(1, replicas=3)
    agent = host.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    time.sleep(INTERVAL * 2)
    wait_for("no unknown", lambda: all(i["health"] != "unknown" for i in agent.status()["instances"]))


def test_a_single_frozen_instance_stays_in_rotation_until_replaced(host: Host) -> None:
    """Fail open: taking the only backend out would not serve anyone better."""
    host.publish(1, replicas=1)
    agent = host.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    victim = ids(agent)[0]
    wait_for("healthy", lambda: agent.monitor.state(victim) == "healthy")
    host.runtime.freeze(victim)
    wait_for("unhealthy", lambda: agent.monitor.state(victim) == "unhealthy")
    assert in_rotation(agent) == [victim]
    ev = next(e for e in read_events(host.ws.state) if e["event"] == "unhealthy")
    assert ev["out_of_rotation"] is False
    with Loop(agent):
        wait_for("replaced", lambda: victim not in ids(agent))
    assert http_get("127.0.0.1", host.port)[0] == 200


def test_a_recovered_instance_goes_back_into_rotation() -> None:
    answers = {"a": True, "b": True}
    seen: list[tuple[str, str]] = []

    def check(name: str) -> Callable[[float], HealthResult]:
        return lambda _t: HealthResult(ok=answers[name], detail="", latency=0.0)

    targets = [MonitorTarget(id=n, interval=0.02, timeout=0.02, retries=2, check=check(n)) for n in answers]
    monitor = HealthMonitor(
        targets=lambda: targets,
        on_unhealthy=lambda i, _r: seen.append(("down", i)),
        on_healthy=lambda i: seen.append(("up", i)),
        on_error=lambda i, e: seen.append(("error", i)),
        tick=0.02,
    )
    monitor.start()
    try:
        wait_for("probed", lambda: monitor.state("a") == "healthy")
        answers["a"] = False
        wait_for("down", lambda: ("down", "a") in seen)
        assert monitor.state("a") == "unhealthy"
        assert monitor.state("b") == "healthy"
        answers["a"] = True
        wait_for("up", lambda: ("up", "a") in seen)
        targets = [replace(t, id=t.id) for t in targets if t.id == "b"]
        wait_for("a forgotten", lambda: monitor.state("a") is None)
    finally:
        monitor.stop()
    assert seen.count(("down", "a")) == 1
    assert not [s for s in seen if s[0] == "error"]
