"""The .deb format, read from untrusted bytes: an ``ar`` archive holding ``debian-binary``,
``control.tar.*`` and ``data.tar.*`` (deb(5)).

:func:`read_ar` parses the common ar format itself (no ``ar`` or ``dpkg-deb`` runs): the
``!<arch>\\n`` magic, 60-byte member headers with decimal sizes checked to fit in the file, at
most :data:`MAX_MEMBERS` members, names of at most 16 bytes (GNU ``/`` terminators accepted, no
symbol or long-name tables: a .deb never has them). :func:`open_deb` checks the member order
deb(5) requires (``debian-binary`` first, ``2.x``, then ``control.tar``, then ``data.tar``) and
:func:`members` streams a tar member's entries through the shared tar reader
(:mod:`manifests.tarformat`) after decompressing it (``xz``, ``zst``, ``gz`` or none), with a cap
on the uncompressed bytes. Every refusal is a :class:`DebFormatError` naming the package.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from manifests.errors import DocumentError
from manifests.tarformat import TarCaps, TarContent, TarFormatError, TarHeader, TarWording, read_tar

__all__ = [
    "MAX_MEMBERS",
    "DebFormatError",
    "ArMember",
    "Deb",
    "read_ar",
    "open_deb",
    "members",
    "read_control",
]

MAX_MEMBERS = 16
MAX_CONTROL = 16 << 20  # uncompressed control.tar
_MAGIC = b"!<arch>\n"
_COMPRESSIONS = ("", ".gz", ".xz", ".zst")
_CHUNK = 1 << 20


class DebFormatError(DocumentError):
    """The bytes are not a .deb kiln will read."""


@dataclass(frozen=True, slots=True)
class ArMember:
    name: str
    offset: int  # of the member's data in the file
    size: int


def read_ar(fh: BinaryIO, file_size: int, *, what: str) -> tuple[ArMember, ...]:
    """The members of the ar archive in ``fh`` (``file_size`` bytes long)."""
    fh.seek(0)
    if fh.read(8) != _MAGIC:
        raise DebFormatError(f"{what}: not an ar archive (no !<arch> magic)")
    out: list[ArMember] = []
    pos = 8
    while pos < file_size:
        if len(out) >= MAX_MEMBERS:
            raise DebFormatError(f"{what}: more than {MAX_MEMBERS} ar members")
        fh.seek(pos)
        header = fh.read(60)
        if len(header) == 1 and header == b"\n":
            break  # a final padding byte
        if len(header) != 60:
            raise DebFormatError(f"{what}: truncated ar member header at byte {pos}")
        if header[58:60] != b"`\n":
            raise DebFormatError(f"{what}: bad ar member header at byte {pos}")
        raw_name = header[0:16].rstrip(b" ")
        if raw_name.endswith(b"/") and raw_name != b"/":
            raw_name = raw_name[:-1]
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise DebFormatError(f"{what}: ar member name is not ASCII") from None
        if not name or not all(c.isalnum() or c in "._-+" for c in name):
            raise DebFormatError(f"{what}: unexpected ar member name {name!r}")
        size_text = header[48:58].strip(b" ")
        if not size_text.isdigit():
            raise DebFormatError(f"{what}: ar member {name}: size is not a decimal number")
        size = int(size_text)
        start = pos + 60
        if start + size > file_size:
            raise DebFormatError(f"{what}: ar member {name}: {size} bytes run past the end of the file")
        out.append(ArMember(name, start, size))
        pos = start + size + (size & 1)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Deb:
    control: ArMember
    data: ArMember


def open_deb(fh: BinaryIO, file_size: int, *, what: str) -> Deb:
    """The control and data members of a .deb, in the order deb(5) requires."""
    found = read_ar(fh, file_size, what=what)
    if not found or found[0].name != "debian-binary":
        raise DebFormatError(f"{what}: the first ar member is not debian-binary")
    fh.seek(found[0].offset)
    version = fh.read(min(found[0].size, 16))
    if not version.startswith(b"2."):
        raise DebFormatError(f"{what}: unsupported .deb format version {version[:8]!r}")
    rest = [m for m in found[1:] if not m.name.startswith("_")]  # "_gpg..." signatures: ignored
    if (
        len(rest) != 2
        or not rest[0].name.startswith("control.tar")
        or not rest[1].name.startswith("data.tar")
    ):
        names = ", ".join(m.name for m in found)
        raise DebFormatError(f"{what}: expected control.tar then data.tar, found {names}")
    for m in rest:
        if m.name.split(".tar", 1)[1] not in _COMPRESSIONS:
            raise DebFormatError(f"{what}: {m.name}: unsupported compression")
    return Deb(control=rest[0], data=rest[1])


class _Window:
    """Reads one ar member of ``fh`` and nothing past it."""

    def __init__(self, fh: BinaryIO, member: ArMember) -> None:
        self.fh = fh
        self.pos = member.offset
        self.left = member.size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        if n == 0:
            return b""
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Capped:
    """A decompressed stream that refuses to yield more than ``limit`` bytes."""

    def __init__(self, inner: object, limit: int, what: str) -> None:
        self.inner = inner
        self.left = limit
        self.limit = limit
        self.what = what

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self.inner.read(n if n >= 0 else _CHUNK)  # type: ignore[attr-defined]
        except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as exc:
            raise DebFormatError(f"{self.what}: cannot decompress: {exc}") from exc
        self.left -= len(data)
        if self.left < 0:
            raise DebFormatError(f"{self.what}: more than {self.limit} bytes once decompressed")
        return data


def _wording(what: str) -> TarWording:
    w = f"{what}: "
    return TarWording(
        checksum=w + "tar header checksum mismatch",
        truncated_header=w + "truncated tar header",
        truncated_extended=w + "truncated tar extended header",
        truncated_skip=w + "truncated tar member",
        truncated_content=w + "truncated tar member content",
        bad_number=w + "bad number in tar {what} field {field!r}",
        negative=w + "negative tar {what}",
        extended=w + "tar extended header of {size} bytes (max {max})",
        pax_malformed=w + "malformed pax record",
        pax_length=w + "pax record length out of range",
        pax_equals=w + "pax record without '='",
        pax_number=w + "pax {key}={value!r} is not a number",
        name=w + "tar member name of {length} characters (max {max})",
    )


def members(
    fh: BinaryIO, member: ArMember, *, what: str, limit: int, max_entries: int
) -> Iterator[tuple[TarHeader, TarContent]]:
    """Each entry of the (compressed) tar ``member`` of a .deb, with a reader of its content."""
    window = _Window(fh, member)
    suffix = member.name.split(".tar", 1)[1]
    label = f"{what}: {member.name}"
    stream: object
    if suffix == ".xz":
        stream = lzma.LZMAFile(window)  # type: ignore[arg-type]  # noqa: SIM115 - closed with the .deb
    elif suffix == ".zst":
        stream = zstandard.ZstdDecompressor().stream_reader(window)  # type: ignore[arg-type]
    elif suffix == ".gz":
        stream = gzip.GzipFile(fileobj=window, mode="rb")  # type: ignore[call-overload]
    else:
        stream = window
    capped = _Capped(stream, limit, label)
    count = 0

    def on_header(flag: bytes) -> None:
        nonlocal count
        count += 1
        if count > max_entries:
            raise DebFormatError(f"{label}: more than {max_entries} tar entries")

    try:
        yield from read_tar(capped, wording=_wording(label), caps=TarCaps(), on_header=on_header)
    except TarFormatError as exc:
        raise DebFormatError(str(exc)) from exc


def read_control(fh: BinaryIO, deb: Deb, *, what: str) -> str:
    """The text of ``./control`` from the control member."""
    for header, content in members(fh, deb.control, what=what, limit=MAX_CONTROL, max_entries=1024):
        if header.name in ("./control", "control") and header.kind == "file":
            parts = []
            while chunk := content.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts).decode("utf-8", "replace")
    raise DebFormatError(f"{what}: control.tar has no control file")
