"""Atomic writes name the file the user asked for when the filesystem says no, never a temp file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kiln import cli
from manifests.atomic import atomic_write, atomic_writer
from manifests.layout import OCILayout


def test_missing_directory_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "image.key"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(target, b"secret", mode=0o600)
    assert info.value.filename == str(target)
    assert info.value.errno == errno.ENOENT
    assert ".tmp" not in str(info.value)


def test_replace_failure_names_the_target_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError) as info:
        atomic_write(target, b"data")
    assert info.value.filename == str(target)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_the_callers_own_errors_are_left_alone(tmp_path: Path) -> None:
    source = tmp_path / "no-such-source"
    with pytest.raises(FileNotFoundError) as info, atomic_writer(tmp_path / "copy") as fh:
        fh.write(source.read_bytes())
    assert info.value.filename == str(source)
    assert os.listdir(tmp_path) == []


def test_layout_blob_write_names_the_blob(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "layout")
    digest = layout.write_blob(b"one")
    blob = layout.blob_path(digest)
    blob.unlink()
    blob.mkdir()
    (blob / "x").write_text("in the way")
    with pytest.raises(OSError) as info:
        layout.write_blob(b"one")
    assert info.value.filename == str(blob)


def test_key_generate_into_a_missing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KILN_PASSWORD", "pw")
    out = tmp_path / "nowhere" / "image"
    assert cli.main(["key", "generate", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"kiln: error: {out}.key: No such file or directory"
