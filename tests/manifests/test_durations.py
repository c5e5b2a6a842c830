"""Durations people write: 500ms, 2s, 1m30s, 1h."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5s", 1.5),
        ("0.1s", 0.1),
        ("0s", 0.0),
        ("2s500ms", 2.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("2", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("2 s", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("-1s", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1d", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1us", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        (".5s", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1.s", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1S", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1s ", "expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h"),
        ("1" * 65 + "s", "longer than 64 characters"),
    ],
)
def test_parse_duration_refuses(text: str, reason: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (2.0, "2s"), (90.0, "90s"), (1.5, "1.5s"), (0.0, "0s"), (0.001, "1ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative duration"):
        format_duration(-1.0)


@settings(max_examples=200)
@given(millis=st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == seconds
