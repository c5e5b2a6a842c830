"""keep_previous: the previous release's instances keep running out of rotation after a rollout,
so a rollback inside the window only switches the address back; after it they are stopped.
Also: the instances of one step start together, ids journaled first in one commit."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from agent.journal import Journal
from agent.reconcile import Agent
from agent.standby import standby_of
from tests.agent.agentkit import NOW, make_release, service_yaml, signed
from tests.agent.test_reconcile import Env, Poller, env, serving_ids

__all__ = ["env"]


def _release(e: Env, version: int, *, keep: str | None = "5m", replicas: int = 2) -> bytes:
    svc: dict[str, Any] = service_yaml(
        "web", e.web.pin, listen=f"127.0.0.1:{e.port}", replicas=replicas, env={"V": str(version)}
    )
    if keep is not None:
        svc["keep_previous"] = keep
    return signed(make_release(version, [svc]))


def _answering(e: Env) -> str:
    status, body = e.get()
    assert status == 200
    return str(json.loads(body)["instance"])


def test_a_rollback_inside_the_window_is_a_switch_alone(env: Env) -> None:
    env.ws.publish(_release(env, 1))
    agent = env.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    first = serving_ids(agent)
    assert len(first) == 2
    env.ws.publish(_release(env, 2))
    assert agent.reconcile_once().outcome == "rolled-out"
    second = serving_ids(agent)
    assert not set(first) & set(second)
    standby = standby_of(agent.journal.state)
    assert sorted(s.record.id for s in standby) == first
    assert all(s.until == (NOW + timedelta(minutes=5)).timestamp() for s in standby)
    assert set(first) <= set(env.runtime.running())  # still running, out of rotation
    assert set(first) <= set(agent.journal.state.known)
    assert {_answering(env) for _ in range(6)} <= set(second)
    # A reconcile inside the window leaves them alone; a restarted agent does not take them for strays.
    assert agent.reconcile_once().outcome == "current"
    agent.close()
    agent = env.agent()
    assert set(first) <= set(env.runtime.running())
    started = len(env.runtime.started)
    with Poller(env.port) as poller:
        agent.rollback()
    assert poller.failures == []
    assert len(env.runtime.started) == started  # nothing started: the address switched back
    assert serving_ids(agent) == first
    assert {_answering(env) for _ in range(6)} <= set(first)
    # The release rolled back from is on standby in turn (its service keeps its previous).
    assert sorted(s.record.id for s in standby_of(agent.journal.state)) == second
    # Past the window the standby instances are drained and stopped.
    env.clock.now = NOW + timedelta(minutes=5, seconds=1)
    agent.reconcile_once()
    assert standby_of(agent.journal.state) == ()
    assert not set(second) & set(env.runtime.running())
    assert not set(second) & set(Journal(agent.state_dir).state.known)
    assert serving_ids(agent) == first


def test_without_keep_previous_the_replaced_instances_stop(env: Env) -> None:
    env.ws.publish(_release(env, 1, keep=None))
    agent = env.agent()
    agent.reconcile_once()
    first = serving_ids(agent)
    env.ws.publish(_release(env, 2, keep=None))
    agent.reconcile_once()
    assert standby_of(agent.journal.state) == ()
    assert not set(first) & set(env.runtime.running())
    started = len(env.runtime.started)
    agent.rollback()
    assert len(env.runtime.started) == started + 2  # a rollback starts instances again


def test_the_instances_of_one_step_start_together_after_one_journal_commit(env: Env) -> None:
    commits: list[tuple[str, ...]] = []
    env.ws.publish(_release(env, 1, keep=None, replicas=3))
    agent: Agent = env.agent()
    real_commit = agent.journal.commit

    def commit(state: Any) -> Any:
        commits.append(tuple(state.known))
        return real_commit(state)

    agent.journal.commit = commit  # type: ignore[method-assign]
    real_start = env.runtime.start
    seen_known: list[tuple[str, ...]] = []

    def start(spec: Any) -> Any:
        seen_known.append(tuple(agent.journal.state.known))
        return real_start(spec)

    env.runtime.start = start  # type: ignore[method-assign]
    assert agent.reconcile_once().outcome == "rolled-out"
    ids = serving_ids(agent)
    assert len(ids) == 3
    assert len(seen_known) == 3
    assert all(set(ids) <= set(k) for k in seen_known)  # every id was known before any started
    first = next(i for i, k in enumerate(commits) if set(ids) & set(k))
    assert set(ids) <= set(commits[first])  # the three ids entered known in one commit


def test_standby_instances_are_shown_in_status_and_metrics(env: Env) -> None:
    from agent.status import StatusServer, query
    from kiln.cmd_agent import _status_table

    env.ws.publish(_release(env, 1))
    agent = env.agent()
    agent.reconcile_once()
    first = serving_ids(agent)
    env.ws.publish(_release(env, 2))
    agent.reconcile_once()
    second = serving_ids(agent)
    until = (NOW + timedelta(minutes=5)).timestamp()
    with StatusServer(agent.state_dir, status=agent.status, metrics=agent.metrics_text):
        code, body = query(agent.state_dir, "/status", timeout=10.0)
        assert code == 200
        doc = json.loads(body)
        code, text = query(agent.state_dir, "/metrics", timeout=10.0)
        assert code == 200
    assert sorted(i["id"] for i in doc["instances"]) == second
    assert {i["state"] for i in doc["instances"]} == {"serving"}
    standby = sorted(doc["standby"], key=lambda i: i["id"])
    assert [i["id"] for i in standby] == first
    assert all(i["state"] == "standby" and i["release"] == 1 and i["until"] == until for i in standby)
    assert all(i["service"] == "web" for i in standby)
    metrics = text.decode()
    assert 'kiln_agent_standby_instances{service="web"} 2\n' in metrics
    for iid in first:
        assert (
            f'kiln_agent_standby_until_seconds{{service="web",instance="{iid}",release="1"}} {until:.3f}\n'
            in metrics
        )
    table = _status_table({**doc, "agent_running": True})
    assert sum("standby until 2" in line for line in table.splitlines()) == 2
    # Past the window they are stopped, and gone from both.
    env.clock.now = NOW + timedelta(minutes=5, seconds=1)
    agent.reconcile_once()
    assert agent.status()["standby"] == []
    assert "kiln_agent_standby_until_seconds{" not in agent.metrics_text()
