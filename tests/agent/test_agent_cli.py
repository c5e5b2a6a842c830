"""``kiln release publish`` and ``kiln agent ...`` through kiln.cli.main, and the agent config document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from manifests.agentconfig import RuntimeKind, load_agent_config, parse_agent_config
from manifests.errors import ManifestError
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import fetch_release
from tests.agent.agentkit import (
    MALLORY,
    ROOT_A,
    make_release,
    make_root,
    root_envelope,
    service_yaml,
    sign_payload,
    signed,
)

PIN = "localhost/web@sha256:" + "ab" * 32

GOOD = b"""\
apiVersion: kiln.dev/v1
kind: AgentConfig
source: oci:releases
channel: stable
trust_root: root.yaml
state: state
poll_interval: 2s
images:
  - {repository: localhost/web, location: "oci:images/web"}
"""

INVALID = [
    (
        GOOD.replace(b"channel: stable", b"chanel: stable"),
        [
            "agent.yaml:1:1: channel: missing required key",
            "agent.yaml:4:1: chanel: unknown key (did you mean 'channel'?)",
        ],
    ),
    (
        GOOD + b"runtime: rkt\n",
        ["agent.yaml:10:1: runtime: unknown value 'rkt' (expected one of: runc, docker)"],
    ),
    (
        GOOD + b"poll_interval2: 1s\n",
        ["agent.yaml:10:1: poll_interval2: unknown key (did you mean 'poll_interval'?)"],
    ),
    (
        GOOD.replace(b"poll_interval: 2s", b"poll_interval: soon"),
        [
            "agent.yaml:7:1: poll_interval: invalid duration 'soon' "
            "(use NUMBER UNIT pairs such as 500ms, 30s or 5m)"
        ],
    ),
    (
        GOOD + b"status_listen: 0.0.0.0:9100\n",
        [
            "agent.yaml:10:1: status_listen: invalid address '0.0.0.0:9100' "
            "(the status endpoint listens on loopback only: 127.0.0.1:PORT)"
        ],
    ),
    (GOOD + b"max_attempts: 0\n", ["agent.yaml:10:1: max_attempts: out of range (1 to 100)"]),
]


def test_agent_config_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(GOOD)
    cfg = load_agent_config(path)
    assert cfg.source == f"oci:{tmp_path / 'releases'}"
    assert cfg.state == tmp_path / "state"
    assert cfg.trust_root == tmp_path / "root.yaml"
    assert cfg.poll_interval == 2.0
    assert cfg.runtime is RuntimeKind.RUNC
    assert cfg.location_for("localhost/web") == f"oci:{tmp_path / 'images/web'}"
    assert cfg.location_for("registry.example/x") == "registry.example/x"


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_agent_config_errors(text: bytes, expected: list[str]) -> None:
    with pytest.raises(ManifestError) as info:
        parse_agent_config(text, source="agent.yaml", base=Path("/x"))
    assert [str(p) for p in info.value.problems] == expected


def _setup(tmp_path: Path) -> Path:
    (tmp_path / "root.yaml").write_text(make_root().to_yaml())
    (tmp_path / "agent.yaml").write_bytes(GOOD)
    return tmp_path / "agent.yaml"


def test_release_publish_tags_channel_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "r1.dsse.json"
    env.write_bytes(signed(make_release(1, [service_yaml("web", PIN)])))
    dest = f"oci:{tmp_path / 'releases'}"
    assert main(["release", "publish", str(env), dest, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tags"] == ["stable-1", "stable"]
    assert doc["release_version"] == 1
    repo = LayoutRepository(tmp_path / "releases")
    assert fetch_release(repo, "stable") == env.read_bytes()
    assert main(["release", "publish", str(env), dest]) == 0  # the same bytes again: a no-op
    # Another envelope of the same version: the version tag is immutable.
    other = tmp_path / "r1b.dsse.json"
    other.write_bytes(signed(make_release(1, [service_yaml("web", PIN, replicas=2)])))
    assert main(["release", "publish", str(other), dest]) == 1
    assert "stable-1 already holds" in capsys.readouterr().err
    # The channel never moves back without --force.
    v2 = tmp_path / "r2.dsse.json"
    v2.write_bytes(signed(make_release(2, [service_yaml("web", PIN)])))
    assert main(["release", "publish", str(v2), dest]) == 0
    capsys.readouterr()
    assert main(["release", "publish", str(env), dest]) == 1
    assert "names release v2; refusing to move it back to v1" in capsys.readouterr().err
    assert main(["release", "publish", str(env), dest, "--force"]) == 0
    assert fetch_release(repo, "stable") == env.read_bytes()


def test_agent_reconcile_refusal_exits_3_and_status_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _setup(tmp_path)
    env = tmp_path / "bad.dsse.json"
    env.write_bytes(sign_payload(make_release(5, [service_yaml("web", PIN)]).to_bytes(), MALLORY))
    assert main(["release", "publish", str(env), f"oci:{tmp_path / 'releases'}", "-q"]) == 0
    capsys.readouterr()
    assert main(["agent", "reconcile", "--once", "--config", str(config), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert (doc["outcome"], doc["reason"]) == ("refused", "signature")
    assert doc["error"]["exit_code"] == 3  # a refusal carries the --json error object too
    assert main(["agent", "status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["agent_running"] is False
    assert status["release"] is None
    assert status["last_refusal"]["reason"] == "signature"
    assert status["last_refusal"]["version"] == 5
    assert main(["agent", "status", "--config", str(config)]) == 0
    assert "last refusal v5: signature:" in capsys.readouterr().out
    assert main(["agent", "rollback", "--config", str(config)]) == 1
    assert "no previous good release" in capsys.readouterr().err


def test_agent_trust_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path)
    skip = tmp_path / "root-v3.dsse.json"
    skip.write_bytes(root_envelope(make_root(version=3), ROOT_A))
    assert main(["agent", "trust-update", "--config", str(config), str(skip)]) == 3
    assert "refused (policy): trust root v3 skips v2" in capsys.readouterr().err
    nxt = tmp_path / "root-v2.dsse.json"
    nxt.write_bytes(root_envelope(make_root(version=2), ROOT_A))
    assert main(["agent", "trust-update", "--config", str(config), str(nxt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root_version"] == 2
    assert main(["agent", "status", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root_version"] == 2
