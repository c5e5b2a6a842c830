"""Parallel block compression (ADR 0021): the bytes depend only on the tar stream, the block size
and the codec, never on the number of threads or how the caller sliced its writes; the joined
stream is one valid gzip / zstd stream for the standard tools and for Python's readers."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from builder.compress import BLOCK_SIZE, Compressor, compress_block
from manifests.mediatypes import Compression


def _payload() -> bytes:
    rnd = random.Random(21)
    text = b"".join(b"line %d of a layer that compresses well\n" % i for i in range(80_000))
    return rnd.randbytes(BLOCK_SIZE // 2) + text + rnd.randbytes(300_001)  # ~4.5 blocks, mixed


PAYLOAD = _payload()


def _compress(comp: Compressor, data: bytes, *, workers: int | None, step: int = 65_536) -> bytes:
    out = io.BytesIO()
    sink = comp.sink(out, workers=workers)
    for i in range(0, len(data), step):
        sink.write(data[i : i + step])
    sink.finish()
    return out.getvalue()


def _decompress(comp: Compressor, blob: bytes) -> bytes:
    if comp.compression is Compression.GZIP:
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


COMPRESSORS = [
    Compressor.create(Compression.GZIP),
    Compressor.create(Compression.GZIP, 0),
    Compressor.create(Compression.ZSTD),
]


@pytest.mark.parametrize("comp", COMPRESSORS, ids=str)
def test_same_bytes_whatever_the_thread_count(comp: Compressor) -> None:
    runs = [(1, 65_536), (2, 4_096), (4, 3_000_000), (8, 511), (None, 1 << 20)]
    if comp.level == 0:
        runs.append((2, 1))  # byte-at-a-time writes, once (slow in Python)
    outputs = [_compress(comp, PAYLOAD, workers=workers, step=step) for workers, step in runs]
    assert len(set(outputs)) == 1, [len(o) for o in outputs]
    assert _decompress(comp, outputs[0]) == PAYLOAD


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_the_stream_is_fixed_blocks_compressed_alone_and_joined(compression: Compression) -> None:
    comp = Compressor.create(compression)
    expected = b"".join(
        compress_block(comp, PAYLOAD[i : i + BLOCK_SIZE]) for i in range(0, len(PAYLOAD), BLOCK_SIZE)
    )
    assert _compress(comp, PAYLOAD, workers=None) == expected
    if compression is Compression.ZSTD:
        first = zstandard.get_frame_parameters(expected)
        assert first.content_size == BLOCK_SIZE
        assert first.has_checksum


def test_the_scheme_is_in_the_recorded_tag() -> None:
    assert Compressor.create(Compression.GZIP).tag.endswith("/igzip-2/blocks-1MiB")
    assert Compressor.create(Compression.ZSTD, 7).tag.endswith("/zstd-7/blocks-1MiB")
    assert Compressor.create(Compression.NONE).tag == "none"
    assert BLOCK_SIZE == 1 << 20


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_an_empty_stream_is_one_valid_empty_member(compression: Compression) -> None:
    comp = Compressor.create(compression)
    blob = _compress(comp, b"", workers=None)
    assert blob
    assert _decompress(comp, blob) == b""


def test_none_passes_the_tar_through_whatever_the_slicing() -> None:
    comp = Compressor.create(Compression.NONE)
    assert _compress(comp, PAYLOAD, workers=None, step=777) == PAYLOAD
    assert _compress(comp, b"", workers=4) == b""


@pytest.mark.parametrize(("compression", "tool"), [(Compression.GZIP, "gzip"), (Compression.ZSTD, "zstd")])
def test_the_standard_tools_accept_and_decode_the_joined_stream(
    compression: Compression, tool: str, tmp_path: Path
) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing (it is in the Makefile's DEBS_TEST)")
        pytest.skip(f"{tool} is not installed")
    comp = Compressor.create(compression)
    path = tmp_path / ("layer.gz" if tool == "gzip" else "layer.zst")
    path.write_bytes(_compress(comp, PAYLOAD, workers=2))
    subprocess.run([tool, "-t", str(path)], check=True, capture_output=True)
    decoded = subprocess.run([tool, "-dc", str(path)], check=True, capture_output=True).stdout
    assert decoded == PAYLOAD


def test_a_failing_block_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    import builder.compress

    def broken(comp: Compressor, block: bytes) -> bytes:
        raise MemoryError("no room for the block")

    monkeypatch.setattr(builder.compress, "compress_block", broken)
    sink = Compressor.create(Compression.GZIP).sink(io.BytesIO(), workers=2)

    def feed() -> None:
        for _ in range(20):
            sink.write(b"z" * BLOCK_SIZE)
        sink.finish()

    with pytest.raises(MemoryError, match="no room"):
        feed()
    sink.abort()
    assert not sink._thread.is_alive()


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_the_writer_thread_hashes_the_uncompressed_stream(compression: Compression) -> None:
    comp = Compressor.create(compression)
    out = io.BytesIO()
    sink = comp.sink(out, hash_input=True)
    for i in range(0, len(PAYLOAD), 100_000):
        sink.write(PAYLOAD[i : i + 100_000])
    assert sink.finish_hashed().hex == hashlib.sha256(PAYLOAD).hexdigest()
    assert out.getvalue() == _compress(comp, PAYLOAD, workers=1)  # hashing changes nothing
    plain = comp.sink(io.BytesIO())
    with pytest.raises(ValueError, match="not asked to hash"):
        plain.finish_hashed()
    plain.abort()


def test_buffers_the_caller_reuses_do_not_change_the_output() -> None:
    # The sink keeps the written pieces until their block is full; a bytearray or a memoryview the
    # caller overwrites right after the write must not leak its new bytes into the stream.
    comp = Compressor.create(Compression.GZIP)
    expected = _compress(comp, PAYLOAD, workers=2)
    out = io.BytesIO()
    sink = comp.sink(out, workers=2)
    scratch = bytearray(70_001)
    for i in range(0, len(PAYLOAD), len(scratch)):
        piece = PAYLOAD[i : i + len(scratch)]
        scratch[: len(piece)] = piece
        sink.write(scratch[: len(piece)] if i % 2 else memoryview(scratch)[: len(piece)])  # type: ignore[arg-type]
        scratch[:] = b"\xff" * len(scratch)
    sink.finish()
    assert out.getvalue() == expected


def test_big_buffers_tune_the_allocator_once_and_keep_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from builder import compress

    calls: list[tuple[int, int]] = []

    class Libc:
        def gnu_get_libc_version(self) -> bytes:
            return b"2.36"

        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(compress, "_allocator_tuned", False)
    comp = Compressor.create(Compression.GZIP)
    expected = _compress(comp, PAYLOAD, workers=2)
    assert calls == []  # a plain sink leaves the allocator alone
    for _ in range(2):
        out = io.BytesIO()
        sink = comp.sink(out, workers=2, big_buffers=True)
        sink.write(PAYLOAD)
        sink.finish()
        assert out.getvalue() == expected
    # Once per process: the mmap threshold at 32 MiB (what every glibc accepts), then the trim one.
    assert calls == [(-3, 32 << 20), (-1, 256 << 20)]


def test_a_glibc_refusing_the_mmap_threshold_keeps_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from builder import compress

    calls: list[int] = []

    class OldLibc:
        def gnu_get_libc_version(self) -> bytes:
            return b"2.17"

        def mallopt(self, param: int, value: int) -> int:
            calls.append(param)
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: OldLibc())
    monkeypatch.setattr(compress, "_allocator_tuned", False)
    compress._keep_buffers()
    assert calls == [-3]  # setting the trim threshold alone would pin mmap at 128 KiB
