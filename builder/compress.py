"""Layer compression with pinned, recorded libraries, in parallel and deterministic.

The tar stream is cut into fixed blocks of :data:`BLOCK_SIZE` bytes (the last one shorter), each
block is compressed on its own, on every core, and the results are joined in order into one valid
stream (ADR 0021):

- gzip: one gzip member per block (RFC 1952 allows any number; every gzip reader takes them all).
  Each member is ISA-L's igzip raw deflate (``isal``, levels 0-3) framed by a fixed header
  (mtime 0, no file name, XFL 0, OS 255 "unknown") and the block's CRC-32 and size.
- zstd: one ``zstandard`` (libzstd) frame per block, single-threaded, with content size and checksum.
- none: the tar itself.

The bytes depend only on the tar stream, the block size, the codec's level and the library's
version: never on how many threads ran, in which order they finished, or how the caller sliced its
writes. :attr:`Compressor.tag` names all of it (``isal-1.9.1/igzip-2/blocks-1MiB``); the builder
puts it in the ``dev.kiln.compression`` annotation of every layer and of the manifest, so a change
of library or scheme shows up as a visible, versioned change instead of silently different digests.

The compressors release the GIL, so plain threads use every core. Writing the result (and hashing
it, which the blob writer does) happens on one more thread, off the caller's critical path; so
does hashing the uncompressed stream (the layer's diff_id) when the caller asks for it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import isal
from isal import isal_zlib

from builder.errors import BuildError
from builder.tarwriter import Sink
from manifests.digest import Digest
from manifests.mediatypes import Compression, MediaType

if TYPE_CHECKING:
    import zstandard

__all__ = ["Compressor", "CompressingSink", "LEVELS", "ANNOTATION", "BLOCK_SIZE", "compress_block"]

ANNOTATION = "dev.kiln.compression"
LEVELS: dict[Compression, range] = {
    Compression.GZIP: range(4),
    Compression.ZSTD: range(1, 20),
    Compression.NONE: range(1),
}
BLOCK_SIZE = 1 << 20  # of tar stream per gzip member / zstd frame; part of the recorded tag
_MAX_WORKERS = 32  # in-flight blocks are bounded by this, so memory stays flat on big machines
# Blocks queued between the tar writer and the writer thread: at least this many, so that neither
# waits on the other's hiccups (at 4, a 1 GB layer on 2 cores ran 7% slower); on a big machine the
# workers plus two, as before, so memory stays flat.
_MIN_IN_FLIGHT = 16
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
            import zstandard  # only for zstd layers: its import (and platform's) is ~4 ms of every build

            return f"zstandard-{zstandard.__version__}/libzstd-{'.'.join(map(str, zstandard.ZSTD_VERSION))}"
        return "none"

    @property
    def scheme(self) -> str:
        """How the stream is cut (``blocks-1MiB``); the cache key's library carries it too."""
        return f"blocks-{_size_name(BLOCK_SIZE)}"

    @property
    def tag(self) -> str:
        """``library-version/codec-level/scheme``, recorded in the ``dev.kiln.compression`` annotation."""
        if self.compression is Compression.GZIP:
            return f"{self.library}/igzip-{self.level}/{self.scheme}"
        if self.compression is Compression.ZSTD:
            return f"{self.library}/zstd-{self.level}/{self.scheme}"
        return "none"

    def sink(
        self,
        out: Sink,
        *,
        size: int | None = None,
        workers: int | None = None,
        hash_input: bool = False,
        big_buffers: bool = False,
    ) -> CompressingSink:
        """A sink that compresses into ``out``.

        ``size`` is accepted for callers that know it and unused (every frame records its own).
        ``workers``: ``None`` shares one pool of a thread per core; a number gives this sink its
        own pool (1: compress on the writing thread). ``hash_input``: also sha256 the
        uncompressed stream, on the writer thread (:meth:`CompressingSink.finish_hashed`).
        ``big_buffers``: the stream is mostly big files, read in 1 MiB chunks: tune the allocator
        for them first (:func:`_keep_buffers`).
        """
        del size
        if big_buffers:
            _keep_buffers()
        return CompressingSink(self, out, workers=workers, hash_input=hash_input)


def _size_name(n: int) -> str:
    return f"{n >> 20}MiB" if n % (1 << 20) == 0 else f"{n >> 10}KiB"


_local = threading.local()


def _zstd(level: int) -> zstandard.ZstdCompressor:
    """A compressor per thread and level (a ZstdCompressor is not safe to share between threads)."""
    import zstandard

    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True, threads=0
        )
    return cctx


def compress_block(comp: Compressor, block: bytes) -> bytes:
    """One block, compressed on its own: a complete gzip member or zstd frame (or the block)."""
    if comp.compression is Compression.GZIP:
        body = isal_zlib.compress(block, comp.level, -15)
        tail = struct.pack("<II", isal_zlib.crc32(block) & 0xFFFFFFFF, len(block) & 0xFFFFFFFF)
        return b"".join((_GZIP_HEADER, body, tail))
    if comp.compression is Compression.ZSTD:
        compressed: bytes = _zstd(comp.level).compress(block)
        return compressed
    return block


_allocator_tuned = False


def _keep_buffers() -> None:
    """Let glibc's malloc keep the 1 MiB buffers a big layer churns through, once per process.

    Every block, file chunk and compressed frame is a fresh buffer of about 1 MiB, allocated on
    one thread and freed on another. glibc gives large buffers back to the kernel (``munmap``, or
    trimming the heap's top past a threshold), so many of them are paid again in page faults,
    and an unmap interrupts the other cores to flush their TLBs. Fixing the mmap threshold at
    32 MiB (the most every glibc accepts) and raising the trim threshold keeps them in the heap
    for reuse: on 2 cores a 1 GB layer took about 4% less CPU and wall time. Memory freed later
    stays with the process until it exits, which is why only big-file layers ask for this.
    Python has no binding for ``mallopt``: ctypes calls it; without glibc it is skipped, and a
    glibc that refuses the first setting is left as it was.
    """
    global _allocator_tuned  # noqa: PLW0603 - a process-wide setting, made once
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        import ctypes  # only big layers pay for the import

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return  # musl and others: their mallopt is a stub or means something else
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    # Setting either fixes glibc's sliding mmap threshold: set the trim threshold only if the
    # mmap threshold took, or every buffer would be mapped and unmapped at the old 128 KiB.
    if mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1:
        mallopt(_M_TRIM_THRESHOLD, 256 << 20)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>

_pool_lock = threading.Lock()
_shared_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    """Threads for the shared pool: the cores this process may run on (at most 32)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores))


def _pool() -> ThreadPoolExecutor:
    global _shared_pool  # noqa: PLW0603 - one pool per process, created on first use
    with _pool_lock:
        if _shared_pool is None:
            _shared_pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="kiln-compress")
        return _shared_pool


# A block and its compression under way (None: compress it on the writer thread); None: the end.
_Item = tuple[bytes, Future[bytes] | None] | None


class CompressingSink:
    """Write uncompressed bytes in (any slicing); compressed bytes go to ``out`` in order.

    Full blocks are handed to the compressing pool as they fill; one writer thread takes the
    results in block order and writes them to ``out``. Call :meth:`finish` once at the end (it
    re-raises whatever failed on another thread), or :meth:`abort` after a failure of your own.
    """

    def __init__(
        self, comp: Compressor, out: Sink, *, workers: int | None = None, hash_input: bool = False
    ) -> None:
        self._comp = comp
        self._out = out
        self._input_hash = hashlib.sha256() if hash_input else None
        # The block being gathered: the written pieces (no copy yet) and their total length; a
        # full block is joined into one bytes object, the only copy the sink makes.
        self._pieces: list[bytes | memoryview] = []
        self._have = 0
        self._blocks = 0
        self._own_pool: ThreadPoolExecutor | None = None
        self._pool: ThreadPoolExecutor | None = None
        n = _workers() if workers is None else workers
        if comp.compression is not Compression.NONE and n > 1:
            if workers is None:
                self._pool = _pool()
            else:
                self._pool = self._own_pool = ThreadPoolExecutor(
                    max_workers=n, thread_name_prefix="kiln-compress"
                )
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(_MIN_IN_FLIGHT, n + 2))
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kiln-compress-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        comp, out, input_hash = self._comp, self._out, self._input_hash
        try:
            while (item := self._queue.get()) is not None:
                block, future = item
                if input_hash is not None:
                    input_hash.update(block)
                out.write(future.result() if future is not None else compress_block(comp, block))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by finish()
            self._error = exc
            while (item := self._queue.get()) is not None:  # unblock the producer, then stop
                if item[1] is not None:
                    item[1].cancel()

    def _put(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._blocks += 1
        future = self._pool.submit(compress_block, self._comp, block) if self._pool is not None else None
        self._queue.put((block, future))

    def write(self, data: bytes) -> None:
        """Take ``data`` (bytes; anything else is copied first, as the pieces are kept until their
        block is full)."""
        if type(data) is not bytes:
            data = bytes(data)
        have = self._have
        if have + len(data) < BLOCK_SIZE:
            if data:
                self._pieces.append(data)
                self._have = have + len(data)
            return
        pieces = self._pieces
        view = memoryview(data)
        while have + len(view) >= BLOCK_SIZE:
            take = BLOCK_SIZE - have
            pieces.append(view[:take])
            block = b"".join(pieces)
            pieces.clear()
            have = self._have = 0
            view = view[take:]
            self._put(block)
        if view:
            pieces.append(view)
            have = len(view)
        self._have = have

    def finish(self) -> None:
        try:
            if self._error is None and (self._have or self._blocks == 0):
                self._put(b"".join(self._pieces))  # the short last block; an empty stream is one empty block
        finally:
            self._stop()
        if self._error is not None:
            raise self._error

    def finish_hashed(self) -> Digest:
        """:meth:`finish`, then the sha256 of everything written in (needs ``hash_input``)."""
        if self._input_hash is None:
            raise ValueError("this sink was not asked to hash its input")
        self.finish()
        return Digest(self._input_hash.hexdigest())

    def abort(self) -> None:
        """Stop the writer thread after a failure on the caller's side (the output is discarded)."""
        self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pieces.clear()
        self._have = 0
        self._queue.put(None)
        self._thread.join()
        if self._own_pool is not None:
            self._own_pool.shutdown(wait=True, cancel_futures=True)
