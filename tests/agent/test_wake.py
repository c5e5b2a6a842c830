"""Waking the loop: POST /reconcile on the agent's socket (``kiln agent reconcile --now``) makes a
loop that polls once an hour reconcile at once; with no agent running, ``--now`` says so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.reconcile import Agent
from agent.status import StatusServer, query
from kiln.cli import main
from tests.agent.agentkit import (
    FakeRuntime,
    Workspace,
    free_port,
    loopback_connector,
    make_release,
    make_root,
    service_yaml,
    signed,
    tiny_image,
)


def test_post_reconcile_wakes_a_loop_that_polls_hourly(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    runtime = FakeRuntime()
    agent = Agent(ws.config(poll_interval=3600.0), runtime=runtime, connector=loopback_connector)
    server = StatusServer(ws.state, status=agent.status, metrics=agent.metrics.render, wake=agent.nudge)
    stop = threading.Event()
    results: list[str] = []
    loop = threading.Thread(
        target=agent.run, args=(stop,), kwargs={"on_result": lambda r: results.append(r.outcome)}
    )
    try:
        agent.start()
        server.start()
        loop.start()
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:  # the first reconcile: nothing published
            time.sleep(0.01)
        assert results == ["unavailable"] or results[0] != "rolled-out"
        svc = service_yaml("web", web.pin, listen=f"127.0.0.1:{free_port()}")
        ws.publish(signed(make_release(1, [svc])))
        code, body = query(ws.state, "/reconcile", method="POST", timeout=10)
        assert (code, body) == (202, b'{"woken": true}')
        while "rolled-out" not in results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "rolled-out" in results  # long before the hour's poll
        assert len(runtime.running()) == 1
    finally:
        stop.set()
        loop.join(30)
        server.stop()
        agent.close(stop_instances=True)
        runtime.close_all()


def test_reconcile_now_without_a_running_agent_fails_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    (tmp_path / "agent.yaml").write_text(
        "apiVersion: kiln.dev/v1\nkind: AgentConfig\n"
        f"source: oci:{ws.releases}\nchannel: stable\ntrust_root: {tmp_path / 'root.yaml'}\n"
        f"state: {ws.state}\n"
    )
    assert main(["agent", "reconcile", "--now", "--config", str(tmp_path / "agent.yaml")]) == 1
    err = capsys.readouterr().err
    assert "no agent answers" in err
    assert "--once" in err
    with pytest.raises(SystemExit) as usage:
        main(["agent", "reconcile", "--config", str(tmp_path / "agent.yaml")])
    assert usage.value.code == 2  # one of --once and --now is required
    assert "one of the arguments --once --now is required" in capsys.readouterr().err
