"""The agent's limits: defaults, the agent config's ``limits:`` section, positioned errors."""

from __future__ import annotations

import pytest

from manifests.agentconfig import parse_agent_config
from manifests.errors import ManifestError
from manifests.limits import AgentLimits

HEAD = b"""apiVersion: kiln.dev/v1
kind: AgentConfig
source: oci:/srv/releases
channel: stable
trust_root: /etc/kiln/root.yaml
state: /var/lib/kiln
"""


def test_defaults_and_overrides_round_trip() -> None:
    assert parse_agent_config(HEAD, source="a.yaml").limits == AgentLimits()
    cfg = parse_agent_config(
        HEAD
        + b"limits:\n  request_deadline: 5m\n  unpack_bytes: 2Gi\n  json_depth: 32\n  blob_bytes: 1048576\n",
        source="a.yaml",
    )
    assert cfg.limits == AgentLimits(
        request_deadline=300.0, unpack_bytes=2 << 30, json_depth=32, blob_bytes=1 << 20
    )
    assert cfg.to_dict()["limits"] == {
        "request_deadline": "300s",
        "unpack_bytes": "2Gi",
        "json_depth": 32,
        "blob_bytes": "1Mi",
    }


BAD = [
    ("limits:\n  bogus: 1\n", "a.yaml:8:3: limits.bogus: unknown key"),
    ("limits:\n  json_depth: 5\n", "a.yaml:8:3: limits.json_depth: out of range (8 to 1000)"),
    ("limits:\n  unpack_time: 1\n", "a.yaml:8:3: limits.unpack_time: expected a duration such as 2s"),
    ("limits:\n  read_timeout: 99h\n", "a.yaml:8:3: limits.read_timeout: out of range (1ms to 3600s)"),
    ("limits:\n  free_space_margin: [1]\n", "a.yaml:8:3: limits.free_space_margin: expected a size"),
    ("limits:\n  blob_bytes: 3Xi\n", "a.yaml:8:3: limits.blob_bytes: invalid size '3Xi'"),
    ("limits:\n  document_bytes: 1Gi\n", "a.yaml:8:3: limits.document_bytes: out of range (4Ki to 4Mi)"),
    ("limits: 3\n", "a.yaml:7:1: limits: expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_limits_are_positioned_errors(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_agent_config(HEAD + text.encode(), source="a.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_the_limits_object_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="request_deadline"):
        AgentLimits(request_deadline=0)
