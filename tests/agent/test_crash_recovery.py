"""What a SIGKILL can leave behind that recovery must still clean up (fake runtime, no root needed).

The crash test on real runc (``test_crash_runc.py``) kills the agent at random points; these are
the corners it can reach only by luck, made deterministic:

- the runtime fails to stop a stray instance while the agent recovers: the id must stay in the
  journal's ``known`` (it leaves only once the runtime confirmed the stop) and a later reconcile
  must stop it;
- an orphaned ``runc run`` of the killed agent finishes *after* the new agent recovered, so an
  instance appears that neither the runtime listing at start nor the journal had: the next
  reconcile stops it, instead of leaving it running until the next restart;
- an unpack interrupted by the kill leaves ``ROOTS/<hex>.tmp``; if that release is never tried
  again nothing would remove it: the restart does.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.errors import RuntimeFailure
from agent.events import read_events
from agent.reconcile import Agent
from agent.runtime import InstanceSpec, new_instance_id
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


class StubbornRuntime(FakeRuntime):
    """A fake runtime whose ``stop`` fails for the ids in :attr:`refuse_stop`: the runtime's own
    error, or (``raw``) the OSError a bundle or namespace that would not go raises."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_stop: set[str] = set()
        self.raw = False

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        if instance_id in self.refuse_stop:
            if self.raw:
                raise OSError(errno.EBUSY, "Device or resource busy", f"/run/kiln/{instance_id}")
            raise RuntimeFailure(f"runc delete {instance_id} failed: container is busy (test)")
        super().stop(instance_id, grace)


@dataclass
class Host:
    ws: Workspace
    web: Published
    runtime: StubbornRuntime
    port: int
    agents: list[Agent]

    def agent(self) -> Agent:
        agent = Agent(
            self.ws.config(),
            runtime=self.runtime,
            connector=loopback_connector,
            wall=lambda: NOW,
            health_deadline=5.0,
            drain_timeout=1.0,
            stop_grace=0.1,
        )
        self.agents.append(agent)
        agent.start()
        return agent

    def crash(self, agent: Agent) -> None:
        """The process dies: its forwarders and its lock go, the instances stay."""
        agent.deployer.close()
        agent.close()
        self.agents.remove(agent)

    def serving(self) -> Agent:
        svc = service_yaml("web", self.web.pin, replicas=2, listen=f"127.0.0.1:{self.port}")
        self.ws.publish(signed(make_release(1, [svc])))
        agent = self.agent()
        assert agent.reconcile_once().outcome == "rolled-out"
        return agent


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    h = Host(ws=ws, web=web, runtime=StubbornRuntime(), port=free_port(), agents=[])
    yield h
    h.runtime.refuse_stop.clear()
    for agent in reversed(h.agents):
        agent.close(stop_instances=True)
    h.runtime.close_all()


def _ids(agent: Agent) -> list[str]:
    return sorted(r.id for r in agent.journal.state.instances)


@pytest.mark.parametrize("raw", [False, True], ids=["runtime-error", "oserror"])
def test_a_stray_whose_stop_fails_during_recovery_stays_known_and_is_stopped_later(
    host: Host, raw: bool
) -> None:
    host.runtime.raw = raw
    agent = host.serving()
    serving = _ids(agent)
    release = agent.load_release(agent.journal.state.good)  # type: ignore[arg-type]
    prep = agent.preparer.existing(release, "web")
    stray = agent.deployer.start_instance(prep)  # journaled as known, started, then the kill
    host.crash(agent)
    host.runtime.refuse_stop.add(stray.id)

    again = host.agent()
    assert stray.id in host.runtime.running()
    assert stray.id in again.journal.state.known  # not forgotten while it still runs
    assert _ids(again) == serving
    assert http_get("127.0.0.1", host.port)[0] == 200

    host.runtime.refuse_stop.clear()
    assert again.reconcile_once().outcome == "current"
    assert host.runtime.list() == tuple(serving)
    assert sorted(again.journal.state.known) == serving
    events = [e for e in read_events(host.ws.state) if e.get("instance") == stray.id]
    assert [e["event"] for e in events][-1] == "stray"


def test_an_instance_that_appears_after_recovery_is_stopped_by_the_next_reconcile(host: Host) -> None:
    agent = host.serving()
    serving = _ids(agent)
    host.crash(agent)
    again = host.agent()
    # The killed agent's `runc run` finishes now: an instance nobody journaled.
    late = new_instance_id("web")
    host.runtime.start(
        InstanceSpec(instance_id=late, service="web", image_digest=host.web.digest, image_config={})
    )
    assert late in host.runtime.running()
    assert again.reconcile_once().outcome == "current"
    assert host.runtime.list() == tuple(serving)
    assert late not in again.journal.state.known
    assert http_get("127.0.0.1", host.port)[0] == 200


def test_an_unpack_interrupted_by_a_kill_is_removed_on_restart(host: Host) -> None:
    agent = host.serving()
    roots = agent.roots_dir
    kept = sorted(p.name for p in roots.iterdir())
    partial = roots / f"{'ab' * 32}.tmp"
    (partial / "usr" / "lib").mkdir(parents=True)
    (partial / "usr" / "lib" / "half-written").write_bytes(b"x" * 100)
    (partial / "usr").chmod(0o555)  # unpacked trees can hold read-only directories
    host.crash(agent)
    again = host.agent()
    assert sorted(p.name for p in roots.iterdir()) == kept
    assert _ids(again) != []


def test_kiln_agent_down_carries_on_past_an_instance_whose_stop_raises_an_oserror(host: Host) -> None:
    from agent.down import down
    from agent.journal import Journal

    agent = host.serving()
    first, second = _ids(agent)
    host.crash(agent)
    host.runtime.raw = True
    host.runtime.refuse_stop.add(first)

    report = down(host.ws.config(), runtime=host.runtime, stop_grace=0.1)
    assert report.failed == (first,)
    assert second in report.stopped
    assert host.runtime.running() == (first,)
    assert first in Journal(host.ws.state).state.known  # still known: the next down retries it
    errors = [e for e in read_events(host.ws.state) if e.get("event") == "error"]
    assert "Device or resource busy" in errors[-1]["detail"]

    host.runtime.refuse_stop.clear()
    again = down(host.ws.config(), runtime=host.runtime, stop_grace=0.1)
    assert again.stopped == (first,)
    assert host.runtime.running() == ()


def test_an_agent_closed_with_its_instances_keeps_one_it_could_not_stop_known(host: Host) -> None:
    from agent.journal import Journal

    agent = host.serving()
    first, second = _ids(agent)
    host.runtime.raw = True
    host.runtime.refuse_stop.add(first)
    host.agents.remove(agent)
    agent.close(stop_instances=True)

    assert host.runtime.running() == (first,)
    assert Journal(host.ws.state).state.known == (first,)  # the next start or down retries it
    events = read_events(host.ws.state)
    stopped = {e.get("instance") for e in events if e.get("event") == "stopped"}
    assert second in stopped
    assert first not in stopped  # no "stopped" for an instance that still runs
    assert any(e.get("event") == "error" and first in e.get("what", "") for e in events)
