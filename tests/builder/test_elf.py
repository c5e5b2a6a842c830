"""ELF closure resolution: real host binaries, tiny programs built with gcc, hostile sysroots."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from builder.dpkg import DpkgIndex, owning_package
from builder.elf import (
    Closure,
    ClosureFile,
    ClosureSymlink,
    resolve_closure,
)
from builder.elf import Sysroot as _Sysroot
from builder.errors import ClosureError
from manifests.image_parse import load_image_manifest

DATA = Path(__file__).parent.parent / "data" / "elf"
HOST_LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
IS_X86_64_DEBIAN = (HOST_LIBDIR / "libc.so.6").is_file() and Path("/lib64/ld-linux-x86-64.so.2").exists()
DEFAULTS = "/lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib, /lib64, /usr/lib64"

needs_host_libc = pytest.mark.skipif(not IS_X86_64_DEBIAN, reason="needs an x86_64 Debian host C library")


def _files(closure: Closure) -> dict[str, ClosureFile]:
    return {f.image_path: f for f in closure.files}


def _links(closure: Closure) -> dict[str, str]:
    return {s.image_path: s.target for s in closure.symlinks}


# --------------------------------------------------------------------------------------------
# Real host binaries


@needs_host_libc
@pytest.mark.skipif(not Path("/usr/bin/python3.11").is_file(), reason="python3.11 is not installed")
def test_python311_closure_on_the_host() -> None:
    closure = resolve_closure(["/usr/bin/python3.11"], Path("/"))
    files = _files(closure)
    by_soname = {f.soname: f for f in closure.files if f.soname}
    assert files["/usr/bin/python3.11"].role == "executable"
    for soname in ("libc.so.6", "libm.so.6", "libz.so.1", "libexpat.so.1"):
        assert by_soname[soname].role == "library", soname
        assert "/usr/bin/python3.11" in by_soname[soname].needed_by
    interp = by_soname["ld-linux-x86-64.so.2"]
    assert interp.role == "interpreter"
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in interp.needed_by
    # Every file is a regular file at a symlink-free path.
    for f in closure.files:
        assert f.host_path.is_file()
        assert not f.host_path.is_symlink()
        assert os.path.realpath(f.host_path) == str(f.host_path)
    # The /lib64 chain to the interpreter is reproduced link by link.
    links = _links(closure)
    assert links["/lib64"] == os.readlink("/lib64")
    assert links["/usr/lib64/ld-linux-x86-64.so.2"] == os.readlink("/usr/lib64/ld-linux-x86-64.so.2")
    if Path("/lib").is_symlink():
        assert links["/lib"] == os.readlink("/lib")
    assert [f.image_path for f in closure.files] == sorted(files)
    assert list(closure.symlinks) == sorted(set(closure.symlinks))
    assert len(closure.files) == 6


@pytest.mark.skipif(not Path("/usr/bin/busybox").is_file(), reason="busybox-static is not installed")
def test_static_busybox_closure_is_just_itself() -> None:
    closure = resolve_closure(["/bin/busybox"], Path("/"))
    assert closure.files == (
        ClosureFile(image_path="/usr/bin/busybox", host_path=Path("/usr/bin/busybox"), role="executable"),
    )
    expected_links = (
        (ClosureSymlink(image_path="/bin", target="usr/bin"),) if Path("/bin").is_symlink() else ()
    )
    assert closure.symlinks == expected_links


@needs_host_libc
def test_owning_package_on_the_host() -> None:
    libc = owning_package(HOST_LIBDIR / "libc.so.6")
    assert libc is not None
    assert libc.startswith("libc6:amd64 2.")
    assert owning_package(Path("/nonexistent/file")) is None


# --------------------------------------------------------------------------------------------
# Tiny programs compiled with gcc


def _require_gcc() -> None:
    if shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is required when CI=true")
        pytest.skip("gcc is not installed")


def _gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", "-O1", "-o", *[str(a) for a in args]], check=True, capture_output=True)


def _patch_debug_to_runpath(path: Path, skip: int) -> None:
    """Turn DT_DEBUG into DT_RUNPATH pointing ``skip`` bytes into the DT_RPATH string."""
    with path.open("r+b") as fh:
        elf = ELFFile(fh)
        dyn = next(s for s in elf.iter_segments() if isinstance(s, DynamicSegment))
        tags = list(dyn.iter_tags())
        rpath = next(t for t in tags if t.entry.d_tag == "DT_RPATH")
        index = next(i for i, t in enumerate(tags) if t.entry.d_tag == "DT_DEBUG")
        offset = dyn["p_offset"] + index * 16
        fh.seek(offset)
        fh.write(struct.pack("<qQ", 0x1D, rpath.entry.d_val + skip))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """libinner.so.1, libouter.so.1 (needs libinner) and prog variants (need libouter)."""
    _require_gcc()
    out = tmp_path_factory.mktemp("elf-build")
    inner, outer = out / "libinner.so.1", out / "libouter.so.1"
    _gcc(inner, "-shared", "-fPIC", "-Wl,-soname,libinner.so.1", DATA / "inner.c")
    _gcc(outer, "-shared", "-fPIC", "-Wl,-soname,libouter.so.1", DATA / "outer.c", inner)
    link = [DATA / "prog.c", outer, f"-Wl,-rpath-link,{out}"]
    _gcc(out / "prog-runpath", *link, "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")
    _gcc(out / "prog-rpath", *link, "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib")
    _gcc(out / "prog-both", *link, "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib:/nowhere")
    _patch_debug_to_runpath(out / "prog-both", len("$ORIGIN/../lib:"))
    _gcc(out / "prog-lib", *link, "-Wl,--enable-new-dtags,-rpath,/opt/$LIB")
    return {p.name: p for p in out.iterdir()}


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _link(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    """A merged-/usr sysroot holding only the C library, with a relative symlink chain."""
    if not IS_X86_64_DEBIAN:
        pytest.skip("needs an x86_64 Debian host C library")
    root = tmp_path / "root"
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        _copy(HOST_LIBDIR / name, root / "usr/lib/x86_64-linux-gnu" / name)
    _link(root, "/lib", "usr/lib")
    _link(root, "/lib64", "usr/lib64")
    _link(root, "/usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return root


def _install_app(root: Path, built: dict[str, Path], prog: str) -> None:
    _copy(built[prog], root / "opt/app/bin/prog")
    for lib in ("libouter.so.1", "libinner.so.1"):
        _copy(built[lib], root / "opt/app/lib" / lib)


C_LIBRARY_LINKS = {
    "/lib": "usr/lib",
    "/lib64": "usr/lib64",
    "/usr/lib64/ld-linux-x86-64.so.2": "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
}


@pytest.mark.integration
def test_rpath_is_inherited_by_libraries_in_a_copied_sysroot(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    closure = resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert {path: (f.role, f.needed_by) for path, f in _files(closure).items()} == {
        "/opt/app/bin/prog": ("executable", ()),
        "/opt/app/lib/libouter.so.1": ("library", ("/opt/app/bin/prog",)),
        # found through prog's RPATH although libouter has no search path of its own
        "/opt/app/lib/libinner.so.1": ("library", ("/opt/app/lib/libouter.so.1",)),
        # the tiny libraries call nothing in libc, so only prog needs it
        "/usr/lib/x86_64-linux-gnu/libc.so.6": ("library", ("/opt/app/bin/prog",)),
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": (
            "interpreter",
            ("/usr/lib/x86_64-linux-gnu/libc.so.6",),
        ),
    }
    assert _links(closure) == C_LIBRARY_LINKS
    for f in closure.files:
        assert f.host_path == sysroot / f.image_path.lstrip("/")


@pytest.mark.integration
def test_runpath_applies_only_to_direct_dependencies(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-runpath")
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: cannot find libinner.so.1 (needed by /opt/app/lib/libouter.so.1); "
        f"searched: {DEFAULTS}"
    )
    assert info.value.hint is not None


@pytest.mark.integration
def test_runpath_finds_direct_dependency_and_ld_so_conf_finds_the_rest(
    sysroot: Path, built: dict[str, Path]
) -> None:
    _install_app(sysroot, built, "prog-runpath")
    (sysroot / "opt/b").mkdir(parents=True)
    (sysroot / "opt/app/lib/libinner.so.1").rename(sysroot / "opt/b/libinner.so.1")
    (sysroot / "etc/ld.so.conf.d").mkdir(parents=True)
    (sysroot / "etc/ld.so.conf").write_text("# local\ninclude\t/etc/ld.so.conf.d/*.conf\n")
    (sysroot / "etc/ld.so.conf.d/b.conf").write_text("/opt/b  # the b libraries\n")
    (sysroot / "etc/ld.so.conf.d/a.conf").write_text("/opt/a\n\n")
    (sysroot / "etc/ld.so.conf.d/ignored.txt").write_text("/opt/ignored\n")
    closure = resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert "/opt/b/libinner.so.1" in _files(closure)
    # The same sysroot without the library: the message lists ld.so.conf dirs in include order.
    (sysroot / "opt/b/libinner.so.1").unlink()
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: cannot find libinner.so.1 (needed by /opt/app/lib/libouter.so.1); "
        f"searched: /opt/a, /opt/b, {DEFAULTS}"
    )


@pytest.mark.integration
def test_rpath_is_ignored_when_runpath_is_present(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-both")
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: cannot find libouter.so.1 (needed by /opt/app/bin/prog); "
        f"searched: /nowhere, {DEFAULTS}"
    )


@pytest.mark.integration
def test_runpath_with_host_sysroot(built: dict[str, Path]) -> None:
    """sysroot "/" with the program under a temporary directory: $ORIGIN is a host path."""
    if not IS_X86_64_DEBIAN:
        pytest.skip("needs an x86_64 Debian host C library")
    app = built["prog-rpath"].parent / "app"
    _copy(built["prog-rpath"], app / "bin/prog")
    for lib in ("libouter.so.1", "libinner.so.1"):
        _copy(built[lib], app / "lib" / lib)
    closure = resolve_closure([str(app / "bin/prog")], Path("/"))
    real_app = os.path.realpath(app)
    assert {f"{real_app}/lib/libouter.so.1", f"{real_app}/lib/libinner.so.1"} <= set(_files(closure))


@pytest.mark.integration
def test_missing_library_names_binary_library_and_paths(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    (sysroot / "opt/app/lib/libinner.so.1").unlink()
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: cannot find libinner.so.1 (needed by /opt/app/lib/libouter.so.1); "
        f"searched: /opt/app/bin/../lib, {DEFAULTS}"
    )
    assert str(info.value).endswith(
        "(hint: install the package that provides it into the sysroot, or add its directory to "
        "RUNPATH or /etc/ld.so.conf)"
    )


@pytest.mark.integration
def test_wrong_class_candidate_is_skipped(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    inner = sysroot / "opt/app/lib/libinner.so.1"
    data = bytearray(inner.read_bytes())
    data[4] = 1  # ELFCLASS32
    inner.write_bytes(bytes(data))
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message.endswith(
        f"searched: /opt/app/bin/../lib, {DEFAULTS}; skipped: /opt/app/bin/../lib/libinner.so.1 "
        "(ELF32 LSB machine 62)"
    )
    # A good copy later in the search order is taken instead.
    _copy(built["libinner.so.1"], sysroot / "usr/lib/libinner.so.1")
    closure = resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert "/usr/lib/libinner.so.1" in _files(closure)
    assert "/opt/app/lib/libinner.so.1" not in _files(closure)


@pytest.mark.integration
def test_lib_and_platform_tokens_are_refused(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-lib")
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: /opt/app/bin/prog has RUNPATH entry '/opt/$LIB'; kiln does not expand "
        "$LIB or $PLATFORM (their value depends on the C library build)"
    )


@pytest.mark.integration
def test_symlink_escaping_the_sysroot(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    outer = sysroot / "opt/app/lib/libouter.so.1"
    outer.unlink()
    outer.symlink_to("../../../../outside/libouter.so.1")
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/bin/prog"], sysroot)
    assert info.value.message == (
        "/opt/app/bin/prog: looking for libouter.so.1 (needed by /opt/app/bin/prog): "
        "/opt/app/bin/../lib/libouter.so.1: symlink /opt/app/lib/libouter.so.1 -> "
        f"../../../../outside/libouter.so.1 leads outside the sysroot {os.path.realpath(sysroot)}"
    )


@pytest.mark.integration
def test_absolute_symlinks_resolve_inside_the_sysroot(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    outer = sysroot / "opt/app/lib/libouter.so.1"
    outer.rename(sysroot / "opt/app/lib/libouter.so.1.0")
    outer.symlink_to("/opt/app/lib/libouter.so.1.0")
    _link(sysroot, "/usr/bin/prog", "/opt/app/bin/prog")
    closure = resolve_closure(["/usr/bin/prog"], sysroot)
    assert "/opt/app/lib/libouter.so.1.0" in _files(closure)
    assert _links(closure) == {
        **C_LIBRARY_LINKS,
        "/usr/bin/prog": "/opt/app/bin/prog",
        "/opt/app/lib/libouter.so.1": "/opt/app/lib/libouter.so.1.0",
    }


@pytest.mark.integration
def test_glob_patterns_expand_inside_the_sysroot(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    (sysroot / "etc").mkdir()
    (sysroot / "etc/ld.so.conf").write_text("/opt/app/lib\n")
    closure = resolve_closure(["/opt/app/lib/lib*.so.[0-9]"], sysroot)
    files = _files(closure)
    assert files["/opt/app/lib/libouter.so.1"].role == "library"  # given, but a plain shared object
    assert files["/opt/app/lib/libinner.so.1"].needed_by == ("/opt/app/lib/libouter.so.1",)
    assert "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" not in files  # libraries have no PT_INTERP
    with pytest.raises(ClosureError) as info:
        resolve_closure(["/opt/app/lib/*.so.9"], sysroot)
    assert info.value.message == (
        f"closure pattern /opt/app/lib/*.so.9 matches nothing in sysroot {os.path.realpath(sysroot)}"
    )


def _truncation_points(prog: Path) -> list[int]:
    with prog.open("rb") as fh:
        elf = ELFFile(fh)
        dyn = next(s for s in elf.iter_segments() if isinstance(s, DynamicSegment))
        dyn_offset = int(dyn["p_offset"])
        phoff = int(elf["e_phoff"])
    return [20, 40, 63, phoff + 10, dyn_offset + 8]


@pytest.mark.integration
def test_truncated_elf_is_a_clean_error(sysroot: Path, built: dict[str, Path]) -> None:
    _install_app(sysroot, built, "prog-rpath")
    whole = built["prog-rpath"].read_bytes()
    for size in _truncation_points(built["prog-rpath"]):
        (sysroot / "opt/app/bin/prog").write_bytes(whole[:size])
        with pytest.raises(ClosureError) as info:
            resolve_closure(["/opt/app/bin/prog"], sysroot)
        assert info.value.message.startswith("/opt/app/bin/prog: malformed or truncated ELF file ("), size
    # A truncated library is named as found.
    (sysroot / "opt/app/bin/prog").write_bytes(whole)
    (sysroot / "opt/app/lib/libinner.so.1").write_bytes(built["libinner.so.1"].read_bytes()[:64])
    with pytest.raises(ClosureError, match=r"^/opt/app/bin/\.\./lib/libinner\.so\.1: malformed or truncated"):
        resolve_closure(["/opt/app/bin/prog"], sysroot)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory, built: dict[str, Path]) -> Path:
    if not IS_X86_64_DEBIAN:
        pytest.skip("needs an x86_64 Debian host C library")
    root = tmp_path_factory.mktemp("fuzz-root")
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        _copy(HOST_LIBDIR / name, root / "lib64" / name)
    for lib in ("libouter.so.1", "libinner.so.1"):
        _copy(built[lib], root / "opt/app/lib" / lib)
    return root


@pytest.mark.integration
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_elf_never_escapes_as_a_traceback(
    fuzz_root: Path, built: dict[str, Path], data: st.DataObject
) -> None:
    blob = bytearray(built["prog-rpath"].read_bytes())
    limit = min(len(blob), 0x4000)  # headers, program headers, .dynamic and .dynstr live here
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.integers(0, limit - 1))
        blob[offset] = data.draw(st.integers(0, 255))
    size = data.draw(st.integers(0, len(blob)))
    (fuzz_root / "opt/app/bin").mkdir(parents=True, exist_ok=True)
    (fuzz_root / "opt/app/bin/prog").write_bytes(bytes(blob[:size]))
    try:
        closure = resolve_closure(["/opt/app/bin/prog"], fuzz_root)
    except ClosureError:
        return  # a typed refusal is the expected outcome for most mutations
    assert "/opt/app/bin/prog" in _files(closure)


# --------------------------------------------------------------------------------------------
# Bad inputs that need no compiler


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/script").write_text("#!/bin/sh\necho hi\n")
    (root / "bin/empty").write_bytes(b"")
    (root / "bin/a").symlink_to("b")
    (root / "bin/b").symlink_to("a")
    (root / "bin/self").symlink_to("self")
    (root / "bin/dangling").symlink_to("nothing")
    (root / "bin/up").symlink_to("../../../etc/passwd")
    (root / "usr").mkdir()
    return root


BAD_PATHS: list[tuple[list[str], Callable[[Path], str]]] = [
    ([], lambda r: "closure needs at least one path"),
    (["bin/script"], lambda r: "closure path 'bin/script' is not absolute"),
    (["/bin/script"], lambda r: "/bin/script: not an ELF file"),
    (["/bin/empty"], lambda r: "/bin/empty: not an ELF file"),
    (["/bin/missing"], lambda r: f"/bin/missing: no such file in sysroot {r}"),
    (["/bin/dangling"], lambda r: f"/bin/dangling: no such file in sysroot {r}"),
    (["/usr"], lambda r: "/usr: not a regular file (resolves to /usr)"),
    (["/bin/script/x"], lambda r: f"/bin/script/x: no such file in sysroot {r}"),
    (["/bin/a"], lambda r: "/bin/a: too many levels of symbolic links (more than 40) at /bin/a"),
    (["/bin/self"], lambda r: "/bin/self: too many levels of symbolic links (more than 40) at /bin/self"),
    (
        ["/bin/up"],
        lambda r: f"/bin/up: symlink /bin/up -> ../../../etc/passwd leads outside the sysroot {r}",
    ),
    (["/bin/zz*"], lambda r: f"closure pattern /bin/zz* matches nothing in sysroot {r}"),
]


@pytest.mark.parametrize(("paths", "expected"), BAD_PATHS)
def test_bad_paths(tmp_path: Path, paths: list[str], expected: Callable[[Path], str]) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ClosureError) as info:
        resolve_closure(paths, root)
    assert info.value.message == expected(Path(os.path.realpath(root)))


def test_sysroot_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ClosureError, match="is not a directory"):
        resolve_closure(["/bin/x"], tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Path resolution agrees with the kernel's (property)

COMPONENTS = ["a", "b", "d", "f", "l1", "l2", "l3", "up", "..", ".", "nope"]


@pytest.fixture(scope="module")
def link_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("links")
    (root / "a/b/d").mkdir(parents=True)
    (root / "a/b/d/f").write_text("f")
    (root / "a/f").write_text("f")
    (root / "l1").symlink_to("a/b")
    (root / "a/l2").symlink_to("b/d/f")
    (root / "a/b/l3").symlink_to("../../l1/d")
    (root / "a/b/d/up").symlink_to("..")
    return Path(os.path.realpath(root))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=7))
def test_resolution_matches_the_kernel(link_tree: Path, parts: list[str]) -> None:
    image_path = "/" + "/".join(parts)
    # The host has no chroot here: leave out paths whose ".." would climb above the tree.
    for end in range(1, len(parts) + 1):
        prefix = os.path.join(link_tree, *parts[:end])
        real_prefix = os.path.realpath(prefix)
        assume(
            not os.path.exists(prefix)
            or real_prefix == str(link_tree)
            or real_prefix.startswith(f"{link_tree}/")
        )
    resolved = _Sysroot(link_tree).resolve(image_path)
    host = str(link_tree) + image_path
    if not os.path.exists(host):
        assert resolved is None
        return
    assert resolved is not None
    real = os.path.realpath(host)
    assert real == str(link_tree) + (resolved.real if resolved.real != "/" else "")
    for link in resolved.links:
        assert os.readlink(str(link_tree) + link.image_path) == link.target


# --------------------------------------------------------------------------------------------
# dpkg ownership in a sysroot


def test_dpkg_index_in_a_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/x86_64-linux-gnu/libfoo.so.1").write_bytes(b"x")
    (root / "usr/lib/x86_64-linux-gnu/stray.so").write_bytes(b"x")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").write_bytes(b"x")
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "libfoo1:amd64.list").write_text(
        "/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libfoo.so.1\n"
    )
    (info / "tool.list").write_text("/usr\n/usr/bin\n/usr/bin/tool\n")
    (info / "tool.md5sums").write_text("ignored /usr/lib/x86_64-linux-gnu/stray.so\n")
    (root / "var/lib/dpkg/status").write_text(
        "Package: libfoo1\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\n"
        "Version: 1.2-3\nDescription: foo\n multi-line\n\n"
        "Package: tool\nStatus: install ok installed\nArchitecture: amd64\nVersion: 9\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
    )
    index = DpkgIndex(root)
    assert index.owning_package("/usr/lib/x86_64-linux-gnu/libfoo.so.1") == "libfoo1:amd64 1.2-3"
    assert index.owning_package("/lib/x86_64-linux-gnu/libfoo.so.1") == "libfoo1:amd64 1.2-3"
    assert index.owning_package("/usr/bin/tool") == "tool 9"
    assert index.owning_package("/usr/lib/x86_64-linux-gnu/stray.so") is None
    assert owning_package(root / "usr/lib/x86_64-linux-gnu/libfoo.so.1", root) == "libfoo1:amd64 1.2-3"
    assert owning_package(tmp_path / "elsewhere", root) is None


# --------------------------------------------------------------------------------------------
# The examples, assembled and run without the builder (root only: chroot, mounts, setuid)

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("curl") is None,
    reason="needs root, unshare and curl",
)


def _load_smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("python_web_smoke", EXAMPLES / "python-web/smoke.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@needs_root_tools
@pytest.mark.skipif(not Path("/usr/bin/busybox").is_file(), reason="busybox-static is not installed")
def test_hello_static_example_runs_confined(tmp_path: Path) -> None:
    manifest = load_image_manifest(EXAMPLES / "hello-static/hello.yaml")
    assembled = _load_smoke().assemble(manifest, tmp_path / "root")
    assert assembled.files == 3  # busybox, /etc/passwd, /etc/group
    result = subprocess.run(
        ["unshare", f"--root={tmp_path / 'root'}", "--setuid", "65532", "--setgid", "65532", "--",
         *manifest.entrypoint],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert result.stdout == "hello from kiln\n"


@pytest.mark.integration
@pytest.mark.slow
@needs_root_tools
@pytest.mark.skipif(not Path("/usr/bin/python3.11").is_file(), reason="python3.11 is not installed")
def test_python_web_example_serves_on_a_read_only_root(tmp_path: Path) -> None:
    smoke = _load_smoke()
    manifest = load_image_manifest(EXAMPLES / "python-web/python-web.yaml")
    root = tmp_path / "root"
    root.mkdir()
    assembled = smoke.assemble(manifest, root)
    assert assembled.size < 40_000_000
    assert not (root / "usr/lib/python3.11/sitecustomize.py").is_symlink()
    assert not list(root.rglob("__pycache__"))
    before = smoke._listing(root)
    seen = smoke.run_service(manifest, root)
    assert seen["healthz"] == "ok\n"
    assert seen["hello"] == {"service": "python-web", "message": "hello from kiln"}
    assert seen["uid"] == ["65532"] * 4
    assert seen["gid"] == ["65532"] * 4
    assert seen["groups"] == ""
    assert seen["exit_code"] == 0, seen["stderr"]
    assert "python-web: stopped" in str(seen["stderr"])
    assert smoke._listing(root) == before
