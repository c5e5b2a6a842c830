"""The chaos monkey on a real agent (runc): at a high rate for a bounded time, the service keeps
answering a client that polls every 20 ms, every killed instance is replaced, and a service never
has fewer than ``min_healthy`` healthy instances in rotation."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import read_events
from kiln.cli import main
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release
from tests.agent.agentkit import free_port, make_release, make_root, service_yaml, sign_and_attest, signed
from tests.agent.conftest import WebImage
from tests.agent.crashkit import AgentProcess, agent_config_yaml, ask, echo_image
from tests.agent.test_chaos_runc import Poller
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"
REPLICAS = 3
MIN_HEALTHY = 2
CHAOS_SECONDS = 25


@pytest.fixture
def agent_world(python_web: WebImage, tmp_path: Path) -> Iterator[tuple[AgentProcess, Path, int, str]]:
    require_root("runc and network namespaces need root")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    layout = tmp_path / "images"
    image = echo_image(python_web, layout, flavour="chaos")
    sign_and_attest(layout, image, identity=REPO)
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
            poll_interval="300ms",
        )
    )
    port = free_port()
    service = f"chaos-{secrets.token_hex(3)}"
    svc = service_yaml(
        service,
        f"{REPO}@{image.digest}",
        replicas=REPLICAS,
        listen=f"127.0.0.1:{port}",
        grace="300ms",
        interval="200ms",
        retries=2,
        env={"VERSION": "v1"},
    )
    publish_release(LayoutRepository(tmp_path / "releases", create=True), signed(make_release(1, [svc])))
    agent = AgentProcess(config, state, tmp_path / "agent.log")
    try:
        yield agent, config, port, service
    finally:
        if agent.proc.poll() is None:
            agent.terminate()
        main(["agent", "down", "--config", str(config)])
        shutil.rmtree(state / "roots", ignore_errors=True)


def serving_healthy(agent: AgentProcess) -> tuple[int, set[str]] | None:
    doc = agent.status()
    if doc is None:
        return None
    instances = doc.get("instances", [])
    healthy = [i for i in instances if i.get("health") == "healthy" and i.get("in_rotation", True)]
    return len(healthy), {i["id"] for i in instances}


def test_chaos_kills_are_replaced_and_the_service_keeps_answering(
    agent_world: tuple[AgentProcess, Path, int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    agent, config, port, _service = agent_world
    agent.wait_up(60)
    deadline = time.monotonic() + 120

    def rolled_out() -> bool:
        # healthy instances are not enough: the address opens when the rollout switches to them
        doc = agent.status()
        if doc is None or doc.get("rollout") is not None or (doc.get("release") or {}).get("version") != 1:
            return False
        try:
            ask(port)
        except (OSError, AssertionError, ValueError):
            return False
        got = serving_healthy(agent)
        return got is not None and got[0] >= REPLICAS

    while not rolled_out():
        assert time.monotonic() < deadline, f"v1 never served: {agent.status()}"
        time.sleep(0.2)
    lowest: list[int] = []
    seen_ids: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            got = serving_healthy(agent)
            if got is not None:
                lowest.append(got[0])
                seen_ids.update(got[1])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    with Poller(port) as poller:
        watcher.start()
        code = main(
            [
                "agent", "chaos", "--config", str(config), "--kill-rate", "20/m",
                "--min-healthy", str(MIN_HEALTHY), "--for", f"{CHAOS_SECONDS}s", "--json",
            ]
        )  # fmt: skip
        assert code == 0
        assert json.loads(capsys.readouterr().out)["chaos"]["active"]
        time.sleep(CHAOS_SECONDS + 1)
        # chaos ended by itself; the last replacements finish
        deadline = time.monotonic() + 90
        while (got := serving_healthy(agent)) is None or got[0] < REPLICAS:
            assert time.monotonic() < deadline, f"the killed instances were not all replaced: {got}"
            time.sleep(0.2)
        stop.set()
        watcher.join(10)
    kills = [e for e in read_events(agent.state, limit=100_000) if e.get("event") == "chaos_killed"]
    assert len(kills) >= 3, f"20/m for {CHAOS_SECONDS}s should kill several instances, got {len(kills)}"
    final = serving_healthy(agent)
    assert final is not None
    assert final[0] == REPLICAS
    assert not {k["instance"] for k in kills} & final[1], "every killed instance was replaced"
    assert min(lowest) >= MIN_HEALTHY, f"min_healthy {MIN_HEALTHY} was broken: {min(lowest)} healthy"
    offset = time.time() - time.monotonic()
    assert poller.failures == [], (
        f"{len(poller.failures)} requests failed: {[(t + offset, e) for t, e in poller.failures[:3]]}"
    )
    assert len(poller.answers) > CHAOS_SECONDS * 10
    status = agent.status()
    assert status is not None
    assert not status["chaos"]["active"], "chaos stops by itself after --for"
