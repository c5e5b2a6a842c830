"""``keep_previous`` per service: valid spellings round-trip, bad ones are positioned errors."""

from __future__ import annotations

import json

import pytest

from manifests.errors import ManifestError
from manifests.release import Release
from tests.manifests.test_release import one, parse

VALID = [
    ("five minutes", "    keep_previous: 5m\n", 300.0, "300s"),  # durations are spelled in seconds
    ("ninety seconds", "    keep_previous: 1m30s\n", 90.0, "90s"),
    ("a day at most", "    keep_previous: 24h\n", 86400.0, "86400s"),
    ("milliseconds", "    keep_previous: 1500ms\n", 1.5, "1.5s"),
]


@pytest.mark.parametrize(("extra", "seconds", "spelled"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid(extra: str, seconds: float, spelled: str) -> None:
    r = parse(one(extra))
    assert r.services[0].keep_previous == seconds
    assert json.loads(r.to_bytes())["services"][0]["keep_previous"] == spelled
    assert Release.from_payload(r.to_bytes()) == r


def test_absent_means_none_and_is_not_written() -> None:
    r = parse(one())
    assert r.services[0].keep_previous is None
    assert "keep_previous" not in json.loads(r.to_bytes())["services"][0]


INVALID = [
    (
        "not a duration",
        "    keep_previous: soon\n",
        "r.yaml:9:5: services[0].keep_previous: invalid duration 'soon' (use NUMBER UNIT pairs",
    ),
    ("zero", "    keep_previous: 0s\n", "r.yaml:9:5: services[0].keep_previous: must be greater than 0"),
    (
        "past a day",
        "    keep_previous: 25h\n",
        "r.yaml:9:5: services[0].keep_previous: 90000s is longer than 24h (e.g. keep_previous: 5m)",
    ),
    ("a typo", "    keep_previus: 5m\n", "r.yaml:9:5: services[0].keep_previus: unknown key (did you mean"),
]


@pytest.mark.parametrize(("extra", "start"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid(extra: str, start: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(one(extra))
    assert str(info.value).startswith(start), str(info.value)
