"""The floor a build is measured against: tar a directory, gzip it with ISA-L and sha256 both the
tar and the compressed bytes, in one Python process, doing nothing else (no manifest, no layout,
no SBOM). With ``--threads 2`` the compression and its hash run on a second thread, fed in 1 MiB
pieces, the way a two-core builder would split the work. Prints the seconds it took inside the
process; the benches time the whole process from outside, like every other tool.

    python bench/floor.py DIR [--threads 1|2] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import sys
import tarfile
import threading
import time
from pathlib import Path

from isal import igzip


class _Gzip:
    """Compress into ``out`` and hash the compressed bytes."""

    def __init__(self, out_path: str) -> None:
        self.out = open(out_path, "wb")  # noqa: SIM115 - closed in close()
        self.hash = hashlib.sha256()
        self.gz = igzip.IGzipFile(fileobj=self, mode="wb", compresslevel=2, mtime=0)  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> int:  # the compressed side
        self.hash.update(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.gz.close()
        self.out.close()


class _Tee:
    """The tar side: hash the tar bytes, hand them to the compressor (here, or on a thread)."""

    def __init__(self, gz: _Gzip, threads: int) -> None:
        self.gz = gz
        self.hash = hashlib.sha256()
        self.buf = bytearray()
        self.q: queue.Queue[bytes | None] | None = None
        if threads > 1:
            self.q = queue.Queue(maxsize=4)
            self.t = threading.Thread(target=self._run, daemon=True)  # a failed tar must not hang
            self.t.start()

    def _run(self) -> None:
        assert self.q is not None
        while (piece := self.q.get()) is not None:
            self.gz.gz.write(piece)

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        if self.q is None:
            self.gz.gz.write(data)
        else:
            self.buf += data
            if len(self.buf) >= 1 << 20:
                self.q.put(bytes(self.buf))
                self.buf.clear()
        return len(data)

    def close(self) -> None:
        if self.q is not None:
            if self.buf:
                self.q.put(bytes(self.buf))
            self.q.put(None)
            self.t.join()
        self.gz.close()


def floor(src: Path, out: str, threads: int) -> tuple[str, str]:
    gz = _Gzip(out)
    tee = _Tee(gz, threads)
    with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.add(str(src), arcname=".")
    tee.close()
    return tee.hash.hexdigest(), gz.hash.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--threads", type=int, choices=(1, 2), default=1)
    ap.add_argument("--out", default="/dev/null")
    args = ap.parse_args()
    t0 = time.perf_counter()
    floor(args.src, args.out, args.threads)
    print(f"{time.perf_counter() - t0:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
