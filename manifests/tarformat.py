"""The tar format, read from untrusted bytes: headers, PAX and GNU long-name records, content.

Layers arrive from registries and image files, so everything here is hostile input:
:func:`read_tar` checks every header's checksum (the unsigned sum, or the signed sum some old
writers used), parses numbers in octal or GNU base-256 (a negative one is refused), caps each PAX
or GNU long-name record at :attr:`TarCaps.max_extended` bytes and member names and link targets at
:attr:`TarCaps.max_name` characters, and refuses malformed PAX records and truncated streams.
It only reads: what a member *means* (its path inside a root, whether a link escapes, whiteouts)
is the caller's business. The caller also counts entries (``on_header``) and caps the total bytes
(its stream), since those budgets may span several layers.

Every refusal is a :class:`TarFormatError` (a :class:`~manifests.errors.DocumentError`) whose text
comes from the caller's :class:`TarWording`, so each caller keeps the messages it has always given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from manifests.errors import DocumentError

__all__ = [
    "BLOCK",
    "EXTENDED_FLAGS",
    "TarFormatError",
    "TarWording",
    "TarCaps",
    "TarHeader",
    "TarContent",
    "read_tar",
]

BLOCK = 512
EXTENDED_FLAGS = (b"x", b"g", b"L", b"K")  # PAX, global PAX, GNU long name, GNU long link
_CHUNK = 1 << 20
_ZERO_BLOCK = b"\0" * BLOCK

_KINDS = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"5": "dir",
    b"2": "symlink",
    b"1": "hardlink",
    b"3": "char",
    b"4": "block",
    b"6": "fifo",
}


class TarFormatError(DocumentError):
    """The bytes are not a tar stream that may be read (the message is the caller's wording)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TarWording:
    """The message for each refusal; ``{placeholders}`` are filled in with :meth:`str.format`."""

    checksum: str  # a header's checksum does not match
    truncated_header: str  # the stream ends inside a header block
    truncated_extended: str  # ... inside a PAX or GNU long-name record
    truncated_skip: str  # ... inside a member the caller did not read to its end
    truncated_content: str  # ... while the caller reads a member's content
    bad_number: str  # {what}, {field}: a numeric field that is not octal
    negative: str  # {what}: a negative base-256 number
    extended: str  # {size}, {max}: a PAX or GNU long-name record over the cap
    pax_malformed: str  # a PAX record without a decimal length
    pax_length: str  # a PAX record length outside the record
    pax_equals: str  # a PAX record without '='
    pax_number: str  # {key}, {value}: a PAX size/uid/gid that is not a decimal number
    name: str  # {length}, {max}: a member name or link target over the cap

    def error(self, template: str, **values: object) -> TarFormatError:
        return TarFormatError(template.format(**values))


@dataclass(frozen=True, slots=True, kw_only=True)
class TarCaps:
    max_name: int = 4096  # characters of a member name or link target
    max_extended: int = 1 << 20  # bytes of one PAX or GNU long-name record


@dataclass(frozen=True, slots=True, kw_only=True)
class TarHeader:
    """One member as its headers describe it; ``name`` and ``link`` exactly as stored."""

    name: str
    flag: bytes  # the type flag byte
    kind: str  # file | dir | symlink | hardlink | char | block | fifo | other:<flag>
    mode: int  # permission bits (0o7777)
    uid: int
    gid: int
    size: int  # content bytes of a regular file; 0 for every other kind
    link: str


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class TarContent:
    """The content of the current member, at most its ``size`` bytes; unread bytes are skipped."""

    def __init__(self, stream: _Readable, size: int, wording: TarWording) -> None:
        self._stream = stream
        self._wording = wording
        self.left = size

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        if n <= 0:
            return b""
        data = self._stream.read(n)
        if not data:
            raise self._wording.error(self._wording.truncated_content)
        self.left -= len(data)
        return data


def read_tar(
    stream: _Readable,
    *,
    wording: TarWording,
    caps: TarCaps = TarCaps(),
    on_header: Callable[[bytes], None] = lambda flag: None,
) -> Iterator[tuple[TarHeader, TarContent]]:
    """Each member of the uncompressed tar ``stream`` with a reader for its content.

    ``on_header(flag)`` is called for every header block (extended records included) once its
    checksum is verified: the caller counts entries there and raises past its cap. At the
    end-of-archive block the rest of ``stream`` is read and discarded; a stream that simply ends
    between members is accepted.
    """
    extended = _Extended()
    while True:
        block = _header_block(stream, wording)
        if block is None:
            return
        flag = block[156:157]
        on_header(flag)
        size = _number(block[124:136], "size", wording)
        if flag in EXTENDED_FLAGS:
            if size > caps.max_extended:
                raise wording.error(wording.extended, size=size, max=caps.max_extended)
            data = _exact(stream, size + (-size % BLOCK), wording, wording.truncated_extended)[:size]
            extended.read(flag, data, wording)
            continue
        header, size = extended.member(block, size, wording)
        if len(header.name) > caps.max_name or len(header.link) > caps.max_name:
            raise wording.error(
                wording.name, length=max(len(header.name), len(header.link)), max=caps.max_name
            )
        extended = _Extended()
        content = TarContent(stream, size, wording)
        yield header, content
        left = content.left + (-size % BLOCK)
        while left:
            chunk = stream.read(min(left, _CHUNK))
            if not chunk:
                raise wording.error(wording.truncated_skip)
            left -= len(chunk)


def _header_block(stream: _Readable, wording: TarWording) -> bytes | None:
    """The next header block, its checksum verified; None at the end of the archive (the rest of
    ``stream`` read and discarded after end-of-archive blocks; a stream that just ends is fine)."""
    block = stream.read(BLOCK)
    if not block:
        return None
    if len(block) < BLOCK:
        block += _exact(stream, BLOCK - len(block), wording, wording.truncated_header)
    if block == _ZERO_BLOCK:
        while stream.read(_CHUNK):
            pass
        return None
    stored = _number(block[148:156], "checksum", wording)
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    signed = unsigned - 2 * (sum(b for b in block[:148] if b > 127) + sum(b for b in block[156:] if b > 127))
    if stored not in (unsigned, signed):
        raise wording.error(wording.checksum)
    return block


@dataclass(slots=True)
class _Extended:
    """What extended headers (PAX ``x``, GNU ``L``/``K``) say about the next member."""

    pax: dict[str, str] = field(default_factory=dict)
    long_name: str | None = None
    long_link: str | None = None

    def read(self, flag: bytes, data: bytes, wording: TarWording) -> None:
        if flag == b"x":
            self.pax = _pax(data, wording)
        elif flag == b"L":
            self.long_name = _text(data)
        elif flag == b"K":
            self.long_link = _text(data)
        # global PAX headers ('g') are read and ignored

    def member(self, block: bytes, size: int, wording: TarWording) -> tuple[TarHeader, int]:
        """The member ``block`` describes, with these overrides; and its content size."""
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345:500].strip(b"\0"):
            name = _text(block[345:500]) + "/" + name
        name = self.pax.get("path", self.long_name if self.long_name is not None else name)
        link = self.pax.get(
            "linkpath", self.long_link if self.long_link is not None else _text(block[157:257])
        )
        size = _pax_number(self.pax, "size", size, wording)
        flag = block[156:157]
        kind = _KINDS.get(flag, f"other:{flag!r}")
        header = TarHeader(
            name=name,
            flag=flag,
            kind=kind,
            mode=_number(block[100:108], "mode", wording) & 0o7777,
            uid=_pax_number(self.pax, "uid", _number(block[108:116], "uid", wording), wording),
            gid=_pax_number(self.pax, "gid", _number(block[116:124], "gid", wording), wording),
            size=size if kind == "file" else 0,
            link=link,
        )
        return header, size


def _exact(stream: _Readable, n: int, wording: TarWording, truncated: str) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            raise wording.error(truncated)
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _number(field: bytes, what: str, wording: TarWording) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        if field[0] & 0x40:
            raise wording.error(wording.negative, what=what)
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise wording.error(wording.bad_number, what=what, field=field) from None


def _pax(data: bytes, wording: TarWording) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0 or not data[pos:sp].isdigit():
            raise wording.error(wording.pax_malformed)
        length = int(data[pos:sp])
        if length <= sp - pos or pos + length > len(data) or data[pos + length - 1 : pos + length] != b"\n":
            raise wording.error(wording.pax_length)
        key, eq, value = data[sp + 1 : pos + length - 1].partition(b"=")
        if not eq:
            raise wording.error(wording.pax_equals)
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _pax_number(pax: dict[str, str], key: str, default: int, wording: TarWording) -> int:
    value = pax.get(key)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise wording.error(wording.pax_number, key=key, value=value[:40])
    return int(value)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
