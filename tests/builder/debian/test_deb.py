"""Hostile .debs: the ar reader, the deb(5) structure and the path rules of extraction, each
refusal named; and a fuzz of the reader. Run under .ci/sandboxed like every test."""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.debian.deb import DebFormatError, members, open_deb, read_ar
from builder.debian.extract import materialize, symlink_escapes
from manifests.debianlock import LockedPackage
from manifests.errors import KilnError, VerificationError
from tests.builder.debian.debkit import F, ar, make_deb, tar_xz


def _locked(name: str, data: bytes) -> LockedPackage:
    return LockedPackage(
        name=name,
        version="1.0",
        architecture="amd64",
        source=name,
        source_version="1.0",
        filename=f"pool/{name}.deb",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _extract(tmp_path: Path, *debs: tuple[str, bytes]):  # type: ignore[no-untyped-def]
    locked, paths = [], {}
    for name, data in debs:
        pkg = _locked(name, data)
        p = tmp_path / f"{name}.deb"
        p.write_bytes(data)
        locked.append(pkg)
        paths[pkg.sha256] = p
    return materialize(locked, architecture="amd64", debs=paths, cache=tmp_path / "cache")


def test_a_plain_deb_extracts_into_merged_usr(tmp_path: Path) -> None:
    deb = make_deb(
        "p",
        files=[
            F("./bin/", kind="dir"),
            F("./bin/tool", b"x", mode=0o4755),
            F("./lib/", kind="dir"),
            F("./lib/libp.so.1", b"lib"),
            F("./lib/libp.so", kind="symlink", target="libp.so.1"),
            F("./usr/", kind="dir"),
            F("./usr/share/", kind="dir"),
            F("./usr/share/p", b"d"),
            F("./usr/share/p2", kind="hardlink", target="./usr/share/p"),
        ],
    )
    root = _extract(tmp_path, ("p", deb))
    by = {e.path: e for e in root.entries}
    assert by["/usr/bin/tool"].mode == 0o755  # setuid dropped
    assert by["/usr/lib/libp.so"].target == "libp.so.1"
    assert (by["/usr/share/p2"].kind, by["/usr/share/p2"].size) == ("file", 1)
    assert (by["/bin"].target, by["/lib"].target) == ("usr/bin", "usr/lib")
    assert by["/var/lib/dpkg/status.d/p"].package is None
    assert (root.path / "var/lib/dpkg/status.d/p").read_text().startswith("Package: p\n")
    assert (root.path / "usr/lib/libp.so.1").read_bytes() == b"lib"
    # Extracted once: a second call reuses the root and its record.
    again = _extract(tmp_path, ("p", deb))
    assert again.path == root.path
    assert again.entries == root.entries
    # A root without its record (another build raced this one, or a crash in between): extracted
    # again, and the root already there is kept as it is (a concurrent build may be reading it).
    inode = os.stat(root.path).st_ino
    root.path.with_suffix(".json").unlink()
    third = _extract(tmp_path, ("p", deb))
    assert third.entries == root.entries
    assert os.stat(third.path).st_ino == inode
    assert sorted(p.name for p in root.path.parent.iterdir()) == sorted(
        [root.path.name, root.path.name + ".json"]
    )


@pytest.mark.parametrize(
    ("name", "files", "message"),
    [
        ("absolute-name", [F("/etc/evil", b"x")], "absolute member name '/etc/evil'"),
        ("dotdot-name", [F("./usr/../../etc/evil", b"x")], "contains '..'"),
        (
            "symlink-escape",
            [F("./usr/l", kind="symlink", target="../../etc/shadow")],
            "climbs above the root",
        ),
        (
            "write-through-symlink",
            [F("./usr/", kind="dir"), F("./usr/l", kind="symlink", target="/etc"), F("./usr/l/passwd", b"x")],
            "would lie beneath the symlink /usr/l",
        ),
        (
            "beneath-file",
            [F("./usr/", kind="dir"), F("./usr/f", b"x"), F("./usr/f/g", b"y")],
            "would lie beneath the file /usr/f",
        ),
        ("device-node", [F("./dev-null", kind="char")], "char members are not allowed"),
        ("fifo", [F("./fifo", kind="fifo")], "fifo members are not allowed"),
        (
            "hardlink-to-nothing",
            [F("./h", kind="hardlink", target="./etc/shadow")],
            "which is not a file before it",
        ),
        ("hardlink-outside", [F("./h", kind="hardlink", target="../../etc/shadow")], "contains '..'"),
        ("same-file-twice", [F("./a", b"1"), F("./a", b"2")], "/a is shipped by evil and evil"),
    ],
)
def test_path_rules_refuse_hostile_members(tmp_path: Path, name: str, files: list[F], message: str) -> None:
    with pytest.raises(VerificationError, match=None) as info:
        _extract(tmp_path, ("evil", make_deb("evil", files=files)))
    assert message in str(info.value), name
    assert info.value.reason == "unpack"
    assert not list((tmp_path / "cache" / "roots").glob("*.json"))  # nothing recorded as extracted
    assert [p.name for p in (tmp_path / "cache" / "roots").iterdir()] == []


def test_two_packages_shipping_one_file_are_named(tmp_path: Path) -> None:
    a = make_deb("a", files=[F("./usr/", kind="dir"), F("./usr/x", b"1")])
    b = make_deb("b", files=[F("./usr/", kind="dir"), F("./usr/x", b"2")])
    with pytest.raises(VerificationError, match="/usr/x is shipped by a and b"):
        _extract(tmp_path, ("a", a), ("b", b))


def test_bin_and_usr_bin_of_one_name_collide(tmp_path: Path) -> None:
    a = make_deb("a", files=[F("./bin/sh", b"1")])
    b = make_deb("b", files=[F("./usr/bin/sh", b"2")])
    with pytest.raises(VerificationError, match="/usr/bin/sh is shipped by a and b"):
        _extract(tmp_path, ("a", a), ("b", b))


def _control() -> bytes:
    return tar_xz([F("./control", b"Package: p\nVersion: 1\nArchitecture: amd64\n")])


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("no-magic", b"PK\x03\x04" + b"\0" * 100, "not an ar archive"),
        ("truncated-header", b"!<arch>\n" + b"debian-binary   0", "truncated ar member header"),
        (
            "size-past-end",
            b"!<arch>\n"
            + f"{'debian-binary':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{999:<10}`\n".encode()
            + b"2.0\n",
            "run past the end of the file",
        ),
        (
            "size-not-decimal",
            b"!<arch>\n" + f"{'debian-binary':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{'0x10':<10}`\n".encode(),
            "size is not a decimal number",
        ),
        ("too-many-members", ar([(f"m{i}", b"") for i in range(17)]), "more than 16 ar members"),
        (
            "data-first",
            ar([("data.tar.xz", b""), ("debian-binary", b"2.0\n")]),
            "first ar member is not debian-binary",
        ),
        ("format-3", ar([("debian-binary", b"3.0\n")]), "unsupported .deb format version"),
        (
            "no-data",
            ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _control())]),
            "expected control.tar then data.tar",
        ),
        (
            "bzip2-data",
            ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _control()), ("data.tar.bz2", b"BZh")]),
            "unsupported compression",
        ),
        ("bad-name", ar([("debian-binary", b"2.0\n"), ("../x", b"")]), "unexpected ar member name"),
        (
            "corrupt-xz",
            ar(
                [
                    ("debian-binary", b"2.0\n"),
                    ("control.tar.xz", _control()),
                    ("data.tar.xz", b"\xfd7zXZ\x00garbage"),
                ]
            ),
            "cannot decompress",
        ),
        (
            "bad-tar",
            ar(
                [
                    ("debian-binary", b"2.0\n"),
                    ("control.tar.xz", _control()),
                    ("data.tar.xz", lzma.compress(b"1" * 1024)),
                ]
            ),
            "tar header checksum mismatch",
        ),
    ],
)
def test_malformed_debs_are_refused(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    with pytest.raises(DebFormatError) as info:
        _extract(tmp_path, ("bad", data))
    assert message in str(info.value), name
    assert ".deb bad 1.0" in str(info.value)


def test_decompression_bomb_is_capped(tmp_path: Path) -> None:
    from builder.debian.archive import DebianLimits

    deb = make_deb("big", files=[F("./zeros", b"\0" * (4 << 20))])
    p = tmp_path / "big.deb"
    p.write_bytes(deb)
    pkg = _locked("big", deb)
    with pytest.raises(DebFormatError, match="more than 1048576 bytes once decompressed"):
        materialize(
            [pkg],
            architecture="amd64",
            debs={pkg.sha256: p},
            cache=tmp_path / "c",
            limits=DebianLimits(max_deb_unpacked=1 << 20),
        )


def test_a_cached_deb_that_changed_is_refused(tmp_path: Path) -> None:
    deb = make_deb("p", files=[F("./a", b"1")])
    pkg = _locked("p", deb)
    p = tmp_path / "p.deb"
    p.write_bytes(deb + b"x")
    with pytest.raises(VerificationError, match="does not hash to the lock's sha256"):
        materialize([pkg], architecture="amd64", debs={pkg.sha256: p}, cache=tmp_path / "c")


@pytest.mark.parametrize(
    ("path", "target", "escapes"),
    [
        ("/usr/bin/x", "../lib/y", False),
        ("/usr/bin/x", "../../y", False),
        ("/usr/bin/x", "../../../y", True),
        ("/x", "..", True),
        ("/a/b", "/etc/passwd", False),
        ("/a/b", "./../c", False),
    ],
)
def test_symlink_escapes(path: str, target: str, escapes: bool) -> None:
    assert symlink_escapes(path, target) is escapes


def _read_all(data: bytes) -> None:
    fh = io.BytesIO(data)
    deb = open_deb(fh, len(data), what="fuzz")
    for m in (deb.control, deb.data):
        for _header, content in members(fh, m, what="fuzz", limit=1 << 20, max_entries=100):
            while content.read(65536):
                pass


_VALID = make_deb(
    "f", files=[F("./usr/", kind="dir"), F("./usr/a", b"hello"), F("./usr/l", kind="symlink", target="a")]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_kiln_errors(data: bytes) -> None:
    with contextlib.suppress(KilnError):
        read_ar(io.BytesIO(b"!<arch>\n" + data), len(data) + 8, what="fuzz")
        _read_all(b"!<arch>\n" + data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_debs_only_raise_kiln_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for pos, value in flips:
        data[pos] = value
    with contextlib.suppress(KilnError):
        _read_all(bytes(data))
