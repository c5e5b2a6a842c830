"""The shared tar reader: what tarfile writes reads back; each refusal speaks the caller's words."""

from __future__ import annotations

import contextlib
import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.errors import DocumentError
from manifests.tarformat import TarCaps, TarFormatError, TarHeader, TarWording, read_tar

WORDS = TarWording(
    checksum="checksum",
    truncated_header="truncated header",
    truncated_extended="truncated extended",
    truncated_skip="truncated skip",
    truncated_content="truncated content",
    bad_number="bad {what} {field!r}",
    negative="negative {what}",
    extended="extended {size} > {max}",
    pax_malformed="pax malformed",
    pax_length="pax length",
    pax_equals="pax equals",
    pax_number="pax {key} {value!r}",
    name="name {length} > {max}",
)


def tar_of(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def info(name: str, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def read_all(data: bytes, caps: TarCaps | None = None) -> list[tuple[TarHeader, bytes]]:
    out = []
    for header, content in read_tar(io.BytesIO(data), wording=WORDS, caps=caps or TarCaps()):
        out.append((header, content.read(1 << 20)))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_writes(fmt: int) -> None:
    long = "d/" + ("n" * 150 if fmt != tarfile.USTAR_FORMAT else "n" * 90)
    data = tar_of(
        (info("d", type=tarfile.DIRTYPE, mode=0o755), b""),
        (info(long, mode=0o4755, uid=70000, gid=5), b"hello"),
        (info("d/l", type=tarfile.SYMTYPE, linkname="../t"), b""),
        (info("d/h", type=tarfile.LNKTYPE, linkname=long), b""),
        (info("d/p", type=tarfile.FIFOTYPE), b""),
        fmt=fmt,
    )
    got = [(h.name, h.kind, h.mode, h.uid, h.gid, h.size, h.link, body) for h, body in read_all(data)]
    assert got == [
        ("d/", "dir", 0o755, 0, 0, 0, "", b""),
        (long, "file", 0o4755, 70000, 5, 5, "", b"hello"),
        ("d/l", "symlink", 0o644, 0, 0, 0, "../t", b""),
        ("d/h", "hardlink", 0o644, 0, 0, 0, long, b""),
        ("d/p", "fifo", 0o644, 0, 0, 0, "", b""),
    ]


def test_unread_content_is_skipped_and_every_header_is_counted() -> None:
    ti = info("a")
    ti.pax_headers = {"comment": "x"}
    data = tar_of((ti, b"x" * 3000), (info("b"), b"y"))
    flags: list[bytes] = []
    names = [h.name for h, _ in read_tar(io.BytesIO(data), wording=WORDS, on_header=flags.append)]
    assert names == ["a", "b"]
    assert flags == [b"x", b"0", b"0"]


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)


def _negative_uid() -> bytes:
    data = bytearray(tar_of((info("a"), b"")))
    data[108:116] = b"\xc0" + b"\x00" * 7
    _checksum(data)
    return bytes(data)


def _bad_mode() -> bytes:
    data = bytearray(tar_of((info("a"), b"")))
    data[100:108] = b"0009\x00\x00\x00\x00"
    _checksum(data)
    return bytes(data)


def _pax(comment: str, **headers: str) -> bytes:
    ti = info("a")
    ti.pax_headers = {"comment": comment, **headers}
    return tar_of((ti, b""))


@pytest.mark.parametrize(
    ("data", "caps", "message"),
    [
        (b"x" * 512, TarCaps(), "bad checksum b'xxxxxxxx'"),
        (b"\x01" + tar_of((info("a"), b""))[1:], TarCaps(), "checksum"),
        (tar_of((info("a"), b""))[:300], TarCaps(), "truncated header"),
        (_pax("y" * 3000)[:1024], TarCaps(), "truncated extended"),
        (tar_of((info("a"), b"x" * 2000))[:1024], TarCaps(), "truncated skip"),
        (_negative_uid(), TarCaps(), "negative uid"),
        (_bad_mode(), TarCaps(), "bad mode b'0009\\x00\\x00\\x00\\x00'"),
        (_pax("y" * 5000), TarCaps(max_extended=1000), "extended 5014 > 1000"),
        (_pax("c", uid="-5"), TarCaps(), "pax uid '-5'"),
        (tar_of((info("a" * 300), b"")), TarCaps(max_name=100), "name 300 > 100"),
        (
            tar_of((info("l", type=tarfile.SYMTYPE, linkname="t" * 200), b"")),
            TarCaps(max_name=100),
            "name 200 > 100",
        ),
    ],
    ids=[
        "bad-checksum-field",
        "checksum",
        "truncated-header",
        "truncated-extended",
        "truncated-skip",
        "negative",
        "bad-number",
        "extended-cap",
        "pax-number",
        "name-cap",
        "link-cap",
    ],
)
def test_refusals_use_the_callers_words(data: bytes, caps: TarCaps, message: str) -> None:
    with pytest.raises(TarFormatError) as exc:
        read_all(data, caps)
    assert exc.value.message == message
    assert isinstance(exc.value, DocumentError)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"x5 a=b\n", "pax malformed"),
        (b"99 a=b\n", "pax length"),
        (b"6 a=bX", "pax length"),
        (b"5 ab\n", "pax equals"),
    ],
)
def test_malformed_pax_records(record: bytes, message: str) -> None:
    block = bytearray(tar_of((info("h"), b"")))[:512]
    block[124:136] = b"%011o\x00" % len(record)
    block[156:157] = b"x"
    _checksum(block)
    data = bytes(block) + record + b"\0" * (-len(record) % 512) + tar_of((info("a"), b""))
    with pytest.raises(TarFormatError) as exc:
        read_all(data)
    assert exc.value.message == message


def test_truncated_content_while_reading() -> None:
    data = tar_of((info("a"), b"x" * 2000))[:1024]
    _header, content = next(read_tar(io.BytesIO(data), wording=WORDS))
    assert content.read(4096) == b"x" * 512
    with pytest.raises(TarFormatError, match="truncated content"):
        content.read(4096)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_only_tar_format_errors(data: bytes) -> None:
    with contextlib.suppress(TarFormatError):
        read_all(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_tar(flips: list[tuple[int, int]]) -> None:
    data = bytearray(tar_of((info("d", type=tarfile.DIRTYPE), b""), (info("d/" + "f" * 120), b"abc")))
    for pos, value in flips:
        data[pos % len(data)] = value
    with contextlib.suppress(TarFormatError):
        read_all(bytes(data))
