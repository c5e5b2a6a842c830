"""Operators: the release source's state in ``kiln agent status``, ``reconcile --once`` exit codes,
and notices once per process.

Acceptance 6: a real ``docker-registry`` with htpasswd auth answering 401 (the agent has no
credentials) and a loopback port nobody listens on show in status with their reasons (``auth``,
``unreachable``); every documented exit code of ``kiln agent reconcile --once`` is produced by a
real flow (0 rolled out / current, 1 failed / skipped, 3 refused, 4 unavailable).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.reconcile
from agent.reconcile import Agent
from kiln.cli import main
from kiln.cmd_agent import RECONCILE_EXIT
from publisher.errors import AuthError, RegistryUnavailable
from publisher.release_artifact import ReleaseNotFound
from tests.agent.agentkit import (
    MALLORY,
    NOW,
    FakeRuntime,
    FaultySource,
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
from tests.agent.test_reconcile import Clock
from tests.publisher.registry import RegistryProcess
from tests.support import require_tool


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("KILN_REGISTRY_PASSWORD", raising=False)
    (tmp_path / "docker").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


def write_config(base: Path, source: str, **extra: str) -> Path:
    (base / "root.yaml").write_text(make_root().to_yaml())
    lines = [
        "apiVersion: kiln.dev/v1",
        "kind: AgentConfig",
        f"source: {source}",
        "channel: stable",
        "trust_root: root.yaml",
        "state: state",
        "poll_interval: 2s",
        "images:",
        '  - {repository: localhost/web, location: "oci:images/web"}',
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path = base / "agent.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def reconcile(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["agent", "reconcile", "--once", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def status(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    capsys.readouterr()
    assert main(["agent", "status", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["agent", "status", "--config", str(config)]) == 0
    return doc, capsys.readouterr().out


# -- acceptance 6: 401 and unreachable, shown with their reasons ----------------------------------------


@pytest.mark.integration
def test_status_shows_a_401_from_a_real_registry_with_reason_auth(
    tmp_path: Path, no_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("docker-registry", "docker-registry")
    with RegistryProcess(root=tmp_path / "registry", htpasswd=("kiln", "s3cret")) as reg:
        config = write_config(tmp_path, f"{reg.host}/team/releases", insecure="true")
        code, doc = reconcile(config, capsys)
    assert code == 4
    assert (doc["outcome"], doc["source_reason"]) == ("unavailable", "auth")
    st, table = status(config, capsys)
    src = st["source"]
    assert src["ok"] is False
    assert src["last_error_reason"] == "auth"
    assert "401" in src["last_error"]
    assert src["last_success"] is None
    assert f"source {reg.host}/team/releases: failing" in table
    assert "last error (auth)" in table


def test_status_shows_an_unreachable_source_with_its_reason(
    tmp_path: Path, no_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f"127.0.0.1:{free_port()}/team/releases", insecure="true")
    code, doc = reconcile(config, capsys)
    assert code == 4
    assert doc["source_reason"] == "unreachable"
    st, table = status(config, capsys)
    assert st["source"]["last_error_reason"] == "unreachable"
    assert "last error (unreachable)" in table


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (AuthError("401 UNAUTHORIZED", status=401), "auth"),
        (RegistryUnavailable("connection refused"), "unreachable"),
        (ReleaseNotFound("no release under tag 'stable'"), "not-found"),
        (OSError("network down"), "unreachable"),
    ],
)
def test_a_running_agent_reports_the_source_state_and_its_last_success(
    tmp_path: Path, error: Exception, reason: str
) -> None:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    config = ws.config()
    source = FaultySource(config)
    a = Agent(config, runtime=FakeRuntime(), source=source, connector=loopback_connector, wall=Clock(NOW))
    a.start(monitor=False)
    try:
        ws.publish(signed(make_release(1, [service_yaml("web", web.pin)])))
        assert a.reconcile_once().outcome == "rolled-out"
        assert a.status()["source"]["ok"] is True
        source.fetch_error = error
        assert a.reconcile_once().outcome == "unavailable"
        src = a.status()["source"]
        assert src["ok"] is False
        assert src["last_error_reason"] == reason
        assert src["last_success"] == NOW.timestamp()
        assert src["source"] == source.display
    finally:
        a.close(stop_instances=True)


def test_junk_published_as_the_release_is_refused_and_the_source_stays_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "oci:releases")
    ws = Workspace(tmp_path)
    ws.publish_raw(b"not a dsse envelope")
    code, doc = reconcile(config, capsys)
    assert code == 3
    assert doc["reason"] == "parse"
    st, _ = status(config, capsys)
    assert st["source"]["ok"] is True  # the source answered; what it sent was refused


# -- exit codes of reconcile --once ------------------------------------------------------------------


@pytest.fixture
def fake_runc(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRuntime]:
    """``kiln agent`` in this process, with the in-process fake runtime instead of runc."""
    runtime = FakeRuntime()
    monkeypatch.setattr(
        agent.reconcile,
        "Agent",
        functools.partial(Agent, runtime=runtime, connector=loopback_connector, health_deadline=2.0),
    )
    yield runtime
    runtime.close_all()


def test_reconcile_once_exit_codes(
    tmp_path: Path, fake_runc: FakeRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path)
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc, name="web")
    config = write_config(tmp_path, "oci:releases", max_attempts="2")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "web").symlink_to(tmp_path / "registry" / "web")
    port = free_port()

    def publish(version: int, **kw: Any) -> None:
        svc = service_yaml("web", web.pin, listen=f"127.0.0.1:{port}", **kw)
        ws.publish(signed(make_release(version, [svc])))

    seen: dict[str, int] = {}

    def once(expected: str) -> None:
        code, doc = reconcile(config, capsys)
        assert doc["outcome"] == expected, doc
        assert doc["exit_code"] == code
        seen[expected] = code

    # 4: nothing reachable under the source yet
    once("unavailable")
    publish(1)
    once("rolled-out")
    once("current")
    publish(2, env={"HEALTH": "fail"})
    once("failed")
    once("failed")
    once("skipped")
    ws.publish_raw(sign_payload(make_release(3, [service_yaml("web", web.pin)]).to_bytes(), MALLORY))
    once("refused")
    assert seen == {
        "unavailable": 4,
        "rolled-out": 0,
        "current": 0,
        "failed": 1,
        "skipped": 1,
        "refused": 3,
    }
    assert seen == {k: RECONCILE_EXIT[k] for k in seen}
    # Every outcome has its code; "waiting" (1) needs a fleet and is tested with one.
    assert set(RECONCILE_EXIT) == {*seen, "waiting"}
    assert RECONCILE_EXIT["waiting"] == 1


def test_reconcile_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["agent", "reconcile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("0 current or rolled out", "1 failed", "3 refused", "4 unavailable"):
        assert words in text


# -- notices once per process ----------------------------------------------------------------------------


@pytest.mark.integration
def test_the_plain_http_notice_is_printed_once_per_process(
    tmp_path: Path, no_credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent polling a loopback registry three times says "plain http" once; outside an agent
    command the registry client says it every time, as before."""
    from kiln.cmd_agent import notices_once
    from manifests.agentconfig import load_agent_config

    require_tool("docker-registry", "docker-registry")
    with RegistryProcess(root=tmp_path / "registry") as reg:
        config = load_agent_config(write_config(tmp_path, f"{reg.host}/team/releases", insecure="true"))
        a = Agent(config, runtime=FakeRuntime(), connector=loopback_connector, wall=Clock(NOW))
        a.start(monitor=False)
        try:
            with caplog.at_level(logging.WARNING, logger="kiln.publisher"):
                with notices_once():
                    for _ in range(3):
                        assert a.reconcile_once().outcome == "unavailable"
                        assert a.source_state.last_error_reason == "not-found"
                inside = [r for r in caplog.records if "plain http" in r.getMessage()]
                caplog.clear()
                assert a.reconcile_once().outcome == "unavailable"
                outside = [r for r in caplog.records if "plain http" in r.getMessage()]
        finally:
            a.close(stop_instances=True)
    assert len(inside) == 1
    assert len(outside) == 1
