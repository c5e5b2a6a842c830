"""The nginx-debian package set (examples/nginx-debian/nginx-debian.lock) built three ways in the
same run: kiln with a cold download cache, kiln with a warm download cache (everything else wiped:
no extracted roots, no build cache, no output), and `mmdebstrap` + packing its tree as a gzip OCI
layer (cold, and warm with apt's archive cache kept between runs through mmdebstrap's sync hooks).
Also the time to download the same .debs alone (curl, 6 in parallel, like kiln), and the sizes.
Prints wall times and ratios; nothing is asserted.

mmdebstrap cannot install with `--variant=custom` and nginx-light alone: dpkg and the shell that
maintainer scripts need must be in the tree, so it runs `--variant=essential --include=nginx-light`,
the smallest tree that installs the same packages the Debian way. mkosi is not installed here.

    .venv/bin/python bench/debian.py [--runs N] [--skip-mmdebstrap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "examples" / "nginx-debian" / "nginx-debian.yaml"
KILN = [sys.executable, "-m", "kiln"]


def run(*cmd: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def timed(*cmd: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = run(*cmd, env=env)
    return time.perf_counter() - t0, out


def kiln_build(work: Path, cache: Path, build_cache: Path) -> tuple[float, dict[str, object]]:
    env = dict(os.environ, KILN_CACHE=str(cache), KILN_CACHE_DIR=str(build_cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    seconds, out = timed(
        *KILN, "build", str(MANIFEST), "-o", str(work / "out"), "--force", "--json", "-q", env=env
    )
    return seconds, json.loads(out)


def tree_bytes(layout: Path, digest: str) -> int:
    info = json.loads(run(*KILN, "inspect", str(layout), "--json"))
    del digest
    return sum(int(f.get("size", 0)) for f in info["files"] if f["type"] == "file")


def download_only(work: Path, lock: dict[str, object]) -> float:
    mirror = lock["request"]["mirror"]  # type: ignore[index]
    pkgs = lock["packages"]["amd64"]  # type: ignore[index]
    args: list[str] = []
    target = work / "curl"
    target.mkdir()
    for p in pkgs:  # type: ignore[attr-defined]
        args += [f"{mirror}/{p['filename']}", "-o", str(target / f"{p['sha256']}.deb")]
    seconds, _ = timed("curl", "-sSf", "--parallel", "--parallel-max", "6", *args)
    shutil.rmtree(target)
    return seconds


def pack_layer(tar: Path) -> tuple[float, int]:
    """gzip the tree's tar as an OCI layer, with the compressor and level kiln uses (ISA-L, 2)."""
    from isal import igzip

    t0 = time.perf_counter()
    out = tar.with_suffix(".tar.gz")
    with open(tar, "rb") as src, igzip.open(out, "wb", compresslevel=2) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return time.perf_counter() - t0, out.stat().st_size


def mmdebstrap(work: Path, apt_cache: Path | None) -> tuple[float, float, int, int]:
    tar = work / "mm" / "root.tar"
    tar.parent.mkdir(exist_ok=True)
    tar.unlink(missing_ok=True)
    hooks: list[str] = []
    if apt_cache is not None:
        apt_cache.mkdir(exist_ok=True)
        hooks = [
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/'
            f' && cp -a {apt_cache}/. "$1"/var/cache/apt/archives/',
            "--skip=download/empty",
            f'--customize-hook=cp -a "$1"/var/cache/apt/archives/. {apt_cache}/',
        ]
    seconds, _ = timed(
        "mmdebstrap",
        "--quiet",
        "--variant=essential",
        "--include=nginx-light",
        *hooks,
        "bookworm",
        str(tar),
        "http://deb.debian.org/debian",
    )
    pack_seconds, packed = pack_layer(tar)
    return seconds, pack_seconds, tar.stat().st_size, packed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-mmdebstrap", action="store_true")
    args = ap.parse_args()
    lock = json.loads(MANIFEST.with_suffix(".lock").read_text())
    n = len(lock["packages"]["amd64"])
    total = sum(p["size"] for p in lock["packages"]["amd64"])
    print(f"package set: {n} packages, {total / 1e6:.1f} MB of .debs (examples/nginx-debian)")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-debian-") as tmp:
        work = Path(tmp)
        dl = statistics.median(download_only(work, lock) for _ in range(args.runs))
        cold, warm, unchanged = [], [], []
        result: dict[str, object] = {}
        for i in range(args.runs):
            cache, build_cache = work / f"cache{i}", work / f"bc{i}"
            s, result = kiln_build(work, cache, build_cache)
            cold.append(s)
            shutil.rmtree(cache / "roots")
            shutil.rmtree(build_cache, ignore_errors=True)
            shutil.rmtree(work / "out")
            s, again = kiln_build(work, cache, build_cache)
            assert again["digest"] == result["digest"], "a warm build changed the digest"
            warm.append(s)
            s, _ = kiln_build(work, cache, build_cache)
            unchanged.append(s)
        kiln_cold, kiln_warm = statistics.median(cold), statistics.median(warm)
        image = int(result["size"])  # type: ignore[call-overload]
        tree = tree_bytes(work / "out", str(result["digest"]))
        print(f"download the .debs alone (curl x6): {dl:.2f} s")
        print(f"kiln cold download cache:           {kiln_cold:.2f} s ({kiln_cold / dl:.1f}x the download)")
        print(f"  of which the downloads (cold - warm): {kiln_cold - kiln_warm:.2f} s")
        print(f"kiln warm download cache:           {kiln_warm:.2f} s")
        print(f"kiln unchanged rebuild:             {statistics.median(unchanged):.2f} s")
        print(f"kiln image: {image / 1e6:.1f} MB compressed, tree {tree / 1e6:.1f} MB")
        if args.skip_mmdebstrap or shutil.which("mmdebstrap") is None:
            return
        mm_cold, pack_cold, mm_tar, mm_packed = mmdebstrap(work, None)
        apt_cache = work / "apt-cache"
        mmdebstrap(work, apt_cache)  # fill apt's cache
        mm_warm, pack_warm, _, _ = mmdebstrap(work, apt_cache)
        mm_cold_total, mm_warm_total = mm_cold + pack_cold, mm_warm + pack_warm
        print(f"mmdebstrap + pack, cold:            {mm_cold_total:.2f} s ({mm_cold:.2f} + {pack_cold:.2f})")
        print(f"mmdebstrap + pack, warm apt cache:  {mm_warm_total:.2f} s ({mm_warm:.2f} + {pack_warm:.2f})")
        print(f"mmdebstrap tree {mm_tar / 1e6:.1f} MB, packed layer {mm_packed / 1e6:.1f} MB")
        print(f"ratio warm: mmdebstrap+pack / kiln = {mm_warm_total / kiln_warm:.1f}x")
        print(f"ratio cold: mmdebstrap+pack / kiln = {mm_cold_total / kiln_cold:.1f}x")
        print(f"size: kiln image / mmdebstrap tree = {image / mm_tar:.3f}")
        print(f"size: kiln tree / mmdebstrap tree = {tree / mm_tar:.3f}")


if __name__ == "__main__":
    main()
