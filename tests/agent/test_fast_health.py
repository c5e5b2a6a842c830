"""Fast health: a new instance is probed at once, then after a short wait doubling up to the
check's interval (a fake clock counts the waits); without a backoff nothing changed."""

from __future__ import annotations

import itertools

import pytest

from agent.health import FAST_CAP, FAST_WINDOW, HealthSpec, wait_healthy
from agent.rollout import Deployer
from tests.agent.test_health import FakeClock, ScriptedProbe, _no_connect

SPEC = HealthSpec.http(8080, "/healthz", interval=1.0, timeout=0.5, retries=1)


def test_the_first_probe_is_at_once_and_the_waits_double_up_to_the_interval() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "f" * 120 + "p", cost=0.0)
    result = wait_healthy(
        SPEC, _no_connect, grace=5.0, deadline=30.0, clock=clock, sleep=clock.sleep, probe=probe, backoff=0.01
    )
    assert result.ok
    assert probe.calls[0][0] == 0.0  # no grace wait before the first probe
    assert clock.sleeps[:5] == pytest.approx([0.01, 0.02, FAST_CAP, FAST_CAP, FAST_CAP])
    fast = [t for t, _ in probe.calls if t < FAST_WINDOW]
    assert all(b - a <= FAST_CAP + 1e-9 for a, b in itertools.pairwise(fast))  # close in the first seconds
    later = [x for x in clock.sleeps if x > FAST_CAP]
    assert later[:5] == pytest.approx([FAST_CAP * 2**k for k in range(1, 6)])  # then doubling
    assert later[-1] == pytest.approx(SPEC.interval)  # up to the interval
    assert max(clock.sleeps) <= SPEC.interval


def test_an_instance_up_within_50ms_is_seen_within_50ms() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(clock, "fffp", cost=0.0)
    result = wait_healthy(
        SPEC, _no_connect, deadline=30.0, clock=clock, sleep=clock.sleep, probe=probe, backoff=0.01
    )
    assert result.ok
    assert probe.calls[-1][0] == pytest.approx(0.05)
    slow = FakeClock()
    before = ScriptedProbe(slow, "fffp", cost=0.0)
    assert wait_healthy(SPEC, _no_connect, deadline=30.0, clock=slow, sleep=slow.sleep, probe=before).ok
    assert before.calls[-1][0] == pytest.approx(3.0)  # without a backoff: a whole interval each


def test_the_number_of_probes_stays_bounded_with_a_backoff() -> None:
    clock = FakeClock(advances=False)  # a clock that stands still
    probe = ScriptedProbe(clock, "f", cost=0.0)
    result = wait_healthy(
        SPEC, _no_connect, deadline=3.0, clock=clock, sleep=clock.sleep, probe=probe, backoff=0.01
    )
    assert not result.ok
    assert len(probe.calls) <= 3 + 1 + FAST_WINDOW / 0.01 + 7 + 2


def test_a_negative_backoff_is_refused_and_deployers_use_a_short_one() -> None:
    with pytest.raises(ValueError, match="backoff"):
        wait_healthy(SPEC, _no_connect, backoff=-1.0)
    assert 0 < Deployer.health_backoff <= 0.05
