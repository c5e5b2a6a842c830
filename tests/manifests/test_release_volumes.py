"""``volume_per_instance`` in a release: parsed, positioned errors, canonical payload round trip."""

from __future__ import annotations

import pytest

from manifests.errors import ManifestError
from manifests.release import Release
from tests.manifests.test_release import one, parse


def test_volume_per_instance_defaults_to_false_and_is_omitted_from_the_payload() -> None:
    release = parse(one())
    assert release.services[0].volume_per_instance is False
    assert b"volume_per_instance" not in release.to_bytes()


def test_volume_per_instance_true_round_trips_through_the_signed_payload() -> None:
    release = parse(one("    replicas: 2\n    volume_per_instance: true\n"))
    assert release.services[0].volume_per_instance is True
    payload = release.to_bytes()
    assert b'"volume_per_instance":true' in payload
    again = Release.from_payload(payload)
    assert again == release
    assert again.to_bytes() == payload


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "    volume_per_instance: yes please\n",
            "r.yaml:9:5: services[0].volume_per_instance: expected a boolean (true or false), got string",
        ),
        (
            "    volume_per_instanse: true\n",
            "r.yaml:9:5: services[0].volume_per_instanse: unknown key (did you mean 'volume_per_instance'?)",
        ),
    ],
)
def test_volume_per_instance_errors_are_positioned(extra: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(one(extra))
    assert str(info.value) == message
