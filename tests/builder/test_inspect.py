from __future__ import annotations

import contextlib
import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.inspect import Caps, TarMember, _apply, format_tree, iter_tar
from manifests.errors import DocumentError, KilnError
from manifests.layerstream import HashingReader


def tar_of(*infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in infos:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members(data: bytes, caps: Caps | None = None) -> list[TarMember]:
    return list(iter_tar(HashingReader(io.BytesIO(data), limit=1 << 30), caps or Caps()))


def info(name: str, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def test_parses_what_tarfile_writes() -> None:
    data = tar_of(
        (info("./a/", type=tarfile.DIRTYPE, mode=0o755), b""),
        (info("a/" + "x" * 200, mode=0o600, uid=70000, gid=5), b"content"),
        (info("a/l", type=tarfile.SYMTYPE, linkname="../target"), b""),
        (info("a/h", type=tarfile.LNKTYPE, linkname="a/l"), b""),
    )
    got = members(data)
    assert [(m.path, m.type, m.mode, m.uid, m.size, m.target) for m in got] == [
        ("/a", "dir", 0o755, 0, 0, None),
        ("/a/" + "x" * 200, "file", 0o600, 70000, 7, None),
        ("/a/l", "symlink", 0o644, 0, 0, "../target"),
        ("/a/h", "hardlink", 0o644, 0, 0, "/a/l"),
    ]


def _corrupt_checksum(data: bytes) -> bytes:
    b = bytearray(data)
    b[0] ^= 1
    return bytes(b)


def _huge_pax() -> bytes:
    ti = info("x")
    ti.pax_headers = {"comment": "y" * 5000}
    return tar_of((ti, b""))


@pytest.mark.parametrize(
    ("data", "caps", "message"),
    [
        (_corrupt_checksum(tar_of((info("a"), b"x"))), Caps(), "layer tar: header checksum mismatch"),
        (tar_of((info("a"), b"x" * 2000))[:1024], Caps(), "layer tar: truncated file content"),
        (tar_of((info("a"), b"x"))[:300], Caps(), "layer tar: truncated header"),
        (tar_of((info("a"), b""), (info("b"), b"")), Caps(max_entries=1), "layer tar: more than 1 entries"),
        (_huge_pax(), Caps(max_extended=1000), "layer tar: extended header of 5"),
        (tar_of((info("a" * 300), b"")), Caps(max_name=100), "layer tar: entry name too long"),
    ],
)
def test_hostile_layers_are_refused(data: bytes, caps: Caps, message: str) -> None:
    with pytest.raises(DocumentError) as exc:
        members(data, caps)
    assert exc.value.message.startswith(message)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_never_crashes(data: bytes) -> None:
    with contextlib.suppress(KilnError):
        members(data)


def test_whiteouts() -> None:
    fs: dict[str, TarMember] = {}

    def m(path: str, kind: str = "file") -> TarMember:
        return TarMember(path=path, type=kind, mode=0o644, uid=0, gid=0, size=0)

    _apply(fs, [m("/a", "dir"), m("/a/x"), m("/a/y"), m("/b")])
    _apply(fs, [m("/a/.wh.x"), m("/.wh.b")])
    assert sorted(fs) == ["/a", "/a/y"]
    _apply(fs, [m("/a/.wh..wh..opq"), m("/a/z")])
    assert sorted(fs) == ["/a", "/a/z"]


def test_format_tree_shape() -> None:
    files = [
        {"path": "/etc", "type": "dir", "mode": "0755", "owner": "0:0", "size": 0},
        {"path": "/etc/passwd", "type": "file", "mode": "0644", "owner": "0:0", "size": 80},
        {"path": "/lib", "type": "symlink", "mode": "0777", "owner": "0:0", "size": 0, "target": "usr/lib"},
    ]
    assert format_tree(files).splitlines() == [
        "drwxr-xr-x         0:0             ├── etc",
        "-rw-r--r--         0:0         80  │   └── passwd",
        "lrwxrwxrwx         0:0             └── lib -> usr/lib",
    ]


def test_bad_pax_numbers() -> None:
    ti = info("x")
    ti.pax_headers = {"uid": "-5"}
    with pytest.raises(DocumentError, match="bad PAX uid '-5'"):
        members(tar_of((ti, b"")))
