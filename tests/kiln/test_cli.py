"""The front door: exit codes, one clean error line for bad input, results on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.cmd_build import source_date_epoch

BAD_FILES = {
    "malformed.yaml": b"apiVersion: kiln.dev/v1\nkind: [Image\n",
    "malformed.toml": b'apiVersion = "kiln.dev/v1"\nkind = \n',
    "empty.yaml": b"",
    "empty.toml": b"",
    "binary.yaml": bytes(range(256)) * 4,
    "binary.toml": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64,
}


@pytest.mark.parametrize("verb", ["validate", "build"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_manifest_is_one_clean_error_line(
    verb: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    args = [verb, str(path)] + (["-o", str(tmp_path / "out")] if verb == "build" else [])
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("kiln: error:")]
    assert len(lines) == 1, captured.err
    assert str(path) in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_missing_manifest_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "nope.yaml" in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build"])
    assert exc.value.code == 2
    assert "kiln: error:" in capsys.readouterr().err


def test_no_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "VERB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), ("", 0), ("0", 0), ("1700000000", 1700000000)],
)
def test_source_date_epoch_accepts(value: str | None, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "١٢", "99999999999999"])
def test_source_date_epoch_refuses(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("x: 1\n")
    assert main(["build", str(manifest), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"SOURCE_DATE_EPOCH={value!r}" in err or f"SOURCE_DATE_EPOCH={value}" in err
    assert "Traceback" not in err


def test_validate_json_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "ok.yaml"
    manifest.write_text(
        "apiVersion: kiln.dev/v1\nkind: Image\nname: tiny\nversion: 0.1.0\n"
        "contents:\n  - dir: {path: /data}\nentrypoint: [/bin/true]\n"
    )
    assert main(["validate", str(manifest), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "version": 1,
        "manifest": str(manifest),
        "valid": True,
        "name": "tiny",
        "image_version": "0.1.0",
    }
