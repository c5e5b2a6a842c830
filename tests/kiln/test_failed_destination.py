"""A verb that fails leaves its ``oci:DIR`` destination as it found it: a directory the run created is
gone again (any failure, Ctrl-C too), a directory that existed keeps what it had, and a directory
refused as "not an OCI layout" gets nothing written into it, not even the lock file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import publisher.copy
import publisher.release_artifact
from kiln.cli import main
from manifests.digest import Digest
from publisher.layoutstore import LayoutRepository
from tests.agent.agentkit import make_release, service_yaml, signed
from tests.publisher.test_publish_kit import make_image

LAYER = b"the layer the tester damages"
PIN = "localhost/web@sha256:" + "ab" * 32


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _blob(layout: Path, content: bytes) -> Path:
    return layout / "blobs" / "sha256" / Digest.of(content).hex


def _garbage_layer(tmp_path: Path) -> Path:
    src = tmp_path / "bad"
    make_image(src, version="1.0.0", layer=LAYER)
    blob = _blob(src, LAYER)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"garbage" * 10)
    return src


def _missing_layer(tmp_path: Path) -> Path:
    src = tmp_path / "missing"
    make_image(src, version="1.0.0", layer=LAYER)
    _blob(src, LAYER).unlink()
    return src


def _index_not_an_object(tmp_path: Path) -> Path:
    src = tmp_path / "listindex"
    make_image(src, version="1.0.0", layer=LAYER)
    os.chmod(src / "index.json", 0o644)
    (src / "index.json").write_text("[]")
    return src


DAMAGED = [_garbage_layer, _missing_layer, _index_not_an_object]


@pytest.mark.parametrize("damage", DAMAGED, ids=lambda f: f.__name__.strip("_"))
def test_copy_from_a_damaged_layout_leaves_no_new_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], Path]
) -> None:
    src = damage(tmp_path)
    dest = tmp_path / "new" / "dest"
    code, out, err = run(capsys, "copy", f"oci:{src}", f"oci:{dest}")
    assert code != 0
    assert out == ""
    assert "kiln: error: " in err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()  # nor the parent the run would have made


def test_copy_of_a_missing_tag_creates_no_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "good", version="1.0.0")
    code, _, err = run(capsys, "copy", f"oci:{tmp_path / 'good'}:nosuchtag", f"oci:{tmp_path / 'dest'}")
    assert code == 1
    assert "nosuchtag" in err
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("damage", DAMAGED, ids=lambda f: f.__name__.strip("_"))
def test_publish_of_a_damaged_layout_leaves_no_new_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], Path]
) -> None:
    src = damage(tmp_path)
    code, out, err = run(capsys, "publish", str(src), f"oci:{tmp_path / 'dest'}")
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    assert not (tmp_path / "dest").exists()


def test_release_publish_of_a_malformed_envelope_leaves_no_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "env.json"
    env.write_text("[]")
    code, out, err = run(capsys, "release", "publish", str(env), f"oci:{tmp_path / 'dest'}")
    assert code != 0
    assert out == ""
    assert "release envelope" in err
    assert not (tmp_path / "dest").exists()


def test_release_publish_interrupted_leaves_no_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "r1.dsse.json"
    env.write_bytes(signed(make_release(1, [service_yaml("web", PIN)])))

    def interrupted(endpoint: LayoutRepository, *_a: object, **_k: object) -> None:
        assert (tmp_path / "dest" / "oci-layout").exists()  # made by now
        raise KeyboardInterrupt

    monkeypatch.setattr(publisher.release_artifact, "publish_release", interrupted)
    code, _, err = run(capsys, "release", "publish", str(env), f"oci:{tmp_path / 'dest'}")
    assert code == 130
    assert "interrupted" in err
    assert not (tmp_path / "dest").exists()


def test_copy_interrupted_midway_leaves_no_new_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_image(tmp_path / "good", version="1.0.0")
    real = publisher.copy._put_blobs

    def put_then_interrupt(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(publisher.copy, "_put_blobs", put_then_interrupt)
    code, _, _ = run(capsys, "copy", f"oci:{tmp_path / 'good'}", f"oci:{tmp_path / 'dest'}")
    assert code == 130
    assert not (tmp_path / "dest").exists()


def test_failed_copy_into_an_existing_layout_keeps_its_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "good", version="1.0.0")
    dest = tmp_path / "dest"
    assert run(capsys, "copy", f"oci:{tmp_path / 'good'}", f"oci:{dest}")[0] == 0
    before = _listing(dest)
    src = _garbage_layer(tmp_path)
    code, _, _ = run(capsys, "copy", f"oci:{src}", f"oci:{dest}:other")
    assert code == 3
    after = _listing(dest)
    assert after["index.json"] == before["index.json"]
    assert {k: v for k, v in after.items() if k in before} == before  # new blobs may stay


def test_failed_copy_into_an_empty_directory_leaves_it_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _garbage_layer(tmp_path)
    (tmp_path / "empty").mkdir()
    assert run(capsys, "copy", f"oci:{src}", f"oci:{tmp_path / 'empty'}")[0] == 3
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("verb", ["publish", "copy"])
def test_a_refused_directory_gets_nothing_written_into_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    make_image(tmp_path / "good", version="1.0.0")
    mine = tmp_path / "notlayout"
    mine.mkdir()
    (mine / "data.txt").write_text("mine")
    src = str(tmp_path / "good") if verb == "publish" else f"oci:{tmp_path / 'good'}"
    code, out, err = run(capsys, verb, src, f"oci:{mine}")
    assert code == 1
    assert out == ""
    assert f"kiln: error: {mine}: not empty and not an OCI layout" in err
    hint = err.split("kiln: hint: ", 1)[1]
    assert "publish" not in hint  # the same refusal for every verb
    assert sorted(p.name for p in mine.iterdir()) == ["data.txt"]
    assert (mine / "data.txt").read_text() == "mine"


def test_a_failed_run_keeps_a_new_layout_another_run_wrote_into(tmp_path: Path) -> None:
    """Two kilns creating the same new oci:DIR: the one that made the directory and then failed must
    not take the other's published image with it."""
    make_image(tmp_path / "good", version="1.0.0")
    image = LayoutRepository(tmp_path / "good").get_manifest("1.0.0")
    assert image is not None
    dest = tmp_path / "dest"
    first = LayoutRepository(dest, create=True)  # made the directory
    second = LayoutRepository(dest, create=True)  # found it a layout
    second.set_tag("1.0.0", image)
    first.discard_created()
    assert LayoutRepository(dest).tag_target("1.0.0") is not None
    second.discard_created()  # made nothing: removes nothing
    assert (dest / "index.json").exists()
