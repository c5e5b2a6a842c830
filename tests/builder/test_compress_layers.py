from __future__ import annotations

import gzip
import io

import isal
import pytest
import zstandard

from builder.compress import Compressor
from builder.errors import BuildError
from builder.layers import plan_layers
from builder.tree import Category, Entry, EntryKind, FileTree
from manifests.image import LayerPolicy, LayerStrategy
from manifests.mediatypes import Compression

DATA = b"kiln bakes images " * 50_000


def compress(c: Compressor, data: bytes = DATA) -> bytes:
    buf = io.BytesIO()
    sink = c.sink(buf, size=len(data))
    for i in range(0, len(data), 7000):
        sink.write(data[i : i + 7000])
    sink.finish()
    return buf.getvalue()


def test_gzip_is_deterministic_with_fixed_header() -> None:
    c = Compressor.create(Compression.GZIP)
    out = compress(c)
    assert out == compress(c)
    assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no mtime, no name, OS 255
    assert gzip.decompress(out) == DATA
    assert c.tag == f"isal-{isal.__version__}/igzip-2/blocks-1MiB"


def test_zstd_is_deterministic_and_records_size() -> None:
    c = Compressor.create(Compression.ZSTD, 5)
    out = compress(c)
    assert out == compress(c)
    assert zstandard.ZstdDecompressor().decompress(out) == DATA
    assert zstandard.get_frame_parameters(out).content_size == len(DATA)
    assert c.tag.startswith(f"zstandard-{zstandard.__version__}/libzstd-")
    assert c.tag.endswith("/zstd-5/blocks-1MiB")


def test_none_passes_through() -> None:
    assert compress(Compressor.create(Compression.NONE)) == DATA


@pytest.mark.parametrize(
    ("comp", "level", "message"),
    [
        (Compression.GZIP, 4, "compression level 4 is out of range for gzip (hint: use 0-3)"),
        (Compression.ZSTD, 0, "compression level 0 is out of range for zstd (hint: use 1-19)"),
        (Compression.NONE, 1, "compression level 1 is out of range for none (hint: use 0-0)"),
    ],
)
def test_bad_levels(comp: Compression, level: int, message: str) -> None:
    with pytest.raises(BuildError) as exc:
        Compressor.create(comp, level)
    assert str(exc.value) == message


def _tree() -> tuple[Entry, ...]:
    t = FileTree()

    def add(path: str, cat: Category, idx: int, size: int = 10) -> None:
        t.add(
            Entry(
                path=path,
                kind=EntryKind.FILE,
                mode=0o644,
                data=b"x" * size,
                size=size,
                category=cat,
                source_index=idx,
                origin=f"contents[{idx}]",
            )
        )

    add("/usr/lib/x86_64-linux-gnu/libc.so.6", Category.RUNTIME, 0, 5000)
    add("/app/bin/app", Category.APP, 1, 300)
    add("/app/static/site.css", Category.APP, 2, 100)
    t.add(
        Entry(
            path="/etc/passwd", kind=EntryKind.FILE, mode=0o644, data=b"r", size=1, category=Category.SYSTEM
        )
    )
    return t.entries()


def test_auto_plan_orders_stable_first_and_carries_parents() -> None:
    plans = plan_layers(_tree(), LayerPolicy())
    assert [p.category for p in plans] == ["system", "runtime", "app"]
    assert [e.path for e in plans[2].entries] == [
        "/app",
        "/app/bin",
        "/app/bin/app",
        "/app/static",
        "/app/static/site.css",
    ]
    assert [e.path for e in plans[0].entries] == ["/etc", "/etc/passwd"]
    assert [p.file_count for p in plans] == [1, 1, 2]


def test_single_and_per_source_and_max() -> None:
    assert [p.category for p in plan_layers(_tree(), LayerPolicy(strategy=LayerStrategy.SINGLE))] == ["all"]
    per = plan_layers(_tree(), LayerPolicy(strategy=LayerStrategy.PER_SOURCE))
    assert [p.category for p in per] == ["system", "contents[0]", "contents[1]", "contents[2]"]
    merged = plan_layers(_tree(), LayerPolicy(strategy=LayerStrategy.PER_SOURCE, max=2))
    # smallest adjacent pairs merge first; the big runtime layer stays alone as long as possible
    assert [p.category for p in merged] == ["system+contents[0]", "contents[1]+contents[2]"]
    assert sum(p.file_count for p in merged) == 4
    assert [p.category for p in plan_layers(_tree(), LayerPolicy(max=1))] == ["system+runtime+app"]


def test_empty_tree_gives_one_empty_layer_and_bad_max() -> None:
    plans = plan_layers((), LayerPolicy())
    assert [(p.category, p.entries) for p in plans] == [("empty", ())]
    with pytest.raises(BuildError, match=r"layers\.max must be at least 1"):
        plan_layers((), LayerPolicy(max=0))
