"""Build the same python-web-sized tree (~60 MB, ~1,400 files: the host's /usr/lib/python3.11 and
the python3.11 binary) with kiln, with `buildah build` + `buildah push oci:`, and with `docker build` +
`docker save` on a private engine, in the same run; cold (empty caches) and warm (unchanged rebuild).
Also in the same run: the floor (bench/floor.py: tar + ISA-L gzip + sha256 of the same tree in one
Python process, on one thread and on two) and `python -c pass`, the cost of starting Python at all.
Prints wall times (medians) and the ratios. Nothing here asserts a time: read the numbers.

    .venv/bin/python bench/build.py [--runs N] [--skip-docker] [--skip-buildah]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kiln.testing import private_dockerd

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: bench-python
version: 1.0.0
contents:
  - tree: {src: rootfs, dst: /}
entrypoint: [/usr/bin/python3.11]
layers: {strategy: single, max: 1}
compression: gzip
"""


def prepare(work: Path) -> Path:
    ctx = work / "ctx"
    rootfs = ctx / "rootfs"
    shutil.copytree("/usr/lib/python3.11", rootfs / "usr/lib/python3.11", symlinks=True)
    (rootfs / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/python3.11", rootfs / "usr/bin/python3.11")
    # Debian's sitecustomize.py is a symlink out of the tree: drop it, as every tool would copy it.
    for link in rootfs.rglob("*"):
        if link.is_symlink() and not link.resolve().is_relative_to(rootfs.resolve()):
            link.unlink()
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY rootfs/ /\n")
    (ctx / "image.yaml").write_text(MANIFEST)
    files = [p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()]
    size = sum(p.stat().st_size for p in files)
    print(f"content: {len(files)} files, {size / 1e6:.1f} MB")
    return ctx


CPU: dict[str, list[float]] = {}  # label -> CPU seconds (user + system) of the waited-for processes


def timed(fn: Callable[[], None], label: str | None = None) -> float:
    """Wall seconds of ``fn``; with ``label``, its children's CPU seconds are kept in CPU[label]
    (a ratio of CPU times is steadier than one of wall times on a loaded machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if label is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        CPU.setdefault(label, []).append(cpu)
    return wall


def run(*cmd: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def kiln_env() -> dict[str, str]:
    """kiln as installed: bytecode cached (pip compiles it at install time; some shells disable
    writing it, which would make every run recompile kiln's modules)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def bench_kiln(ctx: Path, work: Path, runs: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    env = kiln_env()
    # Prime the bytecode cache once, outside the timings.
    run(
        sys.executable,
        "-m",
        "kiln",
        "-q",
        "build",
        str(ctx / "image.yaml"),
        "-o",
        str(work / "prime"),
        "--no-cache",
        env=env,
    )
    for i in range(runs):
        cache = work / f"kiln-cache-{i}"
        out = work / f"kiln-out-{i}"

        def build(cache: Path = cache, out: Path = out) -> None:
            run(
                sys.executable,
                "-m",
                "kiln",
                "-q",
                "build",
                str(ctx / "image.yaml"),
                "-o",
                str(out),
                "--force",
                "--cache-dir",
                str(cache),
                env=env,
            )

        cold.append(timed(build, "kiln cold"))
        warm.append(timed(build, "kiln warm"))
    return cold, warm


def bench_floor(ctx: Path, runs: int) -> dict[str, list[float]]:
    """The in-process floor on one and two threads, and bare interpreter start-up."""
    env = kiln_env()
    floor = str(REPO / "bench" / "floor.py")
    found: dict[str, list[float]] = {"floor (1 thread)": [], "floor (2 threads)": [], "python -c pass": []}
    for _ in range(runs):
        found["floor (1 thread)"].append(
            timed(
                lambda: run(sys.executable, floor, str(ctx / "rootfs"), "--threads", "1", env=env), "floor 1"
            )
        )
        found["floor (2 threads)"].append(
            timed(
                lambda: run(sys.executable, floor, str(ctx / "rootfs"), "--threads", "2", env=env), "floor 2"
            )
        )
        found["python -c pass"].append(timed(lambda: run(sys.executable, "-c", "pass", env=env), "pass"))
    return found


def bench_buildah(ctx: Path, work: Path, runs: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for i in range(runs):
        store = work / f"buildah-{i}"
        base = [
            "buildah",
            "--root",
            str(store / "root"),
            "--runroot",
            str(store / "run"),
            "--storage-driver",
            "overlay",
        ]

        def build(base: list[str] = base, i: int = i) -> None:
            run(
                *base,
                "build",
                "--layers",
                "-q",
                "-f",
                str(ctx / "Containerfile"),
                "-t",
                "localhost/bench:1",
                str(ctx),
            )
            out = work / f"buildah-out-{i}"
            shutil.rmtree(out, ignore_errors=True)
            run(*base, "push", "-q", "localhost/bench:1", f"oci:{out}:1.0.0")

        cold.append(timed(build))
        warm.append(timed(build))
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(store)], capture_output=True, check=False)
        shutil.rmtree(store, ignore_errors=True)
    return cold, warm


def bench_docker(ctx: Path, work: Path, runs: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    with private_dockerd() as engine:
        env = {**os.environ, "DOCKER_HOST": engine.host, "DOCKER_BUILDKIT": "0"}
        for i in range(runs):
            tag = f"bench-{i}:1"

            def build(tag: str = tag, i: int = i) -> None:
                run("docker", "build", "-q", "-f", str(ctx / "Containerfile"), "-t", tag, str(ctx), env=env)
                run("docker", "save", "-o", str(work / f"docker-{i}.tar"), tag, env=env)

            cold.append(timed(build))
            warm.append(timed(build))
            run("docker", "rmi", "-f", tag, env=env)
            run("docker", "builder", "prune", "-af", env=env)
    return cold, warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-docker", action="store_true")
    ap.add_argument("--skip-buildah", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-build-", dir="/var/tmp"))
    try:
        ctx = prepare(work)
        results: dict[str, tuple[list[float], list[float]]] = {"kiln": bench_kiln(ctx, work, args.runs)}
        floors = bench_floor(ctx, args.runs)
        if not args.skip_buildah:
            results["buildah build+push"] = bench_buildah(ctx, work, args.runs)
        if not args.skip_docker:
            results["docker build+save"] = bench_docker(ctx, work, args.runs)
    finally:
        subprocess.run(["umount", "-R", str(work)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    k_cold = statistics.median(results["kiln"][0])
    k_warm = statistics.median(results["kiln"][1])
    print(f"\n{'tool':<22}{'cold (median)':>15}{'warm (median)':>15}{'cold ratio':>12}{'warm ratio':>12}")
    for tool, (cold, warm) in results.items():
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"{tool:<22}{c:>14.3f}s{w:>14.3f}s{c / k_cold:>11.1f}x{w / k_warm:>11.1f}x")
    print("\nratio = the tool's time / kiln's time (higher means kiln is faster)")
    print(f"\n{'reference':<22}{'median':>15}{'kiln cold / it':>16}{'kiln warm / it':>16}")
    for name, times in floors.items():
        m = statistics.median(times)
        print(f"{name:<22}{m:>14.3f}s{k_cold / m:>15.2f}x{k_warm / m:>15.2f}x")
    print("\nCPU seconds (user + system, medians):")
    for label, cpus in CPU.items():
        print(f"  {label:<12}{statistics.median(cpus):8.3f}s")
    cold_cpu, floor_cpu = statistics.median(CPU["kiln cold"]), statistics.median(CPU["floor 2"])
    print(f"  kiln cold / floor (2 threads), by CPU: {cold_cpu / floor_cpu:.2f}x")
    load = os.getloadavg()[0]
    print(f"\nruns: {args.runs} each; load average at the end: {load:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
