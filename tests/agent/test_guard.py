"""The loop never dies: an unexpected exception at any reconcile step is a refusal ``internal``.

Each case injects an exception that is not a kiln error (a bug, or hostile input nobody foresaw)
at one step (fetch, verify, pull, unpack, roll out, health, enforce, gc, status) while release v1
serves and v2 is published, and shows: the refusal is recorded (event, metric, journal/status),
the service keeps answering v1 (or v2 where the fault came after it was good), and once the fault
is gone the agent reconciles normally. The loop itself (``Agent.run``) is shown alive under a fault
that never goes away, backing off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import agent.prepare
import agent.reconcile
from agent.events import read_events
from agent.reconcile import Agent, ReconcileResult
from manifests.errors import KilnError
from tests.agent.agentkit import (
    NOW,
    FakeRuntime,
    FaultySource,
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


class Boom(RuntimeError):
    """Stands for any exception that is not a kiln error."""


@dataclass
class Env:
    ws: Workspace
    web: Published
    runtime: FakeRuntime
    port: int
    source: FaultySource
    agent: Agent

    def release(self, version: int, **kw: Any) -> bytes:
        svc = service_yaml("web", self.web.pin, listen=f"127.0.0.1:{self.port}", **kw)
        return signed(make_release(version, [svc]))

    def serving(self) -> None:
        status, body = http_get("127.0.0.1", self.port)
        assert status == 200
        assert b"instance" in body


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    runtime = FakeRuntime()
    config = ws.config(max_attempts=2)
    source = FaultySource(config)
    agent = Agent(
        config,
        runtime=runtime,
        source=source,
        connector=loopback_connector,
        wall=Clock(NOW),
        health_deadline=5.0,
        drain_timeout=1.0,
        stop_grace=0.1,
    )
    e = Env(ws=ws, web=web, runtime=runtime, port=free_port(), source=source, agent=agent)
    agent.start()
    ws.publish(e.release(1))
    assert agent.reconcile_once().outcome == "rolled-out"
    e.serving()
    yield e
    agent.close(stop_instances=True)
    runtime.close_all()


def internal_refusals(e: Env) -> list[dict[str, Any]]:
    return [
        ev for ev in read_events(e.ws.state) if ev["event"] == "refused" and ev.get("reason") == "internal"
    ]


def raising(*, when: Callable[..., bool] = lambda *a, **k: True, original: Any = None) -> Any:
    def fn(*args: Any, **kw: Any) -> Any:
        if when(*args, **kw):
            raise Boom("injected")
        return original(*args, **kw)

    return fn


# Each step: how to inject the fault, and the step named in the refusal.
def _fetch(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(e.source, "fetch_error", Boom("injected"))


def _verify(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(agent.reconcile, "check_release", raising())


def _pull(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(e.agent.store, "pull_image", raising())


def _unpack(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(agent.prepare, "compose_image", raising())  # the unpack step (snapshots)


def _roll_out(e: Env, mp: pytest.MonkeyPatch) -> None:
    original = e.agent.deployer.converge
    mp.setattr(
        e.agent.deployer, "converge", raising(when=lambda prep, *a: prep.release == 2, original=original)
    )


def _health(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(e.agent.deployer, "_probe", raising())


def _enforce(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(e.agent.enforcer, "drift", raising())


def _gc(e: Env, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(e.agent.store, "gc", raising())


Inject = Callable[[Env, pytest.MonkeyPatch], None]
STEPS: list[tuple[str, Inject, str, str]] = [
    # name, inject, step named in the refusal, outcome of the reconcile
    ("fetch", _fetch, "fetch", "refused"),
    ("verify", _verify, "verify", "refused"),
    ("pull", _pull, "prepare", "refused"),
    ("unpack", _unpack, "prepare", "refused"),
    ("roll out", _roll_out, "roll out", "failed"),
    ("health", _health, "roll out", "failed"),
    ("enforce", _enforce, "enforce", "rolled-out"),
    ("gc", _gc, "gc", "rolled-out"),
]


@pytest.mark.parametrize("case", STEPS, ids=[s[0] for s in STEPS])
def test_an_exception_at_a_step_is_an_internal_refusal_and_the_agent_keeps_serving(
    env: Env, monkeypatch: pytest.MonkeyPatch, case: tuple[str, Inject, str, str]
) -> None:
    name, inject, step, outcome = case
    a = env.agent
    v1 = [r.id for r in a.journal.state.instances]
    env.ws.publish(env.release(2, env={"V": "2"}))
    with monkeypatch.context() as mp:
        inject(env, mp)
        result = a.reconcile_once()
    assert result.outcome == outcome, result
    if outcome == "refused":
        assert result.reason == "internal"
        assert "Boom: injected" in result.detail
    # (the health monitor's own probes may hit the same fault: look for the step's refusal)
    refusals = [r for r in internal_refusals(env) if r["what"] == step]
    assert refusals, name
    assert "Boom" in refusals[-1]["detail"]
    assert a.metrics.refusals["internal"] >= 1
    assert a.journal.state.last_refusal is not None
    assert a.journal.state.last_refusal.reason == "internal"
    assert a.status()["last_refusal"]["reason"] == "internal"
    assert a.journal.state.rollout_to is None  # nothing is left half rolled out
    env.serving()
    if outcome in ("refused", "failed"):
        assert [r.id for r in a.journal.state.instances] == v1
        assert a.journal.state.good.version == 1  # type: ignore[union-attr]
    # The fault is gone: the agent goes on as if nothing happened.
    after = a.reconcile_once()
    assert after.outcome in ("rolled-out", "current"), after
    assert a.journal.state.good.version == 2  # type: ignore[union-attr]
    env.serving()


def test_an_exception_building_the_status_is_an_internal_refusal(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as mp:
        mp.setattr(agent.reconcile, "status_document", raising())
        doc = env.agent.status()
    assert doc["error"] == "internal"
    assert internal_refusals(env)[-1]["what"] == "status"
    assert env.agent.status()["release"]["version"] == 1
    env.serving()
    # The endpoint's thread does not write the journal; the next reconcile records the refusal.
    assert env.agent.reconcile_once().outcome == "current"
    refusal = env.agent.journal.state.last_refusal
    assert refusal is not None
    assert (refusal.reason, refusal.detail.split(":")[0]) == ("internal", "status")


def test_an_exception_in_the_health_monitor_does_not_stop_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = env.agent
    with monkeypatch.context() as mp:
        mp.setattr(a.deployer, "_probe", raising())
        deadline = time.monotonic() + 30
        while not any(r["what"].startswith("health") for r in internal_refusals(env)):
            assert time.monotonic() < deadline, "the monitor never reported its fault"
            time.sleep(0.05)
    assert a.monitor.running
    iid = a.journal.state.instances[0].id
    deadline = time.monotonic() + 30
    while a.monitor.state(iid) != "healthy":  # probes work again once the fault is gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env.serving()


def test_the_same_internal_fault_on_a_release_is_skipped_after_max_attempts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.ws.publish(env.release(2, env={"V": "2"}))
    monkeypatch.setattr(agent.prepare, "compose_image", raising())
    outcomes = [env.agent.reconcile_once().outcome for _ in range(3)]
    assert outcomes == ["refused", "refused", "skipped"]
    env.serving()


def test_the_loop_survives_a_fault_that_never_goes_away_and_backs_off(env: Env) -> None:
    a = env.agent
    a.config = type(a.config)(**{**_fields(a.config), "poll_interval": 0.05})
    env.source.fetch_error = Boom("always")
    results: list[ReconcileResult] = []
    stop = threading.Event()
    loop = threading.Thread(target=a.run, args=(stop,), kwargs={"on_result": results.append}, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while len(results) < 3:
            assert time.monotonic() < deadline, results
            time.sleep(0.05)
        assert loop.is_alive()
        assert all(r.reason == "internal" for r in results)
        env.serving()
        # Backing off: the waits double (0.1, 0.2, 0.4, ... s), so few fetches happen.
        time.sleep(1.0)
        assert env.source.fetches < 12
        env.source.fetch_error = None
    finally:
        stop.set()
        loop.join(30)
    assert not loop.is_alive()


def _fields(config: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_a_damaged_journal_or_root_at_start_never_keeps_the_agent_down(env: Env) -> None:
    """Damaged state files at a restart: the journal is set aside (and said so), the agent starts,
    re-verifies the channel's release and serves it; a FIFO as the stored trust root is refused
    at once instead of blocking the start."""
    e = env
    config, runtime = e.agent.config, e.runtime
    e.agent.close()
    (e.ws.state / "journal.json").write_bytes(b"[" * 100_000)
    again = Agent(
        config,
        runtime=runtime,
        source=e.source,
        connector=loopback_connector,
        wall=Clock(NOW),
        health_deadline=5.0,
        drain_timeout=1.0,
        stop_grace=0.1,
    )
    again.start()
    try:
        assert any(ev["event"] == "journal_damaged" for ev in read_events(e.ws.state))
        assert list(e.ws.state.glob("journal.json.damaged-*"))
        assert again.reconcile_once().outcome == "rolled-out"
        e.serving()
    finally:
        again.close()
    root = e.ws.state / "root"
    stored = root.read_bytes()
    root.unlink()
    os.mkfifo(root)
    blocked = Agent(config, runtime=runtime, source=e.source, connector=loopback_connector, wall=Clock(NOW))
    started = time.monotonic()
    with pytest.raises(KilnError):
        blocked.start()
    assert time.monotonic() - started < 30, "a FIFO must not block the start"
    root.unlink()
    root.write_bytes(stored)
    e.agent = Agent(
        config,
        runtime=runtime,
        source=e.source,
        connector=loopback_connector,
        wall=Clock(NOW),
        stop_grace=0.1,
    )
    e.agent.start()
