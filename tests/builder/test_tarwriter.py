from __future__ import annotations

import io
import os
import random
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import BuildError, SourceError
from builder.tarwriter import tar_size, write_tar
from builder.tree import Entry, EntryKind, FileTree
from manifests.digest import Digest

from .helpers import files, manifest, write


def build(entries: list[Entry], mtime: int = 0) -> tuple[bytes, Digest]:
    buf = io.BytesIO()
    stats = write_tar(entries, buf, mtime=mtime)
    assert stats.size == len(buf.getvalue())
    assert tar_size(entries, mtime=mtime) == stats.size
    return buf.getvalue(), stats.diff_id


def test_header_fields_are_normalized(tmp_path: Path) -> None:
    host = write(tmp_path, "f", b"hello", 0o600)
    os.utime(host, (12345, 67890))
    t = FileTree()
    t.add(Entry(path="/a/f", kind=EntryKind.FILE, mode=0o644, uid=7, gid=8, host_path=host, size=5))
    t.add(Entry(path="/a/l", kind=EntryKind.SYMLINK, mode=0o777, target="f"))
    t.add(Entry(path="/a/h", kind=EntryKind.HARDLINK, mode=0o644, uid=7, gid=8, target="/a/f"))
    data, digest = build(list(t.entries()), mtime=1_700_000_000)
    assert digest == Digest.of(data)
    assert len(data) % 512 == 0
    assert data.endswith(b"\0" * 1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["a", "a/f", "a/h", "a/l"]
        for m in members:
            assert (m.uname, m.gname, m.mtime) == ("", "", 1_700_000_000)
            assert not m.pax_headers
        f = tf.getmember("a/f")
        assert (f.mode, f.uid, f.gid, f.size) == (0o644, 7, 8, 5)
        assert tf.extractfile(f).read() == b"hello"  # type: ignore[union-attr]
        assert tf.getmember("a/h").islnk()
        assert tf.getmember("a/h").linkname == "a/f"
        assert tf.getmember("a/l").issym()
        assert tf.getmember("a/l").linkname == "f"
    assert b"a/\0" in data[:100]  # directories carry a trailing slash


def test_pax_only_when_needed() -> None:
    long = "/d/" + "x" * 150
    entries = [
        Entry(path="/d", kind=EntryKind.DIR, mode=0o755),
        Entry(path=long, kind=EntryKind.FILE, mode=0o644, data=b"", size=0),
        Entry(path="/d/é", kind=EntryKind.FILE, mode=0o644, data=b"", size=0),
    ]
    data, _ = build(entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ms = tf.getmembers()
    assert [bool(m.pax_headers) for m in ms] == [False, True, True]
    assert ms[1].name == long[1:]
    assert ms[2].name == "d/é"
    assert data.count(b"././@PaxHeader") == 2


@pytest.mark.parametrize("epoch", [-1, True, 1.5, 8**11])
def test_bad_epoch(epoch: object) -> None:
    with pytest.raises(BuildError, match="source date epoch"):
        write_tar([], io.BytesIO(), mtime=epoch)  # type: ignore[arg-type]


def test_file_changing_size_is_detected(tmp_path: Path) -> None:
    host = write(tmp_path, "f", b"12345")
    e = Entry(
        path="/f", kind=EntryKind.FILE, mode=0o644, host_path=host, size=4, origin="contents[0].files[0]"
    )
    with pytest.raises(SourceError, match="changed size while the image was being built"):
        write_tar([e], io.BytesIO(), mtime=0)


def test_hardlink_must_follow_its_target() -> None:
    e = Entry(path="/h", kind=EntryKind.HARDLINK, mode=0o644, target="/f")
    with pytest.raises(BuildError, match="not earlier in the same layer"):
        write_tar([e], io.BytesIO(), mtime=0)


def test_large_file_streams_with_flat_memory(tmp_path: Path) -> None:
    host = tmp_path / "big"
    with open(host, "wb") as fh:
        fh.truncate(64 << 20)  # sparse 64 MiB
    e = Entry(path="/big", kind=EntryKind.FILE, mode=0o644, host_path=host, size=64 << 20)

    class Counter:
        n = 0
        biggest = 0

        def write(self, data: bytes) -> None:
            self.n += len(data)
            self.biggest = max(self.biggest, len(data))

    sink = Counter()
    stats = write_tar([e], sink, mtime=0)
    assert sink.n == stats.size == 512 + (64 << 20) + 1024
    assert sink.biggest <= 1 << 20
    assert stats.files[0].size == 64 << 20


def _host_tree(base: Path) -> None:
    write(base, "app/bin/run", "#!/bin/sh\necho hi\n", 0o755)
    write(base, "app/data/a.txt", "a" * 3000, 0o600)
    write(base, "app/data/b.txt", "b", 0o664)
    os.symlink("a.txt", base / "app/data/link")


def _layer_bytes(base: Path) -> bytes:
    from builder.sources import assemble

    m = manifest(base, files(("app/", "/app/")))
    buf = io.BytesIO()
    write_tar(assemble(m).tree.entries(), buf, mtime=0)
    return buf.getvalue()


def test_same_bytes_under_different_umask_tz_mtimes_and_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "checkout-one"
    old = os.umask(0o022)
    try:
        _host_tree(first)
        a = _layer_bytes(first)
        second = tmp_path / "elsewhere" / "checkout-two"
        os.umask(0o077)
        monkeypatch.setenv("TZ", "Pacific/Kiritimati")
        time.tzset()
        _host_tree(second)
        for p in second.rglob("*"):
            os.utime(p, (987654321, 123456789), follow_symlinks=False)
        (second / "app/data/a.txt").chmod(0o640)
        b = _layer_bytes(second)
    finally:
        os.umask(old)
        monkeypatch.delenv("TZ")
        time.tzset()
    assert a == b


names = st.text(alphabet="abcxyz-_.é0", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
long_names = st.text(alphabet="ab", min_size=90, max_size=120)


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    t = FileTree()
    dirs = ["/"]
    n = draw(st.integers(min_value=1, max_value=25))
    files_seen: list[str] = []
    for _ in range(n):
        parent = draw(st.sampled_from(dirs))
        name = draw(st.one_of(names, long_names))
        path = (parent.rstrip("/") + "/" + name) if parent != "/" else "/" + name
        if t.get(path) is not None or any(path.startswith(f + "/") for f in files_seen):
            continue
        if path in dirs or any(d.startswith(path + "/") for d in dirs):
            continue
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]))
        mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o1777]))
        uid = draw(st.integers(min_value=0, max_value=70000))
        if kind == "file":
            data = draw(st.binary(max_size=1500))
            t.add(
                Entry(path=path, kind=EntryKind.FILE, mode=mode, uid=uid, gid=uid, data=data, size=len(data))
            )
            files_seen.append(path)
        elif kind == "dir":
            t.add(Entry(path=path, kind=EntryKind.DIR, mode=mode, uid=uid, gid=uid, origin="x"))
            dirs.append(path)
        elif kind == "symlink":
            target = draw(st.one_of(names, long_names.map(lambda s: "../" + s)))
            t.add(Entry(path=path, kind=EntryKind.SYMLINK, mode=0o777, uid=uid, gid=uid, target=target))
            files_seen.append(path)
        elif files_seen:
            target = draw(st.sampled_from(files_seen))
            tgt = t.get(target)
            if tgt is None or tgt.kind is not EntryKind.FILE or sorted([target, path])[0] != target:
                continue
            t.add(Entry(path=path, kind=EntryKind.HARDLINK, mode=tgt.mode, uid=uid, gid=uid, target=target))
            files_seen.append(path)
    return list(t.entries())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.integers(min_value=0, max_value=2**33 - 1))
def test_tar_roundtrip_property(entries: list[Entry], mtime: int) -> None:
    entries = [e for e in entries if e.kind is not EntryKind.HARDLINK or _before(entries, e)]
    data, _digest = build(entries, mtime)
    assert build(entries, mtime)[0] == data  # stable
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        assert len(members) == len(entries)
        for e, m in zip(entries, members, strict=True):
            assert "/" + m.name == e.path
            assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) == (e.mode, e.uid, e.gid, mtime, "", "")
            if e.kind is EntryKind.FILE:
                assert m.isreg()
                assert m.size == e.size
                assert tf.extractfile(m).read() == e.data  # type: ignore[union-attr]
            elif e.kind is EntryKind.DIR:
                assert m.isdir()
            elif e.kind is EntryKind.SYMLINK:
                assert m.issym()
                assert m.linkname == e.target
            else:
                assert m.islnk()
                assert "/" + m.linkname == e.target


def _before(entries: list[Entry], link: Entry) -> bool:
    paths = [e.path for e in entries]
    return link.target in paths and paths.index(link.target) < paths.index(link.path)  # type: ignore[arg-type]


def _hash_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "kiln-file-hash"]


def test_large_and_small_files_get_their_own_digests_in_entry_order(tmp_path: Path) -> None:
    # Files from 256 KiB up are hashed on a helper thread while the tar goes on; small ones here.
    # Each record must still carry its own file's digests, in the entries' order, hard links too.
    import hashlib

    rnd = random.Random(7)
    contents = {
        "/a-big": rnd.randbytes(3 << 20 | 123),
        "/b-small": b"small file",
        "/c-edge": rnd.randbytes(256 << 10),  # exactly the threshold
        "/d-below": rnd.randbytes((256 << 10) - 1),
        "/e-big": rnd.randbytes(1 << 20),
    }
    entries = []
    for path, data in contents.items():
        host = write(tmp_path, path.lstrip("/"), data)
        entries.append(Entry(path=path, kind=EntryKind.FILE, mode=0o644, host_path=host, size=len(data)))
    entries.insert(2, Entry(path="/link-to-big", kind=EntryKind.HARDLINK, mode=0o644, target="/a-big"))
    entries.append(Entry(path="/link-to-small", kind=EntryKind.HARDLINK, mode=0o644, target="/b-small"))
    stats = write_tar(entries, io.BytesIO(), mtime=0)
    expected = [
        (path, contents[source])
        for path, source in [
            ("/a-big", "/a-big"), ("/b-small", "/b-small"), ("/link-to-big", "/a-big"),
            ("/c-edge", "/c-edge"), ("/d-below", "/d-below"), ("/e-big", "/e-big"),
            ("/link-to-small", "/b-small"),
        ]
    ]  # fmt: skip
    assert [f.path for f in stats.files] == [p for p, _ in expected]
    for record, (_, data) in zip(stats.files, expected, strict=True):
        assert record.sha256 == Digest(hashlib.sha256(data).hexdigest()), record.path
        assert record.sha1 == hashlib.sha1(data, usedforsecurity=False).hexdigest(), record.path
        assert record.size == len(data)
    assert _hash_threads() == []


def test_a_large_file_shrinking_stops_the_hash_thread_too(tmp_path: Path) -> None:
    big = write(tmp_path, "big", b"x" * (2 << 20))
    entries = [
        Entry(
            path="/big", kind=EntryKind.FILE, mode=0o644, host_path=big, size=3 << 20, origin="contents[0]"
        ),
    ]
    with pytest.raises(SourceError, match="changed size"):
        write_tar(entries, io.BytesIO(), mtime=0)
    assert _hash_threads() == []


def test_a_failing_sink_stops_the_hash_thread(tmp_path: Path) -> None:
    big = write(tmp_path, "big", b"y" * (4 << 20))

    class Full:  # room for a MiB and a half: the helper thread is hashing by then
        room = 3 << 19

        def write(self, data: bytes) -> None:
            self.room -= len(data)
            if self.room < 0:
                assert _hash_threads() == ["kiln-file-hash"]
                raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_tar(
            [Entry(path="/big", kind=EntryKind.FILE, mode=0o644, host_path=big, size=4 << 20)],
            Full(),
            mtime=0,
        )
    assert _hash_threads() == []


@pytest.mark.parametrize("size", [10, 1 << 20], ids=["small", "large"])
def test_an_unreadable_source_is_named_with_its_origin(tmp_path: Path, size: int) -> None:
    folder = tmp_path / "dir-not-file"
    folder.mkdir()  # opens, but reading it fails (EISDIR), as a file gone bad would
    e = Entry(path="/f", kind=EntryKind.FILE, mode=0o644, host_path=folder, size=size, origin="contents[2]")
    with pytest.raises(SourceError, match=r"contents\[2\]: cannot read .*dir-not-file: Is a directory"):
        write_tar([e], io.BytesIO(), mtime=0)
    missing = Entry(
        path="/g",
        kind=EntryKind.FILE,
        mode=0o644,
        host_path=tmp_path / "gone",
        size=size,
        origin="contents[3]",
    )
    with pytest.raises(SourceError, match=r"contents\[3\]: cannot read .*gone: No such file"):
        write_tar([missing], io.BytesIO(), mtime=0)
    assert _hash_threads() == []


def test_the_helper_thread_finishes_each_large_file_and_drops_its_hash_state() -> None:
    import hashlib

    from builder.tarwriter import _FileHashing, _Hashes

    data = os.urandom(300 << 10)
    first, second = _Hashes(len(data), offloaded=True), _Hashes(len(data), offloaded=True)
    hashing = _FileHashing()
    hashing.update(first, data[:1000], False)
    hashing.update(first, data[1000:], True)
    hashing.update(second, data, False)  # not told it was the last chunk: finished on record()
    hashing.close()
    assert first.sha256 is None  # a layer of many files keeps strings only
    assert first.sha1 is None
    assert first.hex256 == hashlib.sha256(data).hexdigest()
    assert first.hex1 == hashlib.sha1(data, usedforsecurity=False).hexdigest()
    assert second.sha256 is not None
    rec = second.record("/f")
    assert (rec.sha256, rec.sha1) == (Digest(hashlib.sha256(data).hexdigest()), first.hex1)


def test_write_tar_has_the_helper_thread_finish_a_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from builder import tarwriter

    big = write(tmp_path, "big", os.urandom(3 << 20))  # three chunks: the last one is flagged
    finished_on: list[str] = []
    finish = tarwriter._Hashes.finish

    def spy(self: tarwriter._Hashes) -> None:
        if self.sha256 is not None:
            finished_on.append(threading.current_thread().name)
        finish(self)

    monkeypatch.setattr(tarwriter._Hashes, "finish", spy)
    stats = write_tar(
        [Entry(path="/big", kind=EntryKind.FILE, mode=0o644, host_path=big, size=3 << 20)],
        io.BytesIO(),
        mtime=0,
    )
    assert finished_on == ["kiln-file-hash"]  # not left to record() on the writing thread
    assert stats.files[0].sha256 == Digest.of(big.read_bytes())
