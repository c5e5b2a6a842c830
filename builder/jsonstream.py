"""Canonical JSON written as a stream, for documents with long lists (ADR 0024).

A document whose size grows with the image's file count (the SBOM, the provenance, the build
cache's records) is given as a small skeleton with a marker string in place of each long list;
:func:`write_canonical` writes ``canonical_json(skeleton)`` with every marker replaced by the JSON
array of elements the caller serializes one at a time. The bytes are those
:func:`~manifests.canonical.canonical_json` gives for the whole document, without holding it.
"""

from __future__ import annotations

from collections.abc import Iterable
from json.encoder import encode_basestring
from typing import Any, Protocol

from manifests.canonical import canonical_json

__all__ = ["json_string", "marker", "write_canonical"]

_FLUSH = 1 << 16


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def marker(name: str) -> str:
    """A marker for a list: NUL occurs in no image path, name or version, so it is unique."""
    return f"\x00kiln-stream:{name}\x00"


def json_string(value: str) -> bytes:
    """A JSON string exactly as canonical_json writes it (UTF-8, not ASCII-escaped): the
    encoder function ``json.dumps(value, ensure_ascii=False)`` itself calls for a str, without
    building an encoder per call (a test holds the two together)."""
    return encode_basestring(value).encode("utf-8")


class _Buffered:
    """Joins small writes into pieces of ~64 KiB for the sink (a blob writer hashes each one)."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._sink.write(b"".join(self._parts))
            self._parts.clear()
            self._size = 0


def write_canonical(sink: _Sink, skeleton: Any, lists: dict[str, Iterable[bytes]]) -> None:
    """Write ``canonical_json(skeleton)`` to ``sink`` with each marker string (a key of ``lists``)
    replaced by the JSON array of ``lists[marker]``'s elements, each already canonical JSON."""
    text = canonical_json(skeleton)
    found = sorted((text.index(canonical_json(mark)), mark) for mark in lists)
    out = _Buffered(sink)
    done = 0
    for pos, mark in found:
        out.write(text[done:pos] + b"[")
        for i, item in enumerate(lists[mark]):
            out.write(b"," + item if i else item)
        out.write(b"]")
        done = pos + len(canonical_json(mark))
    out.write(text[done:])
    out.flush()
