"""Baked CPython bytecode (builder/bytecode.py, ADR 0023): the image's own interpreter compiles
every .py into an unchecked-hash .pyc named for the image path, the same bytes as CPython's own
py_compile makes, whatever the build's environment; mismatches and untrusted interpreters refused."""

from __future__ import annotations

import hashlib
import marshal
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder import bytecode
from builder.build import build_image
from builder.bytecode import ANNOTATION, add_bytecode
from builder.errors import BuildError
from builder.tree import Entry, EntryKind, FileTree
from manifests.errors import ManifestError
from manifests.image import ClosureSource, PythonPolicy
from manifests.image_parse import parse_image_manifest
from manifests.layout import OCILayout
from manifests.oci import OCIManifest

from .helpers import files, manifest, write

PY = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
pytestmark = pytest.mark.skipif(not (PY.exists() and STDLIB.is_dir()), reason="needs Debian's python3.11")


def _tree(
    tmp_path: Path,
    *,
    stdlib: str = "/usr/lib/python3.11",
    origin: str = "contents[0].closure",
    interpreter: Path = PY,
) -> FileTree:
    tree = FileTree()
    tree.add(
        Entry(
            path="/usr/bin/python3.11",
            kind=EntryKind.FILE,
            mode=0o755,
            size=1,
            host_path=interpreter,
            origin=origin,
        )
    )
    for rel in ("importlib/_bootstrap_external.py", "os.py", "json/decoder.py"):
        tree.add(
            Entry(path=f"{stdlib}/{rel}", kind=EntryKind.FILE, mode=0o644, size=1, host_path=STDLIB / rel)
        )
    bad = write(tmp_path, "bad.py", "print 'python 2'\n")
    app = write(tmp_path, "app.py", "import os\nKEYS = {'a', 'b', 'c', 'd'}\ndef f():\n    return 1\n")
    tree.add(Entry(path="/app/bad.py", kind=EntryKind.FILE, mode=0o644, size=1, host_path=bad))
    tree.add(
        Entry(path="/app/server.py", kind=EntryKind.FILE, mode=0o644, uid=7, gid=8, size=1, host_path=app)
    )
    return tree


def _reference(src: Path, dfile: str, tmp_path: Path, optimize: int = 0) -> bytes:
    """The same file compiled by CPython's own py_compile, on the host's python3.11."""
    out = tmp_path / "ref.pyc"
    code = (
        "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], "
        "doraise=True, optimize=int(sys.argv[4]), "
        "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"
    )
    subprocess.run(
        [str(PY), "-S", "-c", code, str(src), str(out), dfile, str(optimize)],
        check=True,
        env={"PYTHONHASHSEED": "0"},
    )
    return out.read_bytes()


def test_pycs_match_py_compile_and_name_in_image_paths(tmp_path: Path) -> None:
    bytecode._MEMO.clear()
    tree = _tree(tmp_path)
    done = add_bytecode(tree)
    assert done.tag.startswith("cpython-3.11.")
    assert done.tag.endswith("/magic-3495/unchecked-hash/opt-0")
    assert done.skipped == ("/app/bad.py",)
    assert done.compiled == 4
    pyc = tree.get("/app/__pycache__/server.cpython-311.pyc")
    assert pyc is not None
    assert pyc.data is not None
    assert (pyc.uid, pyc.gid, pyc.mode) == (7, 8, 0o644)
    assert pyc.data[4:8] == b"\x01\x00\x00\x00"  # PEP 552: hash-based, unchecked
    assert marshal.loads(pyc.data[16:]).co_filename == "/app/server.py"  # noqa: S302 - our own output
    assert pyc.data == _reference(tmp_path / "app.py", "/app/server.py", tmp_path)
    osp = tree.get("/usr/lib/python3.11/__pycache__/os.cpython-311.pyc")
    assert osp is not None
    assert osp.data == _reference(STDLIB / "os.py", "/usr/lib/python3.11/os.py", tmp_path)
    assert tree.get("/app/__pycache__/bad.cpython-311.pyc") is None


def test_same_bytes_whatever_the_build_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bytecode._MEMO.clear()
    first = _tree(tmp_path / "a")
    add_bytecode(first, optimize=1)
    bytecode._MEMO.clear()
    # Another checkout (path, mtimes), another hash seed, TZ, umask and working directory.
    shutil.copytree(tmp_path / "a", tmp_path / "b" / "deeper")
    for p in (tmp_path / "b" / "deeper").iterdir():
        os.utime(p, (1_000_000_000, 1_000_000_000))
    monkeypatch.setenv("PYTHONHASHSEED", "12345")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o077)
    try:
        second = _tree(tmp_path / "b" / "deeper")
        add_bytecode(second, optimize=1)
    finally:
        os.umask(old)
    name = "/app/__pycache__/server.cpython-311.opt-1.pyc"
    a, b = first.get(name), second.get(name)
    assert a is not None
    assert b is not None
    assert a.data == b.data
    assert [(e.path, e.data) for e in first.entries()] == [(e.path, e.data) for e in second.entries()]


def test_disk_cache_reuses_and_survives_a_new_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bytecode._MEMO.clear()
    cache = tmp_path / "cache"
    first = _tree(tmp_path)
    done = add_bytecode(first, cache_dir=cache)
    stored = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(stored) == 6  # four pycs, one refusal and the interpreter's facts
    bytecode._MEMO.clear()  # a new process: only the disk cache is left
    # Everything is cached, so no program runs (a build that runs one gets no warm-run record).
    ran: list[object] = []
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a) or pytest.fail("ran"))
    second = _tree(tmp_path)
    again = add_bytecode(second, cache_dir=cache)
    assert ran == []
    assert again == done
    assert [(e.path, e.data) for e in first.entries()] == [(e.path, e.data) for e in second.entries()]


@pytest.mark.parametrize("damage", ["empty", "one byte", "truncated", "flipped"])
def test_a_damaged_disk_cache_entry_is_a_miss_not_a_dropped_pyc(tmp_path: Path, damage: str) -> None:
    bytecode._MEMO.clear()
    cache = tmp_path / "cache"
    first = _tree(tmp_path)
    add_bytecode(first, cache_dir=cache)
    for p in (p for p in cache.rglob("*") if p.is_file()):
        data = p.read_bytes()
        cut = {"empty": b"", "one byte": data[:1], "truncated": data[: len(data) // 2]}
        p.write_bytes(cut.get(damage, data[:-1] + bytes([data[-1] ^ 1])))
    bytecode._MEMO.clear()
    second = _tree(tmp_path)
    done = add_bytecode(second, cache_dir=cache)
    assert (done.compiled, done.skipped) == (4, ("/app/bad.py",))
    assert [(e.path, e.data) for e in first.entries()] == [(e.path, e.data) for e in second.entries()]


def test_the_disk_cache_key_holds_the_compiler_and_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another compiler script, flags or cache format never reuses the pycs of the old one."""
    assert (
        hashlib.sha256(
            repr((bytecode._CACHE_FORMAT, bytecode._FLAGS, bytecode._COMPILER)).encode()
        ).hexdigest()
        == bytecode._CACHE_VERSION
    )
    bytecode._MEMO.clear()
    cache = tmp_path / "cache"
    add_bytecode(_tree(tmp_path), cache_dir=cache)
    assert len([p for p in cache.rglob("*") if p.is_file()]) == 6  # 4 pycs, a refusal, the facts
    bytecode._MEMO.clear()
    monkeypatch.setattr(bytecode, "_CACHE_VERSION", "another compiler")
    add_bytecode(_tree(tmp_path), cache_dir=cache)
    assert len([p for p in cache.rglob("*") if p.is_file()]) == 12


def test_interpreter_must_match_the_stdlib(tmp_path: Path) -> None:
    bytecode._MEMO.clear()
    tree = _tree(tmp_path, stdlib="/usr/lib/python3.12")
    tree.add(Entry(path="/usr/bin/python3.12", kind=EntryKind.SYMLINK, mode=0o777, target="python3.11"))
    with pytest.raises(
        BuildError, match=r"is cpython 3\.11\.\d+, but its standard library is /usr/lib/python3\.12"
    ):
        add_bytecode(tree)


def test_interpreter_from_a_debian_package_is_not_run(tmp_path: Path) -> None:
    tree = _tree(tmp_path, origin="contents[0].debian")
    with pytest.raises(BuildError, match="only a closure source's host interpreter is run"):
        add_bytecode(tree)


def test_a_script_planted_as_the_interpreter_by_a_files_source_is_refused_and_not_run(tmp_path: Path) -> None:
    """A ``files`` source from the checkout puts a script at /usr/bin/python3.11: the build stops,
    naming the path and why, and the script never runs on the build host."""
    bytecode._MEMO.clear()
    marker = tmp_path / "ran"
    fake = write(tmp_path, "python3.11", f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    write(tmp_path, "app/server.py", "print('hi')\n")
    m = manifest(
        tmp_path,
        files(("python3.11", "/usr/bin/python3.11")),
        files(
            (
                "/usr/lib/python3.11/importlib/_bootstrap_external.py",
                "/usr/lib/python3.11/importlib/_bootstrap_external.py",
            )
        ),
        files(("app/server.py", "/app/server.py")),
        entrypoint=("/usr/bin/python3.11", "/app/server.py"),
        python=PythonPolicy(bytecode=True),
    )
    with pytest.raises(
        BuildError, match=r"interpreter /usr/bin/python3\.11 \(contents\[0\]\.files\[0\].*not run"
    ):
        build_image(m, output=tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("checkout", "is not in a system directory"),  # a closure resolved in a sysroot of the checkout
        ("script", "is not an ELF executable"),
    ],
)
def test_a_closure_interpreter_outside_the_system_or_not_elf_is_refused(
    tmp_path: Path, where: str, why: str
) -> None:
    marker = tmp_path / "ran"
    fake = write(tmp_path, "python3.11", f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    host = fake
    if where == "script":
        host = Path("/usr/bin/ldd")  # a root-owned shell script in /usr/bin
        assert host.read_bytes()[:2] == b"#!"
    tree = _tree(tmp_path, interpreter=host)
    with pytest.raises(BuildError, match=re.escape(why)):
        add_bytecode(tree)
    assert not marker.exists()


def test_the_interpreter_runs_isolated_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'' (the working directory) is not on the compiler's sys.path: a struct.py there is not
    imported, and the stdlib it imports is the host's (checked after the run)."""
    bytecode._MEMO.clear()
    marker = tmp_path / "ran"
    write(tmp_path / "cwd", "struct.py", f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path / "cwd")
    add_bytecode(_tree(tmp_path))
    assert not marker.exists()
    info = bytecode._MEMO[next(k for k in bytecode._MEMO if k[-1] == "info")][0]
    assert info.endswith("\n/usr/lib/python3.11/importlib/util.py")


def test_no_stdlib_is_a_clear_error(tmp_path: Path) -> None:
    tree = FileTree()
    tree.add(Entry(path="/app/x.py", kind=EntryKind.FILE, mode=0o644, size=1, data=b"x = 1\n"))
    with pytest.raises(BuildError, match="no CPython standard library"):
        add_bytecode(tree)


def test_oci_build_records_the_compiler(tmp_path: Path) -> None:
    bytecode._MEMO.clear()
    write(tmp_path, "app/server.py", "print('hi')\n")
    m = manifest(
        tmp_path,
        ClosureSource(paths=(str(PY),)),
        files(
            (
                "/usr/lib/python3.11/importlib/_bootstrap_external.py",
                "/usr/lib/python3.11/importlib/_bootstrap_external.py",
            )
        ),
        files(("app/server.py", "/app/server.py")),
        entrypoint=("/usr/bin/python3.11", "/app/server.py"),
        python=PythonPolicy(bytecode=True),
    )
    build_image(m, output=tmp_path / "out")
    layout = OCILayout.open(tmp_path / "out")
    man = OCIManifest.from_bytes(layout.read_blob(layout.resolve(None).digest))
    assert man.annotations[ANNOTATION].startswith("cpython-3.11.")
    plain = manifest(tmp_path, files(("app/server.py", "/app/server.py")), entrypoint=("/app/server.py",))
    build_image(plain, output=tmp_path / "plain")
    layout = OCILayout.open(tmp_path / "plain")
    assert ANNOTATION not in OCIManifest.from_bytes(layout.read_blob(layout.resolve(None).digest)).annotations


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("python: {bytecode: yes please}", "python.bytecode"),
        ("python: {bytecode: true, optimize: 3}", "python.optimize: out of range (0 to 2)"),
        ("python: {bytcode: true}", "bytcode"),
    ],
)
def test_manifest_python_section_is_checked(tmp_path: Path, text: str, message: str) -> None:
    doc = (
        "apiVersion: kiln.dev/v1\nkind: Image\nname: x\nversion: 1.0.0\n"
        "contents:\n  - files: [{src: a, dst: /a}]\nentrypoint: [/a]\n" + text + "\n"
    )
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_image_manifest(doc.encode(), source="x.yaml", base_dir=tmp_path, fmt="yaml")
    ok = parse_image_manifest(
        doc.encode().replace(text.encode(), b"python: {bytecode: true, optimize: 2}"),
        source="x.yaml",
        base_dir=tmp_path,
        fmt="yaml",
    )
    assert ok.python == PythonPolicy(bytecode=True, optimize=2)
