from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from builder.errors import SourceError, TreeConflictError
from builder.sources import assemble, category_for, compile_glob
from builder.tree import Category, EntryKind
from manifests.image import ClosureSource, DirSource, SymlinkSource, TreeSource

from .helpers import files, manifest, write


def paths(m) -> dict[str, tuple[str, str, int, int]]:  # type: ignore[no-untyped-def]
    return {e.path: (e.kind.value, f"{e.mode:04o}", e.uid, e.gid) for e in assemble(m).tree.entries()}


def test_files_modes_and_relative_inputs(tmp_path: Path) -> None:
    write(tmp_path, "bin/app", "#!/bin/sh\n", 0o700)
    write(tmp_path, "conf/app.toml", "x=1", 0o600)
    write(tmp_path, "bin/suid", "x", 0o4755)
    m = manifest(
        tmp_path,
        files(("bin/app", "/app/bin/app"), ("conf/app.toml", "/etc/app/"), ("bin/suid", "/app/suid")),
        files(("bin/suid", "/app/suid-kept"), mode=0o4755),
    )
    a = assemble(m)
    got = {e.path: (e.kind.value, e.mode) for e in a.tree.entries()}
    assert got["/app/bin/app"] == ("file", 0o755)
    assert got["/etc/app/app.toml"] == ("file", 0o644)
    assert got["/app/suid"] == ("file", 0o755)  # setuid dropped without an explicit mode
    assert got["/app/suid-kept"] == ("file", 0o4755)
    assert [(i.origin, i.kind, i.path) for i in a.inputs] == [
        ("contents[0].files[0]", "files", "bin/app"),
        ("contents[0].files[1]", "files", "conf/app.toml"),
        ("contents[0].files[2]", "files", "bin/suid"),
        ("contents[1].files[0]", "files", "bin/suid"),
    ]
    app = a.tree.get("/app/bin/app")
    assert app is not None
    assert app.origin == "contents[0].files[0]"
    assert app.category is Category.APP


def test_accounts_and_runtime_dirs(tmp_path: Path) -> None:
    m = manifest(tmp_path, writable=("/tmp", "/var/cache/app"), volumes=("/data",))
    p = paths(m)
    assert p["/tmp"] == ("dir", "1777", 0, 0)
    assert p["/var/cache/app"] == ("dir", "0755", 1000, 1000)
    assert p["/data"] == ("dir", "0755", 1000, 1000)
    tree = assemble(m).tree
    passwd = tree.get("/etc/passwd")
    group = tree.get("/etc/group")
    assert passwd is not None
    assert passwd.data == (
        b"root:x:0:0:root:/root:/sbin/nologin\napp:x:1000:1000::/nonexistent:/sbin/nologin\n"
    )
    assert group is not None
    assert group.data == b"root:x:0:\napp:x:1000:\n"


def test_existing_volume_dir_is_kept(tmp_path: Path) -> None:
    m = manifest(tmp_path, DirSource(path="/data", mode=0o700, uid=7, gid=7), volumes=("/data",))
    assert paths(m)["/data"] == ("dir", "0700", 7, 7)


def test_volume_on_a_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "f")
    m = manifest(tmp_path, files(("f", "/data")), volumes=("/data",))
    with pytest.raises(SourceError, match=r"volumes\[0\]: /data is a file from contents\[0\].files\[0\]"):
        assemble(m)


def test_tree_globs_symlinks_and_hardlinks(tmp_path: Path) -> None:
    src = tmp_path / "site"
    write(src, "index.html", "<h1>")
    write(src, "a/b/deep.html", "deep")
    write(src, "a/b/deep.pyc", "junk")
    write(src, "a/skip/x.html", "x")
    write(src, "notes.txt", "n")
    os.link(src / "index.html", src / "a" / "copy.html")
    os.symlink("index.html", src / "link.html")
    m = manifest(
        tmp_path,
        TreeSource(src="site", dst="/srv/www", include=("**/*.html",), exclude=("a/skip", "**/*.pyc")),
        accounts=None,
    )
    a = assemble(m)
    got = {e.path: e for e in a.tree.entries()}
    assert sorted(p for p in got if p.startswith("/srv/www/")) == [
        "/srv/www/a",
        "/srv/www/a/b",
        "/srv/www/a/b/deep.html",
        "/srv/www/a/copy.html",
        "/srv/www/index.html",
        "/srv/www/link.html",
    ]
    # the hard link group's leader is the path that sorts first
    assert got["/srv/www/a/copy.html"].kind is EntryKind.FILE
    assert got["/srv/www/index.html"].kind is EntryKind.HARDLINK
    assert got["/srv/www/index.html"].target == "/srv/www/a/copy.html"
    assert got["/srv/www/link.html"].kind is EntryKind.SYMLINK
    assert got["/srv/www/link.html"].target == "index.html"
    assert a.inputs[0].path == str(src.resolve())


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("**/*.py", ["a.py", "x/y/a.py"], ["a.pyc", "x/a.py/b"]),
        ("*.py", ["a.py"], ["x/a.py"]),
        ("lib/**", ["lib/a", "lib/a/b"], ["lib", "other/lib/a"]),
        ("a?c", ["abc"], ["a/c", "abbc"]),
        ("[!a]x", ["bx"], ["ax"]),
        ("x/**/y", ["x/y", "x/a/b/y"], ["x/ay"]),
    ],
)
def test_glob(pattern: str, yes: list[str], no: list[str]) -> None:
    rx = compile_glob(pattern)
    assert all(rx.match(p) for p in yes)
    assert not any(rx.match(p) for p in no)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/usr/lib/x/libc.so", Category.RUNTIME),
        ("/lib64", Category.RUNTIME),
        ("/usr/lib64/ld.so", Category.RUNTIME),
        ("/usr/share/zoneinfo", Category.RUNTIME),
        ("/library", Category.APP),
        ("/usr/libfoo", Category.APP),
        ("/app", Category.APP),
    ],
)
def test_category_for(path: str, expected: Category) -> None:
    assert category_for(path, default=Category.APP) is expected


def test_missing_inputs_name_the_item(tmp_path: Path) -> None:
    m = manifest(tmp_path, files(("nope", "/x")))
    with pytest.raises(SourceError) as exc:
        assemble(m)
    # Reported at the manifest's file (an in-memory manifest has no line and column to give).
    hint = f"paths in 'files' are relative to the manifest directory {tmp_path}"
    assert exc.value.message == (
        f"{m.source}: contents[0].files[0].src: {tmp_path}/nope: no such file or directory ({hint})"
    )
    assert exc.value.problems[0].path == "contents[0].files[0].src"
    m = manifest(tmp_path, DirSource(path="/d"), TreeSource(src="missing", dst="/x"))
    with pytest.raises(SourceError) as exc:
        assemble(m)
    hint = f"tree sources are directories, relative to the manifest directory {tmp_path}"
    assert (
        exc.value.message
        == f"{m.source}: contents[1].tree.src: {tmp_path}/missing: no such directory ({hint})"
    )


def test_special_files_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SourceError, match=r"contents\[0\].tree: .*/fifo: is a fifo"):
        assemble(manifest(tmp_path, TreeSource(src=".", dst="/x")))
    (tmp_path / "fifo").unlink()
    short = Path("/tmp") / f"kiln-sock-{os.getpid()}"
    short.mkdir()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(short / "s"))
            with pytest.raises(SourceError, match="is a socket"):
                assemble(manifest(short, TreeSource(src=".", dst="/x")))
    finally:
        (short / "s").unlink()
        short.rmdir()


def test_conflict_between_items(tmp_path: Path) -> None:
    write(tmp_path, "a", "1")
    write(tmp_path, "b", "2")
    m = manifest(
        tmp_path, files(("a", "/etc/x")), SymlinkSource(path="/etc", target="/"), files(("b", "/etc/x"))
    )
    with pytest.raises(TreeConflictError, match=r"contents\[1\].symlink"):
        assemble(m)


def test_closure(tmp_path: Path) -> None:
    elf = pytest.importorskip("builder.elf", reason="builder/elf.py (the ELF closure resolver) is missing")
    del elf
    if not Path("/bin/true").exists():
        pytest.skip("no /bin/true on this host")
    m = manifest(tmp_path, ClosureSource(paths=("/bin/true",)), accounts=None)
    a = assemble(m)
    runtime = [e for e in a.tree.entries() if e.kind is EntryKind.FILE]
    assert runtime
    assert all(e.category is Category.RUNTIME for e in runtime)
    assert any(e.path.endswith("/libc.so.6") for e in runtime)
    assert all(i.kind == "closure" and i.path.startswith("/") for i in a.inputs)


def test_a_files_src_says_with_its_trailing_slash_whether_it_is_a_directory(tmp_path: Path) -> None:
    write(tmp_path, "dir/a.txt", "a")
    write(tmp_path, "file.txt", "f")
    assert "/d/a.txt" in paths(manifest(tmp_path, files(("dir/", "/d/"))))
    assert "/d/file.txt" in paths(manifest(tmp_path, files(("file.txt", "/d/"))))
    with pytest.raises(SourceError, match=r"dir: is a directory, and src does not end in '/'") as exc:
        assemble(manifest(tmp_path, files(("dir", "/d"))))
    assert "kiln.yaml: contents[0].files[0].src: " in str(exc.value)  # where the manifest says it
    assert "(write src: dir/ to copy the directory's contents)" in str(exc.value)
    with pytest.raises(SourceError, match=r"file.txt: is not a directory, but src ends in '/'") as exc:
        assemble(manifest(tmp_path, files(("file.txt/", "/d/"))))
    assert "(write src: file.txt to copy the file)" in str(exc.value)


def test_a_special_file_under_a_files_directory_gets_a_hint_files_can_follow(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    os.mkfifo(tmp_path / "app/fifo")
    with pytest.raises(SourceError, match="is a fifo") as exc:
        assemble(manifest(tmp_path, files(("app/", "/app/"))))
    assert exc.value.hint is not None
    assert "tree source" in exc.value.hint  # files entries have no 'exclude' to use
    with pytest.raises(SourceError, match="is a fifo") as exc:
        assemble(manifest(tmp_path, TreeSource(src="app", dst="/app")))
    assert exc.value.hint == "exclude it with an 'exclude' glob"
