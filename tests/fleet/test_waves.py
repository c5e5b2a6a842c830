"""Waves, as a pure function of hosts, progress, halts and time."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from fleet.waves import Decision, HostProgress, Progress, WaveState, assign_waves, decide, evaluate
from manifests.fleet import Rollout, Wave

HOSTS = {"c1": "canary", "c2": "canary", "c3": "canary", "w1": "web", "w2": "web", "d1": "db"}
ROLLOUT = Rollout(
    waves=(
        Wave(group="canary", hosts=1),
        Wave(group="canary", soak=600),
        Wave(group="*", max_parallel_percent=25),
    )
)


def done(group: str, at: float) -> HostProgress:
    return HostProgress(state=Progress.DONE, at=at, group=group)


def test_assignment_is_by_group_and_sorted_id() -> None:
    assert assign_waves(ROLLOUT, HOSTS) == (("c1",), ("c2", "c3"), ("d1", "w1", "w2"))
    assert assign_waves(Rollout(), HOSTS) == (tuple(sorted(HOSTS)),), "no waves: everyone in one"


def states(progress: dict[str, HostProgress], now: float, halted: bool = False) -> list[WaveState]:
    return [s.state for s in evaluate(ROLLOUT, HOSTS, progress, halted=halted, now=now)]


def test_a_wave_opens_when_the_previous_one_has_soaked() -> None:
    assert states({}, 0) == [WaveState.OPEN, WaveState.PENDING, WaveState.PENDING]
    one = {"c1": done("canary", 100)}
    assert states(one, 100) == [WaveState.DONE, WaveState.OPEN, WaveState.PENDING]
    two = one | {"c2": done("canary", 200), "c3": done("canary", 300)}
    assert states(two, 300 + 599) == [WaveState.DONE, WaveState.SOAKING, WaveState.PENDING]
    assert states(two, 300 + 600) == [WaveState.DONE, WaveState.DONE, WaveState.OPEN]
    assert states(two, 900, halted=True) == [WaveState.HALTED] * 3


def test_an_updating_host_keeps_its_wave_open() -> None:
    progress = {"c1": HostProgress(state=Progress.UPDATING, at=5, group="canary")}
    assert states(progress, 10)[:2] == [WaveState.OPEN, WaveState.PENDING]


def test_a_host_that_left_keeps_its_place() -> None:
    live = {k: v for k, v in HOSTS.items() if k != "c1"}
    statuses = evaluate(ROLLOUT, live, {"c1": done("canary", 1)}, halted=False, now=2)
    assert statuses[0].hosts == ("c1",)
    assert statuses[0].state is WaveState.DONE
    assert statuses[1].hosts == ("c2", "c3")


class Case(NamedTuple):
    host: str
    progress: dict[str, HostProgress]
    now: float
    halted: bool
    allowed: bool
    reason: str


ROLLED_BACK = HostProgress(state=Progress.ROLLED_BACK, at=0, group="canary")


@pytest.mark.parametrize(
    "case",
    [
        Case("c1", {}, 0, False, True, "wave 1 is open"),
        Case("c2", {}, 0, False, False, "wave 2 is pending"),
        Case("w1", {"c1": done("canary", 0)}, 1, False, False, "wave 3 is pending"),
        Case("c2", {"c1": done("canary", 0)}, 1, False, True, "wave 2 is open"),
        Case("c1", {}, 0, True, False, "halted"),
        Case("zz", {}, 0, False, False, "in no wave"),
        Case("c1", {"c1": ROLLED_BACK}, 0, False, False, "rolled the release back"),
    ],
)
def test_decide(case: Case) -> None:
    hosts = HOSTS | ({"zz": "other"} if case.host == "zz" else {})
    rollout = ROLLOUT if case.host != "zz" else Rollout(waves=(Wave(group="canary"),))
    statuses = evaluate(rollout, hosts, case.progress, halted=case.halted, now=case.now)
    got: Decision = decide(case.host, statuses, case.progress)
    assert got.allowed is case.allowed
    assert case.reason in got.reason


def test_max_parallel_share_of_the_wave() -> None:
    statuses = evaluate(ROLLOUT, HOSTS, {}, halted=False, now=0)
    assert statuses[2].parallel == 1, "25% of 3 hosts rounds down, but never below one"
    assert Wave(group="*", max_parallel_percent=50).parallel_for(10) == 5
    assert Wave(group="*", max_parallel=3).parallel_for(10) == 3
    assert Wave(group="*").parallel_for(10) is None
