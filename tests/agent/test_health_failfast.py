"""When waiting for a new instance gives up early: it answered 4xx `retries` times in a row (a
wrong path will not fix itself), or it stopped running. No answer yet, or 5xx while warming up,
still gets the whole deadline."""

from __future__ import annotations

import socket

from agent.health import HealthSpec, check_once, wait_healthy
from tests.agent.test_health import FakeClock

SPEC = HealthSpec.http(8080, "/healthz", interval=1.0, timeout=0.5, retries=3)


def _answering(*answers: bytes):  # type: ignore[no-untyped-def]
    queue = list(answers)

    def connect(timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        theirs.sendall(queue.pop(0) if len(queue) > 1 else queue[0])
        theirs.close()
        return ours

    return connect


def test_the_status_is_recorded() -> None:
    result = check_once(SPEC, _answering(b"HTTP/1.1 404 Not Found\r\n\r\n"))
    assert (result.ok, result.status, result.detail) == (False, 404, "HTTP 404 Not Found")
    garbage = check_once(SPEC, _answering(b"HTTP/1.1 404 Not Found\r\nbad header\r\n\r\n"))
    assert garbage.status is None


def test_repeated_4xx_gives_up_after_retries_not_the_deadline() -> None:
    clock = FakeClock()
    result = wait_healthy(
        SPEC,
        _answering(b"HTTP/1.1 404 Not Found\r\n\r\n"),
        grace=2.0,
        deadline=60.0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.ok
    assert result.detail == "answered HTTP 404 Not Found 3 times in a row"
    assert clock.now - 1000.0 == 2.0 + 2 * 1.0  # grace, then three probes one interval apart


def test_503_while_warming_up_gets_the_whole_deadline_and_may_pass() -> None:
    clock = FakeClock()
    warming = [b"HTTP/1.1 503 Warming\r\n\r\n"] * 8 + [b"HTTP/1.1 200 OK\r\n\r\n"]
    result = wait_healthy(
        SPEC, _answering(*warming), grace=0.0, deadline=60.0, clock=clock, sleep=clock.sleep
    )
    assert result.ok


def test_5xx_forever_fails_only_at_the_deadline() -> None:
    clock = FakeClock()
    result = wait_healthy(
        SPEC,
        _answering(b"HTTP/1.1 500 Oops\r\n\r\n"),
        grace=0.0,
        deadline=10.0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.ok
    assert result.detail.startswith("not healthy within 10s")


def test_4xx_interrupted_by_a_pass_starts_counting_again() -> None:
    clock = FakeClock()
    flaky = [b"HTTP/1.1 404 X\r\n\r\n"] * 2 + [b"HTTP/1.1 200 OK\r\n\r\n"] + [b"HTTP/1.1 404 X\r\n\r\n"] * 2
    flaky += [b"HTTP/1.1 200 OK\r\n\r\n"] * 3
    result = wait_healthy(SPEC, _answering(*flaky), grace=0.0, deadline=60.0, clock=clock, sleep=clock.sleep)
    assert result.ok


def test_an_instance_that_stopped_running_fails_at_once() -> None:
    clock = FakeClock()
    states = iter([True, True, False])
    result = wait_healthy(
        SPEC,
        _answering(b"HTTP/1.1 503 Starting\r\n\r\n"),
        grace=0.0,
        deadline=60.0,
        clock=clock,
        sleep=clock.sleep,
        alive=lambda: next(states),
    )
    assert not result.ok
    assert result.detail == "the instance stopped running after 2 checks"
