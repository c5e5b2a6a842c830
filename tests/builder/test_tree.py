from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import SourceError, TreeConflictError
from builder.tree import Category, Entry, EntryKind, FileTree, default_mode, normalize_path, sort_key


def f(path: str, data: bytes = b"a", *, origin: str = "contents[0].files[0]", mode: int = 0o644) -> Entry:
    return Entry(path=path, kind=EntryKind.FILE, mode=mode, data=data, size=len(data), origin=origin)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/a/b", "/a/b"), ("a/b", "/a/b"), ("/a//b/./c/", "/a/b/c"), ("/", "/")],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "x: invalid image path ''"),
        ("/a/\x00b", "x: invalid image path '/a/\\x00b'"),
        ("/a/../etc/passwd", "x: image path '/a/../etc/passwd' contains '..'"),
    ],
)
def test_normalize_path_refuses(raw: str, message: str) -> None:
    with pytest.raises(SourceError) as exc:
        normalize_path(raw, what="x")
    assert exc.value.message == message


def test_parents_are_created_and_sorted_first() -> None:
    t = FileTree()
    t.add(f("/usr/lib/x/libz.so"))
    t.add(f("/usr/bin/a"))
    t.add(f("/a-b"))
    paths = [e.path for e in t.entries()]
    assert paths == ["/a-b", "/usr", "/usr/bin", "/usr/bin/a", "/usr/lib", "/usr/lib/x", "/usr/lib/x/libz.so"]
    usr = t.get("/usr")
    assert usr is not None
    assert usr.implicit
    assert usr.mode == 0o755
    assert (usr.uid, usr.gid) == (0, 0)


def test_sort_key_puts_children_right_after_parent() -> None:
    assert sorted(["/a-b", "/a/b", "/a"], key=sort_key) == ["/a", "/a/b", "/a-b"]


def test_identical_claims_are_fine() -> None:
    t = FileTree()
    t.add(f("/etc/x", b"same", origin="contents[0].files[0]"))
    t.add(f("/etc/x", b"same", origin="contents[3].files[1]"))
    assert len(t) == 2


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            f("/etc/x", b"other", origin="contents[2].tree"),
            "/etc/x: claimed by contents[0].files[0] and by contents[2].tree with different content",
        ),
        (
            f("/etc/x", b"same", origin="contents[2].tree", mode=0o600),
            "/etc/x: claimed by contents[0].files[0] and by contents[2].tree "
            "with different mode 0644 vs 0600",
        ),
        (
            Entry(
                path="/etc/x", kind=EntryKind.SYMLINK, mode=0o777, target="y", origin="contents[4].symlink"
            ),
            "/etc/x: claimed by contents[0].files[0] and by contents[4].symlink "
            "with different type file vs symlink",
        ),
        (
            f("/etc/x/inner", origin="contents[5].files[0]"),
            "/etc/x/inner: contents[5].files[0] puts a path beneath the file /etc/x "
            "from contents[0].files[0]",
        ),
    ],
)
def test_conflicts_name_both_sources(second: Entry, message: str) -> None:
    t = FileTree()
    t.add(f("/etc/x", b"same"))
    with pytest.raises(TreeConflictError) as exc:
        t.add(second)
    assert exc.value.message == message
    assert exc.value.hint


def test_beneath_symlink_is_a_conflict() -> None:
    t = FileTree()
    t.add(
        Entry(path="/lib", kind=EntryKind.SYMLINK, mode=0o777, target="usr/lib", origin="contents[0].symlink")
    )
    with pytest.raises(TreeConflictError, match=r"beneath the symlink /lib from contents\[0\].symlink"):
        t.add(f("/lib/libc.so.6", origin="contents[1].closure"))


def test_host_file_content_compared_by_hash(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    t = FileTree()
    t.add(
        Entry(path="/x", kind=EntryKind.FILE, mode=0o644, host_path=a, size=3, origin="contents[0].files[0]")
    )
    with pytest.raises(TreeConflictError, match="different content"):
        t.add(
            Entry(
                path="/x", kind=EntryKind.FILE, mode=0o644, host_path=b, size=3, origin="contents[1].files[0]"
            )
        )


def test_explicit_dir_replaces_implicit_parent_but_two_explicit_must_agree() -> None:
    t = FileTree()
    t.add(f("/data/file"))
    t.add(Entry(path="/data", kind=EntryKind.DIR, mode=0o700, uid=5, gid=5, origin="contents[1].dir"))
    d = t.get("/data")
    assert d is not None
    assert (d.mode, d.uid, d.origin) == (0o700, 5, "contents[1].dir")
    t.add(f("/data/other"))  # an implicit claim yields to the explicit directory
    assert t.get("/data") == d
    with pytest.raises(TreeConflictError, match="different mode 0700 vs 0755"):
        t.add(Entry(path="/data", kind=EntryKind.DIR, mode=0o755, uid=5, gid=5, origin="contents[2].dir"))


def test_root_cannot_be_replaced() -> None:
    with pytest.raises(SourceError, match="cannot replace the image root"):
        FileTree().add(Entry(path="/", kind=EntryKind.DIR, mode=0o755))


@pytest.mark.parametrize(
    ("host_mode", "explicit", "expected"),
    [
        (0o100644, None, 0o644),
        (0o100600, None, 0o644),
        (0o100700, None, 0o755),
        (0o104755, None, 0o755),  # setuid on the host is dropped
        (0o102755, None, 0o755),  # setgid too
        (0o100644, 0o4755, 0o4755),  # but kept when the manifest says so
        (0o100755, 0o600, 0o600),
    ],
)
def test_default_mode(host_mode: int, explicit: int | None, expected: int) -> None:
    assert default_mode(host_mode, explicit=explicit) == expected


def test_category_survives_on_entries() -> None:
    t = FileTree()
    e = t.add(
        Entry(path="usr/lib/l.so", kind=EntryKind.FILE, mode=0o644, data=b"", category=Category.RUNTIME)
    )
    assert e.path == "/usr/lib/l.so"
    assert e.category is Category.RUNTIME
