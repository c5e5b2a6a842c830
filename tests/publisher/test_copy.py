"""``copy`` and ``pull``: digests preserved exactly between registries and layouts, with signatures;
a pull that meets a tampered byte leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import main
from manifests.digest import Digest, sha256_file
from manifests.layout import OCILayout
from manifests.oci import OCIManifest
from publisher.copy import copy_image
from publisher.layoutstore import LayoutRepository
from publisher.registrystore import RegistryRepository
from signing.cosign import attestation_tag, signature_tag
from tests.publisher.conftest import Target, _registry
from tests.publisher.test_publish_kit import make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One plain registry for this module; each test pushes to repositories of its own."""
    yield from _registry(tmp_path_factory.mktemp("reg"), "plain")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object] | None, str]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out) if captured.out.strip() else None
    return code, data, captured.err


def _blob_files(root: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in (root / "blobs" / "sha256").iterdir() if not p.name.startswith(".")
    }


@pytest.fixture
def signed_src(tmp_path: Path) -> tuple[Path, Digest]:
    desc = make_image(tmp_path / "src", version="3.0.0", layer=b"copy me" * 1000, attest=True)
    return tmp_path / "src", desc.digest


def _push(target: Target, src: Path, repo: str, tag: str) -> Digest:
    with target.client() as client:
        dest = RegistryRepository(client, repo)
        closure, _ = copy_image(LayoutRepository(src), dest, tag)
        dest.set_tag(tag, closure.root)
        return closure.digest


def test_layout_to_registry_to_layout_is_byte_identical(
    registry: Target, signed_src: tuple[Path, Digest], tmp_path: Path
) -> None:
    src, digest = signed_src
    assert _push(registry, src, "copy/round", "3.0.0") == digest
    with registry.client() as client:
        back = LayoutRepository(tmp_path / "back", create=True)
        closure, result = copy_image(RegistryRepository(client, "copy/round"), back, "3.0.0")
    assert closure.digest == digest
    assert result.cosign_tags == (signature_tag(digest), attestation_tag(digest))
    original = _blob_files(src)
    copied = _blob_files(tmp_path / "back")
    # Everything but the unsigned build records (none here) comes back with the same bytes.
    assert copied == {name: data for name, data in original.items() if name in copied}
    assert set(copied) == set(original)


def test_copy_between_repositories_of_one_registry_mounts(
    registry: Target, signed_src: tuple[Path, Digest], capsys: pytest.CaptureFixture[str]
) -> None:
    src, digest = signed_src
    _push(registry, src, "copy/from", "3.0.0")
    host = registry.registry.host
    code, data, err = run(["copy", f"{host}/copy/from:3.0.0", f"{host}/copy/to", "--insecure"], capsys)
    assert code == 0, err
    assert data is not None
    assert data["reference"] == f"{host}/copy/to@{digest}"
    assert data["tags"] == ["3.0.0"]
    assert data["blobs"] == {"uploaded": 0, "existed": 0, "mounted": 6}
    assert data["signatures"] == [signature_tag(digest), attestation_tag(digest)]
    with registry.client() as client:
        found = client.head_manifest("copy/to", "3.0.0")
        assert found is not None
        assert found.digest == digest
        assert client.head_manifest("copy/to", signature_tag(digest)) is not None


def test_copy_refuses_to_move_a_tag_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = make_image(tmp_path / "a", version="1.0.0", layer=b"a")
    second = make_image(tmp_path / "b", version="1.0.0", layer=b"b")
    dest = f"oci:{tmp_path / 'dest'}:prod"
    assert run(["copy", f"oci:{tmp_path / 'a'}:1.0.0", dest], capsys)[0] == 0
    code, _, err = run(["copy", f"oci:{tmp_path / 'b'}:1.0.0", dest], capsys)
    assert code == 1
    assert (
        f"kiln: error: oci:{tmp_path / 'dest'}:prod already names {first.digest}, not {second.digest}" in err
    )
    assert OCILayout.open(tmp_path / "dest").tags()["prod"].digest == first.digest
    code, _, err = run(["copy", f"oci:{tmp_path / 'b'}:1.0.0", dest, "--force"], capsys)
    assert code == 0, err
    assert OCILayout.open(tmp_path / "dest").tags()["prod"].digest == second.digest


def test_pull_by_tag_and_by_digest(
    registry: Target, signed_src: tuple[Path, Digest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, digest = signed_src
    _push(registry, src, "pull/app", "3.0.0")
    host = registry.registry.host
    code, data, err = run(["pull", f"{host}/pull/app:3.0.0", str(tmp_path / "by-tag"), "--insecure"], capsys)
    assert code == 0, err
    assert data is not None
    assert data["reference"] == f"oci:{tmp_path / 'by-tag'}@{digest}"
    assert data["tags"] == ["3.0.0"]
    code, data, err = run(
        ["pull", f"{host}/pull/app@{digest}", str(tmp_path / "by-digest"), "--insecure", "--jobs", "1"],
        capsys,
    )
    assert code == 0, err
    assert data is not None
    assert data["tags"] == ["3.0.0"]  # named after the image's version annotation
    for out in ("by-tag", "by-digest"):
        layout = OCILayout.open(tmp_path / out)
        assert layout.resolve("3.0.0").digest == digest
        for name in _blob_files(tmp_path / out):
            assert sha256_file(tmp_path / out / "blobs" / "sha256" / name)[0] == Digest(name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_pull_refuses_an_existing_output_without_force(
    registry: Target, signed_src: tuple[Path, Digest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, digest = signed_src
    _push(registry, src, "pull/force", "3.0.0")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    ref = f"{registry.registry.host}/pull/force:3.0.0"
    code, _, err = run(["pull", ref, str(out), "--insecure"], capsys)
    assert code == 1
    assert f"kiln: error: {out} already exists" in err
    assert (out / "keep").read_text() == "mine"
    code, _, err = run(["pull", ref, str(out), "--insecure", "--force"], capsys)
    assert code == 0, err
    assert not (out / "keep").exists()
    assert OCILayout.open(out).resolve("3.0.0").digest == digest


def test_pull_of_a_tampered_blob_leaves_nothing(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = make_image(tmp_path / "src", version="6.6.6", layer=b"the real layer " * 4096)
    _push(registry, tmp_path / "src", "pull/tampered", "6.6.6")
    layer = OCIManifest.from_bytes(OCILayout.open(tmp_path / "src").read_blob(desc.digest)).layers[0]
    stored = registry.registry.storage / "docker/registry/v2/blobs/sha256" / layer.digest.hex[:2]
    data_file = stored / layer.digest.hex / "data"
    original = data_file.read_bytes()
    data_file.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    try:
        out = tmp_path / "pulled"
        code, data, err = run(
            ["pull", f"{registry.registry.host}/pull/tampered:6.6.6", str(out), "--insecure"], capsys
        )
    finally:
        data_file.write_bytes(original)
    assert code == 3
    assert data is not None  # --json: the refusal is one error object on stdout
    assert data["error"]["exit_code"] == 3  # type: ignore[index]
    assert f"pull blob {layer.digest}: digest mismatch" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pulled")] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pull", "app:1.0", "OUT"], "kiln: error: 'app:1.0' names no registry"),
        (["copy", "oci:SRC", "example.test/app@sha256:" + "0" * 64], "kiln: error: DEST names a digest"),
        (["pull", "oci:", "OUT"], "kiln: error: invalid image reference 'oci:'"),
        (["pull", "example.test/app@sha256:xyz", "OUT"], "kiln: error: invalid digest in image reference"),
    ],
)
def test_bad_locations_are_one_clean_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    code, data, err = run(argv, capsys)
    assert code == (2 if "DEST names a digest" in message else 1)  # 2: the command line is wrong
    assert data is not None  # --json: the failure is one error object on stdout
    assert data["error"]["exit_code"] == code  # type: ignore[index]
    assert err.startswith(message), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
