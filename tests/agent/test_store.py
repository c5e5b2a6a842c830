"""The agent's content store: verified ingest, pulls by digest from a layout, presence checks, gc."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

import pytest

from agent.errors import StoreError
from agent.store import BlobSource, ContentStore, LayoutSource, StoreLimits
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Platform
from tests.agent.imagekit import M, tar_bytes, write_image, write_index

DATA = b"hello, store\n"
DIGEST = Digest.of(DATA)
NL = b"\n"


def _blob_files(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.blob_dir))


def test_ingest_stores_a_matching_blob_read_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    path = store.ingest(DIGEST, len(DATA), lambda: io.BytesIO(DATA))
    assert path == tmp_path / "blobs" / "sha256" / DIGEST.hex
    assert path.read_bytes() == DATA
    assert path.stat().st_mode & 0o777 == 0o444
    assert store.has(DIGEST)
    assert store.read(DIGEST) == DATA
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA
    assert store.digests() == (DIGEST,)


@pytest.mark.parametrize(
    ("served", "size", "reason", "message"),
    [
        (
            b"other bytes\n",
            len(DATA),
            "digest",
            f"blob {DIGEST}: digest mismatch (got {Digest.of(b'other bytes' + NL)}); discarded",
        ),
        (DATA + b"x", len(DATA), "size", f"blob {DIGEST}: more than the {len(DATA)} bytes announced"),
        (
            DATA[:-1],
            len(DATA),
            "digest",
            f"blob {DIGEST}: digest mismatch (got {Digest.of(DATA[:-1])}); discarded",
        ),
        (DATA, len(DATA) + 1, "size", f"blob {DIGEST}: {len(DATA)} bytes, not the {len(DATA) + 1} announced"),
    ],
    ids=["different-content", "longer-than-announced", "truncated", "shorter-than-announced"],
)
def test_ingest_refuses_and_keeps_nothing(
    tmp_path: Path, served: bytes, size: int, reason: str, message: str
) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(VerificationError) as err:
        store.ingest(DIGEST, size, lambda: io.BytesIO(served))
    assert err.value.reason == reason
    assert err.value.message == message
    assert _blob_files(store) == []  # not even a temporary file
    assert not store.has(DIGEST)


def test_ingest_of_a_hash_mismatch_names_both_digests(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(VerificationError, match=f"got {Digest.of(b'evil')}"):
        store.ingest(DIGEST, 4, lambda: io.BytesIO(b"evil"))


def test_ingest_refuses_an_announced_size_over_the_cap_before_reading(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limits=StoreLimits(max_blob=10))
    opened = []

    def opener() -> IO[bytes]:
        opened.append(1)
        return io.BytesIO(DATA)

    with pytest.raises(VerificationError, match="announced size 13 exceeds the store's 10-byte cap"):
        store.ingest(DIGEST, len(DATA), opener)
    assert opened == []


def test_ingest_of_unknown_size_stops_at_the_cap(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limits=StoreLimits(max_blob=5))
    with pytest.raises(VerificationError, match="more than the 5 bytes") as err:
        store.ingest(DIGEST, None, lambda: io.BytesIO(DATA))
    assert err.value.reason == "size"
    assert _blob_files(store) == []


def test_a_blob_altered_on_disk_is_detected_and_removed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    path = store.ingest(DIGEST, len(DATA), lambda: io.BytesIO(DATA))
    path.chmod(0o644)
    path.write_bytes(b"HELLO, STORE\n")  # same size, other content
    with pytest.raises(VerificationError, match="was altered on disk"):
        store.verify(DIGEST, size=len(DATA))
    assert not store.has(DIGEST)


def test_missing_blob_is_a_store_error(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(StoreError, match=f"blob {DIGEST} is not in the store"):
        store.open(DIGEST)


class Counting:
    """A BlobSource wrapper that records what was fetched."""

    def __init__(self, inner: BlobSource) -> None:
        self.inner = inner
        self.manifests: list[Digest] = []
        self.blobs: list[Digest] = []

    def get_manifest(self, digest: Digest) -> bytes:
        self.manifests.append(digest)
        return self.inner.get_manifest(digest)

    def open_blob(self, digest: Digest) -> IO[bytes]:
        self.blobs.append(digest)
        return self.inner.open_blob(digest)


def _image(tmp_path: Path):  # type: ignore[no-untyped-def]
    l1 = tar_bytes([M("bin", "dir"), M("bin/app", data=b"#!app\n", mode=0o755)])
    l2 = tar_bytes([M("etc", "dir"), M("etc/motd", data=b"hi\n")])
    return write_image(tmp_path / "layout", [l1, l2])


def test_pull_image_fetches_everything_then_nothing(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state")
    src = Counting(LayoutSource(img.layout))
    pulled = store.pull_image(src, img.digest)
    assert pulled.manifest_digest == img.digest
    assert pulled.config["rootfs"]["diff_ids"] == img.config["rootfs"]["diff_ids"]
    assert len(pulled.layers) == 2
    assert set(pulled.fetched) == {img.digest, pulled.config_digest, *(d.digest for d in pulled.layers)}
    assert len(src.blobs) == 3
    for d in pulled.fetched:
        store.verify(d)
    again = store.pull_image(src, img.digest)
    assert again.fetched == ()
    assert len(src.blobs) == 3
    assert len(src.manifests) == 1


def test_pull_notices_a_present_blob_of_the_wrong_size(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state")
    pulled = store.pull_image(LayoutSource(img.layout), img.digest)
    victim = store.path(pulled.layers[0].digest)
    victim.chmod(0o644)
    victim.write_bytes(b"truncated")
    with pytest.raises(VerificationError, match="has 9 bytes, not"):
        store.pull_image(LayoutSource(img.layout), img.digest)
    assert not victim.exists()
    # Pulling again repairs the store.
    repaired = store.pull_image(LayoutSource(img.layout), img.digest)
    assert repaired.fetched == (pulled.layers[0].digest,)


def test_pull_with_verify_rehashes_present_blobs(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state")
    pulled = store.pull_image(LayoutSource(img.layout), img.digest)
    victim = store.path(pulled.layers[1].digest)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    store.pull_image(LayoutSource(img.layout), img.digest)  # same size: only verify=True sees it
    with pytest.raises(VerificationError, match="was altered on disk"):
        store.pull_image(LayoutSource(img.layout), img.digest, verify=True)


def test_pull_refuses_a_source_serving_other_bytes(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state")
    src = LayoutSource(img.layout)
    pulled_layer = store.pull_image(src, img.digest).layers[0].digest
    store.gc(set())
    blob = img.layout.blob_path(pulled_layer)
    blob.chmod(0o644)
    blob.write_bytes(b"x" * blob.stat().st_size)
    with pytest.raises(VerificationError, match="digest mismatch") as err:
        store.pull_image(src, img.digest)
    assert err.value.reason == "digest"
    assert not store.has(pulled_layer)
    assert not any(n.startswith(".") for n in _blob_files(store))


def test_pull_by_index_picks_linux_amd64(tmp_path: Path) -> None:
    img = _image(tmp_path)
    arm = write_image(tmp_path / "arm", [tar_bytes([M("arm", data=b"arm")])])
    arm_digest = img.layout.write_blob(arm.manifest)
    assert arm_digest == arm.digest
    index = write_index(
        img.layout,
        [
            (arm.digest, len(arm.manifest), Platform(os="linux", architecture="arm64")),
            (img.digest, len(img.manifest), Platform(os="linux", architecture="amd64")),
        ],
    )
    store = ContentStore(tmp_path / "state")
    pulled = store.pull_image(LayoutSource(img.layout), index)
    assert pulled.digest == index
    assert pulled.manifest_digest == img.digest
    with pytest.raises(DocumentError, match="no manifest for linux/s390x") as err:
        store.pull_image(LayoutSource(img.layout), index, platform=Platform(os="linux", architecture="s390x"))
    assert err.value.hint == "platforms in the index: linux/arm64, linux/amd64"


def test_pull_refuses_a_manifest_under_the_wrong_digest(tmp_path: Path) -> None:
    img = _image(tmp_path)
    wrong = Digest.of(b"not the manifest")
    img.layout.blob_path(wrong).write_bytes(img.manifest)
    store = ContentStore(tmp_path / "state")
    with pytest.raises(VerificationError, match="digest mismatch"):
        store.pull_image(LayoutSource(img.layout), wrong)
    assert _blob_files(store) == []


def test_pull_refuses_unsupported_layer_media_types(tmp_path: Path) -> None:
    img = _image(tmp_path)
    raw = img.manifest.replace(MediaType.OCI_LAYER_GZIP.encode(), b"application/x-evil", 1)
    digest = img.layout.write_blob(raw)
    store = ContentStore(tmp_path / "state")
    with pytest.raises(DocumentError, match="unsupported media type 'application/x-evil'"):
        store.pull_image(LayoutSource(img.layout), digest)


def test_pull_refuses_an_image_over_the_size_cap(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state", limits=StoreLimits(max_image=10))
    with pytest.raises(VerificationError, match="bytes of layers exceed the 10-byte cap"):
        store.pull_image(LayoutSource(img.layout), img.digest)


def test_image_reads_only_the_store(tmp_path: Path) -> None:
    img = _image(tmp_path)
    store = ContentStore(tmp_path / "state")
    with pytest.raises(StoreError, match="is not in the store"):
        store.image(img.digest)
    store.pull_image(LayoutSource(img.layout), img.digest)
    assert store.image(img.digest).manifest_digest == img.digest


def test_gc_keeps_what_kept_manifests_reference(tmp_path: Path) -> None:
    a = _image(tmp_path)
    b = write_image(tmp_path / "b", [tar_bytes([M("only-b", data=b"b")])])
    store = ContentStore(tmp_path / "state")
    pa = store.pull_image(LayoutSource(a.layout), a.digest)
    pb = store.pull_image(LayoutSource(b.layout), b.digest)
    (store.blob_dir / ".ingest-stale.tmp").write_bytes(b"junk")
    removed = store.gc({a.digest})
    assert set(removed) == {b.digest, pb.config_digest, *(d.digest for d in pb.layers)}
    assert set(store.digests()) == {a.digest, pa.config_digest, *(d.digest for d in pa.layers)}
    assert not (store.blob_dir / ".ingest-stale.tmp").exists()
    assert store.gc(set())
    assert store.digests() == ()
