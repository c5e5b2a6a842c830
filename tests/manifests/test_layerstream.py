"""The one hashing, counting, size-capped reader of layer bytes (agent.unpack, builder.inspect)."""

from __future__ import annotations

import gzip
import hashlib
import io

import pytest

from manifests.errors import DocumentError, VerificationError
from manifests.layerstream import HashingReader, open_layer
from manifests.mediatypes import MediaType

DATA = b"kiln layer bytes " * 1000


def test_hashes_and_counts_everything_read() -> None:
    r = HashingReader(io.BytesIO(DATA))
    assert r.read(10) == DATA[:10]
    r.drain()
    assert r.n == len(DATA)
    assert r.hexdigest == hashlib.sha256(DATA).hexdigest()


def test_refuses_past_its_limit_with_the_callers_error() -> None:
    def too_big(cap: int) -> VerificationError:
        return VerificationError(f"over {cap}", reason="size")

    r = HashingReader(io.BytesIO(DATA), limit=100, over_limit=too_big)
    with pytest.raises(VerificationError, match="over 100") as info:
        r.drain()
    assert info.value.reason == "size"
    assert r.hexdigest == hashlib.sha256(b"").hexdigest()  # refused bytes are never hashed


def test_on_read_sees_every_read_and_may_refuse() -> None:
    seen: list[int] = []

    def budget(n: int) -> None:
        seen.append(n)
        if sum(seen) > 5000:
            raise DocumentError("budget spent")

    r = HashingReader(io.BytesIO(DATA), on_read=budget)
    for _ in range(5):
        assert len(r.read(1000)) == 1000
    with pytest.raises(DocumentError, match="budget spent"):
        r.read(1000)
    assert sum(seen) == 6000


def test_open_layer_uses_the_decompressor_passed_in() -> None:
    packed = gzip.compress(DATA)
    raw = HashingReader(io.BytesIO(packed))
    gunzip = {MediaType.OCI_LAYER_GZIP: lambda s: gzip.GzipFile(fileobj=s)}
    plain = HashingReader(open_layer(raw, MediaType.OCI_LAYER_GZIP, gunzip))  # type: ignore[arg-type]
    plain.drain()
    raw.drain()
    assert (raw.hexdigest, plain.hexdigest) == (
        hashlib.sha256(packed).hexdigest(),
        hashlib.sha256(DATA).hexdigest(),
    )
    tar = HashingReader(io.BytesIO(DATA))
    assert open_layer(tar, MediaType.OCI_LAYER_TAR, {}) is tar
    with pytest.raises(DocumentError, match="unsupported layer media type 'application/x-rar'"):
        open_layer(tar, "application/x-rar", {})
    with pytest.raises(DocumentError, match="unsupported layer media type"):
        open_layer(tar, MediaType.OCI_LAYER_ZSTD, {})  # known type, no decompressor given
