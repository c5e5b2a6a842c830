"""How build time and memory grow with the tree: kiln (cold) against `buildah build` + `buildah
push oci:`, `docker build` + `docker save` (private engine) and the floor (bench/floor.py, on one
and on two threads), on generated trees of 10 MB and 100 MB (a few large files) and of 1,000 and
10,000 small files (1 KB each); with ``--large`` also 1 GB and 100,000 small files (minutes each).
Every run is a separate process timed from outside, with its peak RSS (the largest resident set
of it and any child it waited for, from GNU time). Prints a table of medians, writes them as JSON, and draws
docs/performance-scaling.png (matplotlib, from the ``bench`` extra). Nothing is asserted.

    .venv/bin/python bench/scale.py [--runs N] [--large] [--skip-docker] [--skip-buildah]
                                    [--json FILE] [--chart FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: bench-scale
version: 1.0.0
contents:
  - tree: {src: rootfs, dst: /data}
entrypoint: [/data/none]
layers: {strategy: single, max: 1}
compression: gzip
"""


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "size" (x = MB) or "files" (x = file count)
    x: int
    files: int
    file_size: int
    large: bool = False


CASES = [
    Case("10 MB", "size", 10, 10, 1 << 20),
    Case("100 MB", "size", 100, 25, 4 << 20),
    Case("1 GB", "size", 1000, 125, 8 << 20, large=True),
    Case("1k files", "files", 1_000, 1_000, 1024),
    Case("10k files", "files", 10_000, 10_000, 1024),
    Case("100k files", "files", 100_000, 100_000, 1024, large=True),
]


def _content(rnd: random.Random, size: int) -> bytes:
    """Half text-like, half random: compresses to about 60%, like a mix of code and binaries."""
    words = [b"kiln", b"layer", b"import", b"return", b"self", b"def", b"0x7f", b"\n", b"    "]
    text = b" ".join(rnd.choice(words) for _ in range(size // 8))[: size // 2]
    return (text + rnd.randbytes(size - len(text)))[:size]


def prepare(work: Path, case: Case) -> Path:
    ctx = work / case.name.replace(" ", "-")
    rootfs = ctx / "rootfs"
    rnd = random.Random(case.x)
    pool = _content(rnd, 8 << 20)  # every file and every MiB starts elsewhere in 8 MiB of content
    for i in range(case.files):
        d = rootfs / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:06d}.bin", "wb") as fh:
            done = 0
            while done < case.file_size:
                n = min(1 << 20, case.file_size - done)
                start = rnd.randrange(len(pool) - n)
                fh.write(pool[start : start + n])
                done += n
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY rootfs/ /data/\n")
    (ctx / "image.yaml").write_text(MANIFEST)
    return ctx


_TIME = shutil.which("time", path="/usr/bin:/bin")


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of one process and the
    children it waited for.

    The peak comes from GNU time, a small process that forks the command: a child forked from this
    (larger) Python process would count this process's memory in its own peak."""
    with tempfile.NamedTemporaryFile("r", prefix="kiln-bench-rss-") as rss:
        wrapped = [_TIME, "-q", "-f", "%M %U %S", "-o", rss.name, *cmd] if _TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.run(
            wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode(errors='replace')[-2000:]}")
        fields = (rss.read().strip().splitlines() or ["0 0 0"])[-1].split()
    return wall, int(fields[0]) * 1024, float(fields[1]) + float(fields[2])


def kiln_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


Runner = Callable[[Path, Path, int], tuple[float, int, float]]  # wall, peak RSS, CPU


def run_kiln(ctx: Path, work: Path, i: int) -> tuple[float, int, float]:
    out, cache = work / f"kiln-out-{i}", work / f"kiln-cache-{i}"
    result = measure(
        [sys.executable, "-m", "kiln", "-q", "build", str(ctx / "image.yaml"), "-o", str(out), "--force",
         "--cache-dir", str(cache)],
        env=kiln_env(),
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def run_floor(threads: int) -> Runner:
    def run(ctx: Path, work: Path, i: int) -> tuple[float, int, float]:
        del work, i
        floor = str(REPO / "bench" / "floor.py")
        return measure(
            [sys.executable, floor, str(ctx / "rootfs"), "--threads", str(threads)], env=kiln_env()
        )

    return run


def run_buildah(ctx: Path, work: Path, i: int) -> tuple[float, int, float]:
    store = work / f"buildah-{i}"
    base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
            "--storage-driver", "overlay"]  # fmt: skip
    out = work / f"buildah-out-{i}"
    try:
        t0 = time.perf_counter()
        _, rss1, cpu1 = measure([*base, "build", "--layers", "-q", "-f", str(ctx / "Containerfile"), "-t",
                                 "localhost/scale:1", str(ctx)])  # fmt: skip
        _, rss2, cpu2 = measure([*base, "push", "-q", "localhost/scale:1", f"oci:{out}:1.0.0"])
        return time.perf_counter() - t0, max(rss1, rss2), cpu1 + cpu2
    finally:
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(store)], capture_output=True, check=False)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def docker_runner(host: str) -> Runner:
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "0"}

    def run(ctx: Path, work: Path, i: int) -> tuple[float, int, float]:
        tag = f"scale-{i}:1"
        out = work / f"docker-{i}.tar"
        t0 = time.perf_counter()
        measure(["docker", "build", "-q", "-f", str(ctx / "Containerfile"), "-t", tag, str(ctx)], env=env)
        measure(["docker", "save", "-o", str(out), tag], env=env)
        wall = time.perf_counter() - t0
        subprocess.run(["docker", "rmi", "-f", tag], env=env, capture_output=True, check=False)
        subprocess.run(["docker", "builder", "prune", "-af"], env=env, capture_output=True, check=False)
        out.unlink(missing_ok=True)
        return wall, 0, 0.0  # the work happens inside dockerd, not in the client: no RSS or CPU

    return run


def _dockerd(skip: bool) -> AbstractContextManager[object]:
    if skip:
        return nullcontext(None)
    from kiln.testing import private_dockerd

    return private_dockerd()


def median_of(runner: Runner, ctx: Path, work: Path, runs: int) -> tuple[float, int, float]:
    """Median wall time, largest peak RSS, median CPU time."""
    walls, rss, cpus = [], [], []
    for i in range(runs):
        wall, peak, cpu = runner(ctx, work, i)
        walls.append(wall)
        rss.append(peak)
        cpus.append(cpu)
    return statistics.median(walls), max(rss), statistics.median(cpus)


def chart(results: dict[str, dict[str, tuple[float, int, float]]], cases: list[Case], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, label in ((axes[0], "size", "tree size (MB)"), (axes[1], "files", "files (1 KB each)")):
        chosen = [c for c in cases if c.kind == kind]
        for tool, found in results.items():
            xs = [c.x for c in chosen if c.name in found]
            ys = [found[c.name][0] for c in chosen if c.name in found]
            if xs:
                ax.plot(xs, ys, marker="o", label=tool)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("wall time (s), median")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Build time against tree size and file count (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on a kill
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--large", action="store_true", help="also 1 GB and 100,000 files (minutes)")
    ap.add_argument("--skip-docker", action="store_true")
    ap.add_argument("--skip-buildah", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the medians here")
    ap.add_argument("--chart", type=Path, default=REPO / "docs" / "performance-scaling.png")
    args = ap.parse_args()
    cases = [c for c in CASES if args.large or not c.large]
    results: dict[str, dict[str, tuple[float, int, float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-scale-", dir="/var/tmp"))
    try:
        with _dockerd(args.skip_docker) as engine:
            tools: dict[str, Runner] = {"kiln": run_kiln}
            if not args.skip_buildah:
                tools["buildah build+push"] = run_buildah
            if engine is not None:
                tools["docker build+save"] = docker_runner(engine.host)  # type: ignore[attr-defined]
            tools["floor (1 thread)"] = run_floor(1)
            tools["floor (2 threads)"] = run_floor(2)
            for case in cases:
                ctx = prepare(work, case)
                for tool, runner in tools.items():
                    wall, rss, cpu = median_of(runner, ctx, work, args.runs)
                    results.setdefault(tool, {})[case.name] = (wall, rss, cpu)
                    what = f"{wall:8.3f}s wall {cpu:8.3f}s CPU  peak RSS {rss / 1e6:7.1f} MB"
                    print(f"{case.name:<11} {tool:<20} {what}", flush=True)
                shutil.rmtree(ctx, ignore_errors=True)
    finally:
        subprocess.run(["umount", "-R", str(work)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'case':<11}" + "".join(f"{t[:18]:>20}" for t in results))
    for case in cases:
        print(f"{case.name:<11}" + "".join(f"{results[t][case.name][0]:>19.3f}s" for t in results))
    print("\nwall: kiln / floor(2t), kiln / floor(1t), buildah / kiln; CPU: kiln / floor(2t); kiln peak RSS")
    for case in cases:
        k = results["kiln"][case.name]
        f2, f1 = results["floor (2 threads)"][case.name], results["floor (1 thread)"][case.name]
        line = f"  {case.name:<11} {k[0] / f2[0]:5.2f}x {k[0] / f1[0]:5.2f}x"
        if "buildah build+push" in results:
            line += f" {results['buildah build+push'][case.name][0] / k[0]:5.2f}x"
        print(f"{line}  CPU {k[2] / f2[2]:5.2f}x  {k[1] / 1e6:6.1f} MB")
    print(
        f"\nruns: {args.runs} each; load average at the end: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({t: {c: list(v) for c, v in r.items()} for t, r in results.items()}))
    try:
        chart(results, cases, args.chart)
        print(f"chart: {args.chart}")
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
