"""``kiln agent status`` is a query: it creates nothing, never prints ``vNone``, and a damaged
journal is one clean error naming the file and the field (no traceback, nothing moved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from tests.agent.agentkit import make_root
from tests.agent.test_agent_cli import GOOD

CONFIG = GOOD  # the agent CLI tests' valid config


def _config(tmp_path: Path) -> Path:
    (tmp_path / "root.yaml").write_text(make_root().to_yaml())
    (tmp_path / "c2.yaml").write_bytes(CONFIG)
    return tmp_path / "c2.yaml"


def test_status_without_state_creates_nothing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["agent", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "state").exists()
    assert "vNone" not in out
    assert "root none known" in out
    assert f"no agent state yet: {tmp_path / 'state'} does not exist" in out
    assert main(["agent", "status", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["state_exists"], doc["root_version"], doc["release"]) == (False, None, None)
    assert not (tmp_path / "state").exists()


def test_status_with_a_journal_but_no_root_version_does_not_print_vnone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.json").write_bytes(b'{"format":1,"seq":2}')
    assert main(["agent", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "vNone" not in out
    assert "root none known" in out
    assert "no agent state yet" not in out


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b'{"format":1}', "seq: missing"),
        (b'{"format":1,"seq":1,"instances":[5]}', "instances[0]: expected an object, got a number"),
        (b'{"version":"x"}', "format: missing"),
        (b'{"format":true,"seq":1}', "format: expected an integer, got a boolean"),
    ],
)
def test_status_with_a_damaged_journal_names_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, said: str
) -> None:
    config = _config(tmp_path)
    journal = tmp_path / "state" / "journal.json"
    journal.parent.mkdir()
    journal.write_bytes(data)
    assert main(["agent", "status", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert f"{journal}: {said}" in captured.err
    assert "Traceback" not in captured.err
    assert "Error(" not in captured.err
    assert captured.out == ""
    assert journal.read_bytes() == data  # a query never sets the journal aside
