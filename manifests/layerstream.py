"""The one reader of untrusted layer bytes: hashing, counting and size-capped, stdlib only.

Both places that read layers someone else made use it: the agent's unpacker
(:mod:`agent.unpack`) and the builder's image inspector (:mod:`builder.inspect`). A layer is read
through two of them: one over the compressed blob (its sha256 is the layer digest) and one over the
decompressed tar (its sha256 is the ``diff_id``)::

    raw = HashingReader(fh, limit=size, over_limit=...)
    plain = HashingReader(open_layer(raw, media_type, DECOMPRESSORS))
    ... read the tar from plain ...
    plain.drain(); raw.drain()
    raw.hexdigest == digest.hex and plain.hexdigest == diff_id.hex

The decompressors are passed in (``media type -> (stream -> stream)``), so this module needs no
compression library; an uncompressed tar media type needs none. Refusals are the caller's: the
limit's error comes from ``over_limit`` and a shared budget (several layers of one image) is kept
by ``on_read``, which sees the size of every read and raises to refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Protocol

from manifests.errors import DocumentError
from manifests.mediatypes import MediaType

__all__ = ["Readable", "Decompressor", "HashingReader", "open_layer"]

_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


Decompressor = Callable[["HashingReader"], Readable]


class HashingReader:
    """Reads from ``raw``, hashing (sha256) and counting every byte.

    Past ``limit`` bytes it raises ``over_limit(limit)``; ``on_read(n)`` is called with the size of
    every read (before the bytes are hashed or returned) and may raise. It is a readable binary
    file object as far as ``gzip``-like readers need (``read``, ``readinto``, ``readable``).
    """

    def __init__(
        self,
        raw: Readable,
        *,
        limit: int | None = None,
        over_limit: Callable[[int], BaseException] | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.raw = raw
        self.n = 0
        self._h = hashlib.sha256()
        self._limit = limit
        self._over_limit = over_limit or (lambda cap: DocumentError(f"layer exceeds {cap} bytes"))
        self._on_read = on_read

    @property
    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.n += len(data)
        if self._limit is not None and self.n > self._limit:
            raise self._over_limit(self._limit)
        if self._on_read is not None:
            self._on_read(len(data))
        self._h.update(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read (and hash) what is left."""
        while self.read(_CHUNK):
            pass


def open_layer(raw: HashingReader, media_type: str, decompressors: Mapping[str, Decompressor]) -> Readable:
    """The uncompressed tar stream of a layer read through ``raw``."""
    if media_type == MediaType.OCI_LAYER_TAR:
        return raw
    decompress = decompressors.get(media_type)
    if decompress is None:
        raise DocumentError(f"unsupported layer media type {media_type!r}")
    return decompress(raw)
