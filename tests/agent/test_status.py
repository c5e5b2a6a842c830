"""The status endpoint (Unix socket and loopback TCP): /status JSON, /metrics Prometheus, /rollback."""

from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path

import pytest

from agent.metrics import Metrics
from agent.reconcile import Agent
from agent.status import StatusServer, query
from tests.agent.agentkit import (
    MALLORY,
    NOW,
    FakeRuntime,
    Workspace,
    free_port,
    loopback_connector,
    make_release,
    make_root,
    service_yaml,
    sign_payload,
    signed,
    tiny_image,
)


def test_metrics_render_counters_by_label() -> None:
    m = Metrics()
    m.count_reconcile()
    m.count_reconcile()
    m.count_refusal("signature")
    m.count_refusal("signature")
    m.count_refusal("expired")
    m.count_rollout("success")
    m.count_rollback()
    m.set_verify_rate(100_000_000, 0.5)
    text = m.render()
    assert "kiln_agent_reconciles_total 2\n" in text
    assert 'kiln_agent_refusals_total{reason="signature"} 2\n' in text
    assert 'kiln_agent_refusals_total{reason="expired"} 1\n' in text
    assert 'kiln_agent_rollouts_total{result="success"} 1\n' in text
    assert "kiln_agent_rollbacks_total 1\n" in text
    assert "kiln_agent_verify_bytes_per_second 200000000.0\n" in text
    assert "# TYPE kiln_agent_refusals_total counter" in text


def test_status_endpoint_serves_status_metrics_and_rollback(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    port = free_port()
    runtime = FakeRuntime()
    agent = Agent(
        ws.config(),
        runtime=runtime,
        connector=loopback_connector,
        wall=lambda: NOW,
        health_deadline=5.0,
        drain_timeout=1.0,
        stop_grace=0.1,
    )
    tcp_port = free_port()
    server = StatusServer(
        ws.state,
        status=agent.status,
        metrics=agent.metrics.render,
        rollback=lambda: {"release": agent.rollback().to_dict()},
        tcp=("127.0.0.1", tcp_port),
    )
    try:
        agent.start()
        server.start()
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        for version, env in ((1, None), (2, {"V": "2"})):
            svc = service_yaml("web", web.pin, listen=f"127.0.0.1:{port}", env=env)
            ws.publish(signed(make_release(version, [svc])))
            assert agent.reconcile_once().outcome == "rolled-out"
        ws.publish(sign_payload(make_release(3, [service_yaml("web", web.pin)]).to_bytes(), MALLORY))
        assert agent.reconcile_once().reason == "signature"

        code, body = query(ws.state, "/status")
        doc = json.loads(body)
        assert code == 200
        assert doc["release"]["version"] == 2
        assert doc["previous"]["version"] == 1
        assert doc["last_refusal"]["reason"] == "signature"
        assert doc["last_refusal"]["version"] == 3
        assert [i["release"] for i in doc["instances"]] == [2]
        assert doc["metrics"]["refusals"] == {"signature": 1}

        code, body = query(ws.state, "/metrics")
        assert code == 200
        assert b'kiln_agent_refusals_total{reason="signature"} 1' in body
        assert b'kiln_agent_rollouts_total{result="success"} 2' in body

        with urllib.request.urlopen(f"http://127.0.0.1:{tcp_port}/metrics", timeout=5) as resp:
            assert b"kiln_agent_reconciles_total 3" in resp.read()
        # Control is on the Unix socket only.
        req = urllib.request.Request(f"http://127.0.0.1:{tcp_port}/rollback", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 404
        info.value.close()

        code, body = query(ws.state, "/rollback", method="POST")
        assert code == 200
        assert json.loads(body)["release"]["version"] == 1
        code, body = query(ws.state, "/rollback", method="POST")
        assert code == 409
        assert b"no previous good release" in body
        assert query(ws.state, "/nope")[0] == 404
    finally:
        server.stop()
        agent.close(stop_instances=True)
        runtime.close_all()
    assert not server.path.exists()
    with pytest.raises(OSError):
        query(ws.state, "/status")
