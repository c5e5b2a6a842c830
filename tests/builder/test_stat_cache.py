"""The stat-identity cache and the parallel layer writer.

An unchanged rebuild reads no input; any write to an input (even one that restores the mtime) is
noticed through its ctime; a touched-but-identical input is found by content without compressing;
and the compressed bytes do not depend on how the tar stream was cut into writes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import builder.bom
import builder.build
import builder.tarwriter
from builder.build import BuildResult, build_image
from builder.cache import BuildCache
from builder.compress import CompressingSink, Compressor
from manifests.image_parse import load_image_manifest
from manifests.mediatypes import Compression

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: statcache
version: 1.0.0
contents:
  - files:
      - {src: app/, dst: /app/}
entrypoint: [/app/run]
compression: gzip
"""


def _tree(root: Path) -> None:
    (root / "app").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (root / "app" / f"f{i}.txt").write_bytes(os.urandom(3000) + b"x" * 5000)
    (root / "app" / "run").write_text("#!/bin/sh\n")


def _build(root: Path, cache: BuildCache, out: str) -> BuildResult:
    (root / "image.yaml").write_text(MANIFEST)
    return build_image(load_image_manifest(root / "image.yaml"), output=root / out, cache=cache, force=True)


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("an input was read although nothing changed")

    monkeypatch.setattr(builder.tarwriter, "_write_content", refuse)


def test_an_unchanged_rebuild_reads_no_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")
    _no_reads(monkeypatch)
    second = _build(tmp_path, cache, "b")
    assert second.digest == first.digest
    assert second.files == first.files  # the SBOM's per-file digests come from the cache entry
    assert all(layer.cached for layer in second.layers)


def test_a_content_change_with_the_mtime_restored_is_noticed(tmp_path: Path) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")
    victim = tmp_path / "app" / "f3.txt"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF  # same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the write from the mtime
    second = _build(tmp_path, cache, "b")
    assert second.digest != first.digest


def test_a_touched_but_identical_input_is_found_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")
    os.utime(tmp_path / "app" / "f1.txt", (1, 1))
    calls = []
    real = Compressor.sink

    def counting(self: Compressor, *a: object, **k: object) -> CompressingSink:
        calls.append(1)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Compressor, "sink", counting)
    second = _build(tmp_path, cache, "b")
    assert second.digest == first.digest
    assert calls == []  # hashed, found in the cache, never compressed again


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_compressed_bytes_do_not_depend_on_write_sizes(compression: Compression) -> None:
    payload = os.urandom(700_000) + b"abc" * 900_000
    outputs = set()
    for step in (1, 511, 4096, 1 << 20, 3_000_000):
        out = io.BytesIO()
        sink = Compressor.create(compression).sink(out)
        for i in range(0, len(payload), step):
            sink.write(payload[i : i + step])
        sink.finish()
        outputs.add(out.getvalue())
    assert len(outputs) == 1


class _Boom:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes == 2:
            raise OSError("disk full")


def test_an_error_on_the_compressing_thread_reaches_the_caller() -> None:
    sink = Compressor.create(Compression.GZIP).sink(_Boom())

    def feed() -> None:
        for _ in range(1000):
            sink.write(b"x" * 10_000)
        sink.finish()

    with pytest.raises(OSError, match="disk full"):
        feed()
    sink.abort()  # after a failure the caller aborts; it must not hang


def test_abort_stops_the_second_thread() -> None:
    sink = Compressor.create(Compression.GZIP).sink(_Boom())
    sink.write(b"y" * 100)
    sink.abort()
    assert not sink._thread.is_alive()


# -- the whole-build record ------------------------------------------------------------------------


def _layout_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_an_unchanged_build_is_reused_whole_and_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the SBOM was generated again for an unchanged build")

    monkeypatch.setattr(builder.bom, "write_attestations", refuse)  # loaded by build.py on use
    second = _build(tmp_path, cache, "b")
    assert second.digest == first.digest
    assert second.files == first.files
    assert second.size == first.size
    assert _layout_bytes(tmp_path / "a") == _layout_bytes(tmp_path / "b")


def test_a_manifest_edit_is_not_served_from_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")
    (tmp_path / "image.yaml").write_text(MANIFEST + "labels: {team: blue}\n")
    _no_reads(monkeypatch)  # a new build, but its unchanged layer comes from the stat cache
    second = build_image(
        load_image_manifest(tmp_path / "image.yaml"), output=tmp_path / "b", cache=cache, force=True
    )
    assert second.digest != first.digest
    assert second.layers[0].digest == first.layers[0].digest  # the layer itself still comes from the cache


@pytest.mark.parametrize("damage", ["garbage record", "missing small blob", "corrupt small blob"])
def test_a_damaged_record_falls_back_to_a_real_build(tmp_path: Path, damage: str) -> None:
    _tree(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, cache, "a")
    (record,) = (tmp_path / "cache" / "builds").glob("*.json")
    config = cache.blob_path(first.config_digest)
    if damage == "garbage record":
        record.write_text('{"layers": 7}')
    elif damage == "missing small blob":
        config.unlink()
    else:
        config.chmod(0o644)
        config.write_bytes(b"{}")
    second = _build(tmp_path, cache, "b")
    assert second.digest == first.digest
    assert _layout_bytes(tmp_path / "a") == _layout_bytes(tmp_path / "b")
