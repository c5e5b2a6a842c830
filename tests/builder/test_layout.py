from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.layout import REF_NAME, OCILayout
from manifests.oci import Descriptor


def desc(layout: OCILayout, body: bytes) -> Descriptor:
    d = layout.write_blob(body)
    return Descriptor(media_type="application/vnd.oci.image.manifest.v1+json", digest=d, size=len(body))


def test_create_writes_marker_and_empty_index(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    assert (tmp_path / "l" / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    assert json.loads((tmp_path / "l" / "index.json").read_bytes()) == {
        "manifests": [],
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "schemaVersion": 2,
    }
    assert layout.index().manifests == ()
    assert OCILayout.create(tmp_path / "l").root == layout.root  # re-create opens


def test_create_refuses_a_non_layout_directory(tmp_path: Path) -> None:
    (tmp_path / "stuff").write_text("x")
    with pytest.raises(DocumentError, match="not empty and not an OCI layout"):
        OCILayout.create(tmp_path)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (None, "not an OCI image layout (no oci-layout file)"),
        (b'{"imageLayoutVersion":"2.0.0"}', "unsupported imageLayoutVersion '2.0.0'"),
        (b"[]", "expected a JSON object"),
    ],
)
def test_open_checks_marker(tmp_path: Path, marker: bytes | None, message: str) -> None:
    if marker is not None:
        (tmp_path / "oci-layout").write_bytes(marker)
    with pytest.raises(DocumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        OCILayout.open(tmp_path)


def test_blob_roundtrip_and_mismatch(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    d = layout.write_blob(b"hello")
    assert d == Digest.of(b"hello")
    assert layout.has_blob(d)
    assert layout.read_blob(d) == b"hello"
    assert oct(layout.blob_path(d).stat().st_mode & 0o777) == "0o644"
    layout.blob_path(d).write_bytes(b"HELLO")
    with pytest.raises(VerificationError, match="digest mismatch") as exc:
        layout.read_blob(d)
    assert exc.value.reason == "digest"
    with pytest.raises(VerificationError):
        layout.verify_blob(d)
    with pytest.raises(DocumentError, match="larger than the 3-byte cap"):
        layout.read_blob(d, limit=3)
    with pytest.raises(DocumentError, match="is missing"):
        layout.read_blob(Digest.of(b"absent"))


def test_blob_writer_expected_digest_keeps_nothing_on_mismatch(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    with pytest.raises(VerificationError), layout.blob_writer(expected=Digest.of(b"a")) as sink:
        sink.write(b"b")
    assert os.listdir(tmp_path / "blobs" / "sha256") == []


def test_ingest_file_copy_and_move(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    src = tmp_path / "f"
    src.write_bytes(b"data" * 1000)
    d, n = layout.ingest_file(src)
    assert (d, n) == (Digest.of(b"data" * 1000), 4000)
    assert src.exists()
    d2, _ = layout.ingest_file(src, move=True)
    assert d2 == d
    assert not src.exists()
    assert layout.read_blob(d) == b"data" * 1000


def test_tags_resolve_untag(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    a = desc(layout, b'{"a":1}')
    b = desc(layout, b'{"b":1}')
    layout.tag(a, "1.0")
    assert layout.resolve(None).digest == a.digest
    layout.tag(b, "2.0")
    with pytest.raises(DocumentError, match="holds 2 images; name one"):
        layout.resolve(None)
    assert layout.resolve("2.0").digest == b.digest
    assert layout.resolve(str(a.digest)).annotations[REF_NAME] == "1.0"
    layout.tag(b, "1.0")  # moves the tag
    assert {k: v.digest for k, v in layout.tags().items()} == {"1.0": b.digest, "2.0": b.digest}
    layout.untag("2.0")
    assert set(layout.tags()) == {"1.0"}
    with pytest.raises(DocumentError, match=r"no tag 'nope' \(hint: tags: 1.0\)"):
        layout.resolve("nope")
    with pytest.raises(DocumentError, match=r"no tag '2\.0'"):
        layout.untag("2.0")
    with pytest.raises(DocumentError, match="invalid tag"):
        layout.tag(a, "has space")
    # the index is canonical JSON
    raw = (tmp_path / "index.json").read_bytes()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()


def test_add_untagged_once(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    a = desc(layout, b"{}")
    layout.add(a)
    layout.add(a)
    assert len(layout.index().manifests) == 1
    assert layout.resolve(None).digest == a.digest


def test_link_blob_verifies(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    layout.link_blob(src, Digest.of(b"abc"), size=3)
    assert layout.read_blob(Digest.of(b"abc")) == b"abc"
    with pytest.raises(VerificationError):
        layout.link_blob(src, Digest.of(b"other"))
    assert not layout.has_blob(Digest.of(b"other"))
