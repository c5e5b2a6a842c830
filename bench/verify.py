"""How fast kiln verifies a signed image, against plain sha256 over the same bytes (issue 3, acc. 6).

Builds a signed image of about ``--size`` bytes (default 1 GiB, in ``--layers`` random layers
written straight into a temporary OCI layout), then times, alternately and ``--rounds`` times each:

- ``verify_image(..., check_blobs=True)``: the signature checks plus every config and layer blob
  streamed through sha256 (what the agent does before it unpacks anything);
- ``hashlib.sha256`` over the same blob files, read in the same way, on one core.

Both run with the files in the page cache (a first read warms it), so the comparison is about the
hashing path, not the disk. Prints both speeds and the ratio; the target is >= 0.70. Memory stays
flat (everything streams) and the temporary directory is removed at the end.

    .venv/bin/python bench/verify.py [--size BYTES] [--layers N] [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from signing.image import sign_image, verify_image
from signing.signer import LocalSigner
from signing.store import LayoutStore
from signing.verify import Identity

_CHUNK = 1 << 20
_POOL = 64 << 20  # random bytes reused at shifting offsets: sha256 does not care, urandom is slow
REPOSITORY = "bench.example/verify"


def build(root: Path, *, size: int, layers: int) -> tuple[LayoutStore, Descriptor, LocalSigner]:
    layout = OCILayout.create(root)
    pool = os.urandom(_POOL)
    per_layer = size // layers
    descs = []
    for n in range(layers):
        with layout.blob_writer(durable=False) as sink:
            sink.write(n.to_bytes(8, "big"))  # distinct layers even when the pool repeats
            written, offset = 8, (n * 7919) % _POOL
            while written < per_layer:
                take = min(_CHUNK, per_layer - written, _POOL - offset)
                sink.write(memoryview(pool)[offset : offset + take])
                written += take
                offset = (offset + take) % _POOL
        descs.append(Descriptor(media_type=MediaType.OCI_LAYER_TAR, digest=sink.digest, size=sink.size))
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in descs]},
        }
    )
    cdig = layout.write_blob(config)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=cdig, size=len(config)), layers=tuple(descs)
    )
    raw = manifest.to_bytes()
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(raw), size=len(raw))
    layout.tag(desc, "v1")
    store = LayoutStore(layout)
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()))
    sign_image(store, desc, signer, reference=REPOSITORY)
    return store, desc, signer


def blob_paths(store: LayoutStore, desc: Descriptor) -> list[Path]:
    manifest = OCIManifest.from_bytes(store.read_blob(desc.digest))
    return [store.layout.blob_path(d.digest) for d in (manifest.config, *manifest.layers)]


def hash_baseline(paths: list[Path]) -> list[Digest]:
    out = []
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
        out.append(Digest(h.hexdigest()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 30, help="image size in bytes (default 1 GiB)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each (best is kept)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary layout")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-verify-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        store, desc, signer = build(tmp / "layout", size=args.size, layers=args.layers)
        paths = blob_paths(store, desc)
        total = sum(p.stat().st_size for p in paths)
        print(
            f"built a signed image of {total / 1e6:.0f} MB in {len(paths)} blobs "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        identity = Identity(repository=REPOSITORY)
        hash_baseline(paths)  # warm the page cache

        def run_verify() -> None:
            verify_image(store, desc, identity=identity, keys=[signer.public_key], check_blobs=True)

        def run_hash() -> None:
            hash_baseline(paths)

        best = {"verify_image": float("inf"), "hashlib.sha256": float("inf")}
        for _ in range(args.rounds):
            for name, fn in (("hashlib.sha256", run_hash), ("verify_image", run_verify)):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        speeds = {name: total / seconds / 1e6 for name, seconds in best.items()}
        for name, speed in speeds.items():
            print(f"{name:>15}: {speed:7.0f} MB/s  (best of {args.rounds}: {best[name]:.2f}s)")
        ratio = speeds["verify_image"] / speeds["hashlib.sha256"]
        verdict = "ok" if ratio >= 0.70 else "BELOW TARGET"
        print(f"{'ratio':>15}: {ratio:7.2f}  (target >= 0.70: {verdict})")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{'peak RSS':>15}: {rss:7.0f} MB")
        return 0 if ratio >= 0.70 else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
