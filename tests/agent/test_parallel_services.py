"""The services of one release roll out in parallel, each independently: a service whose rollout
fails does not stop another's, the release then returns every service to the previous one, and
the journal (known ids, serving sets) loses nothing to the concurrent commits."""

from __future__ import annotations

import errno
import threading

import pytest

from agent.errors import InstanceError
from agent.events import read_events
from agent.journal import Journal
from agent.runtime import InstanceHandle, InstanceSpec
from tests.agent.agentkit import FakeRuntime, free_port, http_get, make_release, service_yaml, signed
from tests.agent.test_reconcile import Env, env

__all__ = ["env"]


class MeetingRuntime(FakeRuntime):
    """Each start waits until an instance of every other service is starting too: started one
    service after the other, the first start never meets the second and fails."""

    def __init__(self, services: int) -> None:
        super().__init__()
        self.meet: threading.Barrier | None = threading.Barrier(services, timeout=10.0)

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        if self.meet is not None:
            try:
                self.meet.wait()
            except threading.BrokenBarrierError:
                raise InstanceError(
                    f"{spec.service} started alone: the services rolled out one by one"
                ) from None
        return super().start(spec)


@pytest.fixture
def two(env: Env) -> tuple[Env, int]:
    return env, free_port()


def _release(e: Env, other: int, version: int, *, b_env: dict[str, str] | None = None) -> bytes:
    a = service_yaml("web-a", e.web.pin, listen=f"127.0.0.1:{e.port}", replicas=2, env={"V": str(version)})
    b = service_yaml(
        "web-b", e.web.pin, listen=f"127.0.0.1:{other}", replicas=2, env={"V": str(version), **(b_env or {})}
    )
    return signed(make_release(version, [a, b]))


def _serving(e: Env, name: str) -> list[tuple[str, int]]:
    agent = e.agents[-1]
    return sorted((r.id, r.release) for r in agent.journal.state.serving(name))


def test_the_services_of_a_release_start_together(two: tuple[Env, int]) -> None:
    e, other = two
    e.runtime = MeetingRuntime(2)
    e.ws.publish(_release(e, other, 1))
    agent = e.agent()
    assert agent.reconcile_once().outcome == "rolled-out"
    assert e.runtime.meet is not None
    assert not e.runtime.meet.broken
    # every instance's id is known (no commit of one service lost another's) and serves
    st = Journal(agent.state_dir).state
    assert len(st.instances) == 4
    assert set(st.known) == {r.id for r in st.instances}
    assert {r.service for r in st.instances} == {"web-a", "web-b"}
    assert http_get("127.0.0.1", e.port)[0] == 200
    assert http_get("127.0.0.1", other)[0] == 200


def test_one_service_failing_does_not_stop_the_other_and_the_release_returns(two: tuple[Env, int]) -> None:
    e, other = two
    e.ws.publish(_release(e, other, 1))
    agent = e.agent(deadline=1.0)
    assert agent.reconcile_once().outcome == "rolled-out"
    before = {name: _serving(e, name) for name in ("web-a", "web-b")}
    e.ws.publish(_release(e, other, 2, b_env={"HEALTH": "fail"}))
    result = agent.reconcile_once()
    assert result.outcome == "failed"
    assert result.detail.startswith("instance kiln-web-b-")  # web-b's own reason
    assert "of release v2" in result.detail
    events = read_events(agent.state_dir)
    started = [ev for ev in events if ev["event"] == "started" and ev.get("release") == 2]
    # web-a's rollout ran to its end (both new instances started and switched to) although web-b's
    # failed; then the failed release sent both services back to release 1
    assert sum(1 for ev in started if ev["service"] == "web-a") == 2
    assert any(ev["event"] == "rolled_back" and ev.get("to") == 1 for ev in events)
    st = Journal(agent.state_dir).state
    # web-b's own undo put its old instances back; web-a's were replaced by its finished
    # rollout, so the return to release 1 started web-a's release-1 spec again
    assert _serving(e, "web-b") == before["web-b"]
    assert [release for _, release in _serving(e, "web-a")] == [1, 1]
    assert all(dict(e.runtime.specs[iid].env)["V"] == "1" for iid, _ in _serving(e, "web-a"))
    assert set(st.known) == {r.id for r in st.instances}
    assert set(e.runtime.running()) == {r.id for r in st.instances}
    assert st.failure(2) is not None


class OneStartFailsRuntime(FakeRuntime):
    """Of web-b's release-2 instances (started together), one start raises a raw OSError, as
    ``memfd_create`` does on ENOMEM/EMFILE; the other starts."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0
        self.count_lock = threading.Lock()

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        if spec.service == "web-b" and dict(spec.env).get("V") == "2":
            with self.count_lock:
                self.tries += 1
                first = self.tries == 1
            if first:
                raise OSError(errno.ENOMEM, "Cannot allocate memory", "memfd_create")
        return super().start(spec)


def test_a_raw_oserror_in_one_parallel_start_stops_the_other_and_the_release_returns(
    two: tuple[Env, int],
) -> None:
    e, other = two
    e.runtime = OneStartFailsRuntime()
    e.ws.publish(_release(e, other, 1))
    agent = e.agent(deadline=1.0)
    assert agent.reconcile_once().outcome == "rolled-out"
    before = {name: _serving(e, name) for name in ("web-a", "web-b")}
    e.ws.publish(_release(e, other, 2))
    result = agent.reconcile_once()
    assert result.outcome == "failed"
    assert "did not start" in result.detail
    assert "Cannot allocate memory" in result.detail
    assert e.runtime.tries == 2  # both started in parallel; one of them raised
    st = Journal(agent.state_dir).state
    # the sibling that did start was stopped again; the release went back to release 1
    assert _serving(e, "web-b") == before["web-b"]
    assert [release for _, release in _serving(e, "web-a")] == [1, 1]
    assert set(st.known) == {r.id for r in st.instances}
    assert set(e.runtime.running()) == {r.id for r in st.instances}
    assert all(dict(e.runtime.specs[iid].env)["V"] == "1" for iid in e.runtime.running())
    assert st.failure(2) is not None
