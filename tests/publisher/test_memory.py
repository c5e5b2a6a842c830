"""Blobs stream: pushing and pulling ~200 MB keeps the client's peak RSS flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from manifests.digest import sha256_file
from tests.publisher.conftest import Target

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
SIZE = 200 * MIB

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from manifests.digest import Digest
    from publisher.client import BlobSource, RegistryClient

    host, path, digest, size, out = sys.argv[1:6]
    src = BlobSource(digest=Digest.parse(digest), size=int(size), path=Path(path))
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {}
    with RegistryClient(host, insecure=True, monolithic_threshold=1 << 40) as client:
        client.ping()
        report["base"] = peak()
        assert client.push_source("mem/mono", src).action == "uploaded"
        report["monolithic"] = peak()
    with RegistryClient(host, insecure=True, chunk_size=32 << 20, monolithic_threshold=0) as client:
        assert client.push_source("mem/chunked", src).action == "uploaded"
        report["chunked"] = peak()
        client.pull_blob("mem/chunked", src.digest, Path(out))
        report["pull"] = peak()
    print(json.dumps(report))
    """
)


def _sparse_random(path: Path) -> None:
    """Random 1 MiB blocks every 4 MiB, holes between them: cheap to make, still all distinct."""
    with path.open("wb") as fh:
        fh.truncate(SIZE)
        for off in range(0, SIZE, 4 * MIB):
            fh.seek(off)
            fh.write(os.urandom(MIB))


def test_push_and_pull_200_mb_in_flat_memory(plain_registry: Target, tmp_path: Path) -> None:
    blob = tmp_path / "big"
    _sparse_random(blob)
    digest, size = sha256_file(blob)
    out = tmp_path / "pulled"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            plain_registry.registry.host,
            str(blob),
            str(digest),
            str(size),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = {k: (v - report["base"]) / MIB for k, v in report.items() if k != "base"}
    print(f"peak RSS {report['base'] / MIB:.0f} MiB before; growth MiB: {growth}")
    # A buffered 200 MB body would add at least 200 MiB; streaming adds a few blocks of 1 MiB.
    assert all(g < 48 for g in growth.values()), growth
    assert sha256_file(out) == (digest, size)
    assert digest in plain_registry.registry.blob_digests()
