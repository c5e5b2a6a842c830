"""The tar writer frames common headers itself; they must be byte for byte what tarfile writes
(the layer's diff_id depends on it), and anything unusual must still go through tarfile."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.tarwriter import _tarfile_header, header_bytes, tar_size, write_tar
from builder.tree import Entry, EntryKind

_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F, exclude_characters="/"),
    min_size=1,
    max_size=60,
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    parts = draw(st.lists(_names.filter(lambda n: n not in {".", ".."}), min_size=1, max_size=4))
    path = "/" + "/".join(parts)
    kind = draw(st.sampled_from(list(EntryKind)))
    ids = st.one_of(st.integers(0, 70_000), st.integers(0, 8**8))
    common = {"path": path, "mode": draw(st.integers(0, 0o7777)), "uid": draw(ids), "gid": draw(ids)}
    if kind is EntryKind.FILE:
        size = draw(st.one_of(st.integers(0, 1 << 20), st.integers(8**11 - 2, 8**11 + 2)))
        return Entry(kind=kind, size=size, data=b"", **common)  # data unused for headers
    if kind in (EntryKind.SYMLINK, EntryKind.HARDLINK):
        target = draw(st.one_of(_names, st.text(min_size=95, max_size=130).filter(lambda t: "\0" not in t)))
        return Entry(kind=kind, target=target, **common)
    return Entry(kind=kind, **common)


@settings(max_examples=400, deadline=None)
@given(entry=entries(), mtime=st.one_of(st.integers(0, 2**33), st.just(8**11 - 1)))
def test_the_fast_header_is_what_tarfile_writes(entry: Entry, mtime: int) -> None:
    assert header_bytes(entry, mtime=mtime) == _tarfile_header(entry, mtime=mtime)


def test_a_written_tar_reads_back_and_its_size_is_known_in_advance() -> None:
    long = "/" + "d" * 120 + "/" + "é" * 10
    items = [
        Entry(path="/app", kind=EntryKind.DIR, mode=0o755),
        Entry(path="/app/a.txt", kind=EntryKind.FILE, mode=0o644, size=5, data=b"hello", uid=1000),
        Entry(path="/app/link", kind=EntryKind.SYMLINK, mode=0o777, target="a.txt"),
        Entry(path="/app/hard", kind=EntryKind.HARDLINK, mode=0o644, target="/app/a.txt"),
        Entry(path=long, kind=EntryKind.FILE, mode=0o600, size=3, data=b"abc", gid=9_999_999),
    ]
    out = io.BytesIO()
    stats = write_tar(items, out, mtime=1_700_000_000)
    assert stats.size == len(out.getvalue()) == tar_size(items, mtime=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["app", "app/a.txt", "app/link", "app/hard", long.lstrip("/")]
        assert members[1].uid == 1000
        assert members[1].mtime == 1_700_000_000
        assert members[2].linkname == "a.txt"
        assert members[3].linkname == "app/a.txt"
        assert members[4].gid == 9_999_999
        extracted = tar.extractfile(members[4])
        assert extracted is not None
        assert extracted.read() == b"abc"
