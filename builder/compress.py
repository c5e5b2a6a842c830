"""Layer compression with pinned, recorded libraries.

- gzip: ISA-L's igzip through ``isal`` (levels 0-3), raw deflate framed by a fixed gzip header
  (mtime 0, no file name, XFL 0, OS 255 "unknown"), so the bytes depend only on the input, the level
  and the isal version.
- zstd: ``zstandard`` (libzstd), single-threaded, content size and checksum written.
- none: the tar itself.

:attr:`Compressor.tag` names library, version and level (``isal-1.9.1/igzip-2``); the builder puts
it in the ``dev.kiln.compression`` annotation of every layer and of the manifest, so a compressor
upgrade shows up as a visible, versioned change instead of silently different digests.
"""

from __future__ import annotations

import queue
import struct
import threading
from dataclasses import dataclass
from typing import Any

import isal
import zstandard
from isal import isal_zlib

from builder.errors import BuildError
from builder.tarwriter import Sink
from manifests.mediatypes import Compression, MediaType

__all__ = ["Compressor", "CompressingSink", "BackgroundSink", "LEVELS", "ANNOTATION"]

ANNOTATION = "dev.kiln.compression"
LEVELS: dict[Compression, range] = {
    Compression.GZIP: range(4),
    Compression.ZSTD: range(1, 20),
    Compression.NONE: range(1),
}
_GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


@dataclass(frozen=True, slots=True, kw_only=True)
class Compressor:
    compression: Compression
    level: int

    @classmethod
    def create(cls, compression: Compression, level: int | None = None) -> Compressor:
        compression = Compression(compression)
        lvl = compression.default_level if level is None else level
        allowed = LEVELS[compression]
        if isinstance(lvl, bool) or not isinstance(lvl, int) or lvl not in allowed:
            raise BuildError(
                f"compression level {lvl!r} is out of range for {compression}",
                hint=f"use {allowed.start}-{allowed.stop - 1}",
            )
        return cls(compression=compression, level=lvl)

    @property
    def media_type(self) -> MediaType:
        return self.compression.layer_media_type

    @property
    def library(self) -> str:
        if self.compression is Compression.GZIP:
            return f"isal-{isal.__version__}"
        if self.compression is Compression.ZSTD:
            return f"zstandard-{zstandard.__version__}/libzstd-{'.'.join(map(str, zstandard.ZSTD_VERSION))}"
        return "none"

    @property
    def tag(self) -> str:
        """``library-version/codec-level``, recorded in the ``dev.kiln.compression`` annotation."""
        if self.compression is Compression.GZIP:
            return f"{self.library}/igzip-{self.level}"
        if self.compression is Compression.ZSTD:
            return f"{self.library}/zstd-{self.level}"
        return "none"

    def sink(self, out: Sink, *, size: int | None = None) -> CompressingSink:
        """A sink that compresses into ``out``; ``size`` (the input size) goes into zstd frames."""
        return CompressingSink(self, out, size=size)


class CompressingSink:
    """Write uncompressed bytes in; compressed bytes go to ``out``. Call :meth:`finish` once."""

    def __init__(self, comp: Compressor, out: Sink, *, size: int | None) -> None:
        self._out = out
        self._kind = comp.compression
        self._crc = 0
        self._isize = 0
        self._obj: Any = None
        if self._kind is Compression.GZIP:
            self._obj = isal_zlib.compressobj(comp.level, isal_zlib.DEFLATED, -15)
            out.write(_GZIP_HEADER)
        elif self._kind is Compression.ZSTD:
            cctx = zstandard.ZstdCompressor(
                level=comp.level, write_content_size=True, write_checksum=True, threads=0
            )
            self._obj = cctx.compressobj(size=size if size is not None else -1)

    def write(self, data: bytes) -> None:
        if self._kind is Compression.NONE:
            self._out.write(data)
            return
        if self._kind is Compression.GZIP:
            self._crc = isal_zlib.crc32(data, self._crc)
            self._isize += len(data)
        chunk = self._obj.compress(data)
        if chunk:
            self._out.write(chunk)

    def finish(self) -> None:
        if self._kind is Compression.NONE:
            return
        tail = self._obj.flush()
        if tail:
            self._out.write(tail)
        if self._kind is Compression.GZIP:
            self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._isize & 0xFFFFFFFF))


class BackgroundSink:
    """Hand writes to ``inner`` on a second thread, in fixed ``chunk``-byte pieces.

    Writing a layer is two halves of similar cost: reading files, framing the tar and hashing it
    (the caller's thread), then compressing and hashing the result (``inner``). The compressors and
    sha256 release the GIL, so running the halves on two threads uses two cores. The pieces are
    always ``chunk`` bytes (the last one shorter) whatever the caller's write sizes, so the
    compressor sees the same calls, and writes the same bytes, for the same tar stream.
    Call :meth:`finish` once; it re-raises anything the second thread raised.
    """

    def __init__(self, inner: CompressingSink, *, chunk: int = 1 << 20, depth: int = 4) -> None:
        self._inner = inner
        self._chunk = chunk
        self._buf = bytearray()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)  # None: no more
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kiln-compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (piece := self._queue.get()) is not None:
                self._inner.write(piece)
            self._inner.finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by finish()
            self._error = exc
            while self._queue.get() is not None:  # unblock the producer, then stop
                pass

    def _put(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(piece)

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= self._chunk:
            self._put(bytes(self._buf[: self._chunk]))
            del self._buf[: self._chunk]

    def finish(self) -> None:
        try:
            if self._buf and self._error is None:
                self._queue.put(bytes(self._buf))
        finally:
            self._buf.clear()
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the second thread after a failure on the caller's side (its output is discarded)."""
        self._buf.clear()
        self._queue.put(None)
        self._thread.join()
