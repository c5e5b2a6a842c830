"""The chaos monkey's choices: its rate, its budget, and min_healthy, with a fake clock."""

from __future__ import annotations

import random

import pytest

from agent.chaos import Candidate, ChaosMonkey
from manifests.chaos import Chaos, format_rate, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serving(**services: list[bool]) -> dict[str, list[Candidate]]:
    return {
        name: [Candidate(service=name, instance=f"{name}-{i}", healthy=h) for i, h in enumerate(health)]
        for name, health in services.items()
    }


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("1/h", 1 / 3600), ("6/d", 6 / 86400), ("10/m", 10 / 60), ("2/s", 2.0), ("0.5/h", 0.5 / 3600)],
)
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "1", "1/w", "0/h", "11/s", "-1/h", "1 per hour", "1/h/h", "1e3/h"])
def test_bad_rates(text: str) -> None:
    assert parse_rate(text) is None


def test_format_rate_round_trips() -> None:
    for text in ("1/h", "6/d", "10/m", "2/s"):
        rate = parse_rate(text)
        assert rate is not None
        assert format_rate(rate) == text


def test_the_long_run_rate_matches_and_min_healthy_holds() -> None:
    clock = Clock()
    monkey = ChaosMonkey(Chaos(kill_rate=60 / 3600), clock=clock, rng=random.Random(7))  # one a minute
    kills = []
    for _ in range(10 * 3600):  # ten hours, a tick a second
        clock.now += 1
        victim = monkey.tick(serving(web=[True, True], db=[True]))
        if victim is not None:
            kills.append(victim)
    assert 480 <= len(kills) <= 720, "about 600 kills in ten hours at 1/m"
    assert {k.service for k in kills} == {"web"}, "db has one instance: killing it breaks min_healthy 1"
    assert monkey.kills == len(kills)


def test_no_burst_after_a_long_pause_and_nothing_unhealthy_is_killed() -> None:
    clock = Clock()
    monkey = ChaosMonkey(Chaos(kill_rate=1.0), clock=clock, rng=random.Random(1))
    clock.now += 3600  # an hour without ticks: 3600 kills were "due"
    first = monkey.tick(serving(web=[True, True, False]))
    assert first is not None
    assert first.healthy
    assert monkey.tick(serving(web=[True, True, False])) is None, "one victim per due time, no backlog"
    assert monkey.tick(serving(web=[True, False])) is None


def test_min_healthy_zero_allows_the_last_instance_and_until_ends_it() -> None:
    clock = Clock()
    monkey = ChaosMonkey(Chaos(kill_rate=1.0, min_healthy=0), clock=clock, rng=random.Random(3), until=100)
    hits = 0
    while clock.now < 100:
        clock.now += 1
        hits += monkey.tick(serving(db=[True])) is not None
    assert hits > 50
    clock.now = 150
    assert not monkey.active
    assert monkey.tick(serving(db=[True])) is None
