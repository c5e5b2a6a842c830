"""Push images to a private registry with kiln and with `skopeo copy`, in the same run (issue 4, acc. 5).

Two images: python-web (``kiln build examples/python-web/python-web.yaml``, a few MB in a few
layers: a latency benchmark) and a generated ~1 GiB image of ``--layers`` incompressible gzip
layers (a throughput benchmark), both as OCI layouts. For each image and tool, ``--runs`` times:

- cold: a fresh registry with empty storage, so every blob is uploaded;
- warm: the same push again, so every blob is already there (a no-change republish).

kiln runs as a child process (``kiln publish`` when that verb exists, else a small child that
drives ``RegistryClient.push_image`` the way it does), so its wall time includes the interpreter's
start just as skopeo's includes its own; its peak RSS comes from ``wait4`` in a small launcher.
kiln's children keep their bytecode in the work directory even under PYTHONDONTWRITEBYTECODE=1,
as an installed kiln would have it (``--no-bytecode-cache`` to leave that alone), and one unmeasured
push per tool fills that cache and the page cache first. skopeo gets its own accept-anything trust
policy file, so the host's /etc/containers does not matter.

Prints a table of medians and the ratios (skopeo's time / kiln's: above 1 means kiln is faster).
Targets: kiln at least as fast as skopeo cold, a no-change republish under 0.3 s, peak RSS under
150 MB for the 1 GiB push. Nothing here asserts a time: read the numbers.

    .venv/bin/python bench/push.py [--runs N] [--size BYTES] [--layers N] [--jobs N] [--skip-skopeo]
                                   [--direct] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from manifests.canonical import canonical_json
from manifests.layout import REF_NAME, OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest

REPO = Path(__file__).resolve().parent.parent

MIB = 1 << 20
TAG = "1.0.0"
_POOL = 64 * MIB  # random bytes reused at shifting offsets: urandom is slow, the registry does not care


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    name: str
    layout: Path
    ref: str  # its org.opencontainers.image.ref.name
    size: int
    blobs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    seconds: float
    cpu: float  # user + system seconds of the tool's process (and its children)
    rss: int  # bytes


# ------------------------------------------------------------------------------------ images


def build_python_web(work: Path, env: dict[str, str]) -> Image:
    out = work / "python-web"
    run_checked(
        sys.executable,
        "-m",
        "kiln",
        "-q",
        "build",
        str(REPO / "examples/python-web/python-web.yaml"),
        "-o",
        str(out),
        "--force",
        "--cache-dir",
        str(work / "kiln-cache"),
        env=env,
    )
    return describe("python-web", out)


def build_big(work: Path, *, size: int, layers: int) -> Image:
    """``layers`` layers of random bytes, each a real gzip stream (stored blocks: incompressible data
    gains nothing from deflate, and skopeo sees gzip and leaves the layer as it is), a config whose
    diff_ids are the digests of the uncompressed bytes, and a manifest tagged ``TAG``."""
    root = work / "big"
    layout = OCILayout.create(root)
    pool = os.urandom(_POOL)
    per_layer = size // layers
    descs, diff_ids = [], []
    for n in range(layers):
        raw = hashlib.sha256()
        gz = zlib.compressobj(0, zlib.DEFLATED, 31)
        with layout.blob_writer(durable=False) as sink:
            first = n.to_bytes(8, "big")  # distinct layers even when the pool repeats
            raw.update(first)
            sink.write(gz.compress(first))
            written, offset = len(first), (n * 7919) % _POOL
            while written < per_layer:
                take = min(MIB, per_layer - written, _POOL - offset)
                block = memoryview(pool)[offset : offset + take]
                raw.update(block)
                sink.write(gz.compress(block))
                written += take
                offset = (offset + take) % _POOL
            sink.write(gz.flush())
        descs.append(Descriptor(media_type=MediaType.OCI_LAYER_GZIP, digest=sink.digest, size=sink.size))
        diff_ids.append(f"sha256:{raw.hexdigest()}")
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    cdig = layout.write_blob(config)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=cdig, size=len(config)),
        layers=tuple(descs),
    )
    raw_manifest = manifest.to_bytes()
    desc = Descriptor(
        media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(raw_manifest), size=len(raw_manifest)
    )
    layout.tag(desc, TAG)
    return describe(f"random {layers} layers", root)


def describe(name: str, root: Path) -> Image:
    layout = OCILayout.open(root)
    # The image's name in the layout: a build writes its full reference (python-web:1.0.0).
    ref = next(t for t in layout.tags() if not t.startswith("sha256-"))
    manifest = OCIManifest.from_bytes(layout.read_blob(layout.resolve(ref).digest))
    blobs = (manifest.config, *manifest.layers)
    return Image(name=name, layout=root, ref=ref, size=sum(d.size for d in blobs), blobs=len(blobs))


def image_only(image: Image, work: Path) -> Image:
    """The same image in a layout without its SBOM and provenance referrers (the index lists the
    image alone; blobs are hard links): what ``skopeo copy`` of the image carries, for a fair
    comparison of the image push itself."""
    root = work / f"{image.layout.name}-image-only"
    shutil.copytree(image.layout, root, copy_function=os.link)
    index = json.loads((root / "index.json").read_bytes())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == image.ref
    ]
    (root / "index.json").write_bytes(canonical_json(index))
    return Image(
        name=f"{image.name} (image only)", layout=root, ref=image.ref, size=image.size, blobs=image.blobs
    )


# ------------------------------------------------------------------------------------ pushing


# What ``kiln publish oci:DIR:TAG HOST/REPO`` does for the blobs and the manifest, for runs without
# the CLI (``--direct``, or before the verb existed). Run with ``-c`` so the bench's own imports
# (argparse, statistics, subprocess) are not counted against kiln.
_CHILD = """
import sys
from pathlib import Path
from manifests.layout import OCILayout
from manifests.oci import OCIManifest
from publisher.client import BlobSource, RegistryClient

layout_dir, tag, host, repo, jobs = sys.argv[1:6]
layout = OCILayout.open(Path(layout_dir))
desc = layout.resolve(tag)
raw = layout.read_blob(desc.digest)
manifest = OCIManifest.from_bytes(raw)
# The layout verified each blob when it was written: no second hashing pass on the way out.
blobs = [
    BlobSource(digest=d.digest, size=d.size, path=layout.blob_path(d.digest))
    for d in (manifest.config, *manifest.layers)
]
with RegistryClient(host, insecure=True, jobs=int(jobs)) as client:
    client.push_image(repo, blobs, raw, str(desc.media_type), tags=(tag,))
"""


# A small launcher starts each measured command and reports its wall time and peak RSS. A child
# forked straight from this process would inherit this process's RSS as its starting high-water
# mark (Linux counts the mm copied at fork), so the numbers would say more about the bench than
# about the tool.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - t0
proc.returncode = os.waitstatus_to_exitcode(status)
proc.stderr.close()
sys.stderr.buffer.write(err[-4000:])
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"seconds": seconds, "cpu": cpu, "rss": usage.ru_maxrss * 1024, "rc": proc.returncode}))
"""


def measured(*cmd: str, env: dict[str, str]) -> Sample:
    """Run ``cmd`` through the launcher; its wall time and peak RSS, failing loudly if it fails."""
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *cmd],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"the launcher failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result['rc']}):\n{proc.stderr[-2000:]}")
    return Sample(seconds=float(result["seconds"]), cpu=float(result["cpu"]), rss=int(result["rss"]))


def child_env(pycache: Path | None) -> dict[str, str]:
    """The environment for the tools. With ``pycache``, kiln's children keep their bytecode there,
    as an installed kiln has it compiled at install time: with PYTHONDONTWRITEBYTECODE=1 (set in
    some dev shells) every run would compile kiln's modules from source again, ~0.1 s."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def run_checked(*cmd: str, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def use_cli() -> bool:
    return (REPO / "kiln/cmd_publish.py").exists() and not os.environ.get("KILN_BENCH_DIRECT")


def kiln_cmd(image: Image, host: str, repo: str, jobs: int) -> tuple[str, ...]:
    if use_cli():
        return (
            sys.executable,
            "-m",
            "kiln",
            "-q",
            "publish",
            f"oci:{image.layout}:{image.ref}",  # the build's name, as skopeo is given it
            f"{host}/{repo}",
            "--insecure",
            "--jobs",
            str(jobs),
        )
    return (sys.executable, "-c", _CHILD, str(image.layout), image.ref, host, repo, str(jobs))


def skopeo_cmd(image: Image, host: str, repo: str, policy: Path) -> tuple[str, ...]:
    return (
        "skopeo",
        "--policy",
        str(policy),
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci:{image.layout}:{image.ref}",
        f"docker://{host}/{repo}:{TAG}",
    )


PY_FLOOR = "py-floor"  # bench/pushfloor.py: the least a Python process does to push an image


def tool_cmd(tool: str, image: Image, host: str, repo: str, *, jobs: int, work: Path) -> tuple[str, ...]:
    if tool == "skopeo":
        return skopeo_cmd(image, host, repo, work / "policy.json")
    if tool == PY_FLOOR:
        return (
            sys.executable,
            str(REPO / "bench" / "pushfloor.py"),
            str(image.layout),
            image.ref,
            host,
            repo,
        )
    return kiln_cmd(image, host, repo, jobs)


def warm_up(image: Image, tools: list[str], work: Path, *, jobs: int, env: dict[str, str]) -> None:
    """One unmeasured push per tool: fills the bytecode cache and the page cache."""
    from tests.kit.services import private_registry

    with private_registry(work / "registry-warm-up") as host:
        for tool in tools:
            measured(*tool_cmd(tool, image, host, f"warm/{tool}", jobs=jobs, work=work), env=env)
    shutil.rmtree(work / "registry-warm-up", ignore_errors=True)


def bench_image(
    image: Image,
    tools: list[str],
    work: Path,
    *,
    runs: int,
    jobs: int,
    env: dict[str, str],
    variants: dict[str, Image] | None = None,
) -> dict[str, tuple[list[Sample], list[Sample]]]:
    """Each run: every tool, one after the other (so a busy moment hits them alike), cold then warm."""
    from tests.kit.services import private_registry  # not at the top: the kiln child need not import it

    results: dict[str, tuple[list[Sample], list[Sample]]] = {tool: ([], []) for tool in tools}
    for i in range(runs):
        for tool in tools:
            root = work / f"registry-{tool}-{i}"
            with private_registry(root) as host:
                repo = f"bench/{tool}"
                pushed = (variants or {}).get(tool, image)
                cmd = tool_cmd(tool, pushed, host, repo, jobs=jobs, work=work)
                results[tool][0].append(measured(*cmd, env=env))
                results[tool][1].append(measured(*cmd, env=env))
            shutil.rmtree(root, ignore_errors=True)
        # Starting Python at all, through the same launcher: what a republish cannot go below.
        results.setdefault(START, ([], []))[0].append(measured(sys.executable, "-c", "pass", env=env))
    return results


# ------------------------------------------------------------------------------------ report


def median(samples: list[Sample], field: str = "seconds") -> float:
    return float(statistics.median(getattr(s, field) for s in samples))


START = "python -c pass"
IMAGE_ONLY = "kiln-img"  # kiln publish of python-web from a layout without its referrers


def report(image: Image, results: dict[str, tuple[list[Sample], list[Sample]]]) -> None:
    start = results.pop(START, ([], []))[0]
    mb = image.size / 1e6
    print(f"\n{image.name}: {mb:.1f} MB in {image.blobs} blobs (medians; cpu = the tool's user+sys)")
    print(f"{'tool':<9}{'cold':>9}{'MB/s':>7}{'cold cpu':>10}{'warm':>9}{'warm cpu':>10}{'peak RSS':>10}")
    for tool, (cold, warm) in results.items():
        c, w = median(cold), median(warm)
        rss = max(s.rss for s in cold + warm) / MIB
        print(
            f"{tool:<9}{c:>8.3f}s{mb / c:>7.0f}{median(cold, 'cpu'):>9.3f}s"
            f"{w:>8.3f}s{median(warm, 'cpu'):>9.3f}s{rss:>8.0f}MB"
        )
    if "skopeo" in results:
        s_cold, s_warm = median(results["skopeo"][0]), median(results["skopeo"][1])
        labels = (("kiln", "with its referrers"), (IMAGE_ONLY, "image only")) if IMAGE_ONLY in results else ()
        for tool, what in labels or (("kiln", "no referrers to push"),):
            if tool in results:
                k_cold, k_warm = median(results[tool][0]), median(results[tool][1])
                ratios = f"cold {s_cold / k_cold:.2f}x, warm {s_warm / k_warm:.2f}x"
                print(f"ratio skopeo/kiln publish ({what}): {ratios}")
    if PY_FLOOR in results:
        f_cold = median(results[PY_FLOOR][0])
        mine = IMAGE_ONLY if IMAGE_ONLY in results else "kiln"
        line = f"{PY_FLOOR} (a bare stdlib pusher) cold: kiln {median(results[mine][0]) / f_cold:.2f}x it"
        if "skopeo" in results:
            best = median(results["skopeo"][0]) / f_cold
            line += f"; skopeo / it {best:.2f}x (the best ratio any Python client can reach)"
        print(line)
    if start:
        p = median(start)
        k_warm = median(results["kiln"][1])
        print(f"{START}: {p:.3f}s ({median(start, 'cpu'):.3f}s cpu); kiln warm is {k_warm / p:.1f}x it")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes of the big image (default 1 GiB)")
    ap.add_argument("--layers", type=int, default=8, help="layers of the big image (default 8)")
    ap.add_argument("--jobs", type=int, default=4, help="kiln's parallel blob uploads (default 4)")
    ap.add_argument("--skip-skopeo", action="store_true")
    ap.add_argument(
        "--direct", action="store_true", help="drive RegistryClient.push_image, not `kiln publish`"
    )
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="parent of the work directory")
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="leave PYTHONDONTWRITEBYTECODE as it is (kiln then compiles its modules on every run)",
    )
    args = ap.parse_args()
    if shutil.which("docker-registry") is None or (not args.skip_skopeo and shutil.which("skopeo") is None):
        raise SystemExit("needs docker-registry and skopeo (apt-get install docker-registry skopeo)")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-push-", dir=args.dir))
    env = child_env(None if args.no_bytecode_cache else work / "pycache")
    try:
        # The bench's own trust policy: it must not depend on the host's /etc/containers.
        (work / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        t0 = time.perf_counter()
        images = [build_python_web(work, env), build_big(work, size=args.size, layers=args.layers)]
        if args.direct:
            os.environ["KILN_BENCH_DIRECT"] = "1"
        verb = "kiln publish" if use_cli() else "RegistryClient.push_image"
        print(f"images ready in {time.perf_counter() - t0:.1f}s; kiln pushes with {verb}, jobs={args.jobs}")
        tools = ["kiln"] if args.skip_skopeo else ["kiln", "skopeo"]
        warm_up(images[0], [*tools, PY_FLOOR], work, jobs=args.jobs, env=env)
        # kiln publish pushes an image's SBOM and provenance with it (two manifests, three blobs and
        # the sha256-<hex> referrers index), which skopeo copy of the image does not: python-web
        # is pushed twice by kiln, with its referrers and from a copy of the layout without them.
        web = images[0]
        variants = {IMAGE_ONLY: image_only(web, work)}
        web_tools = [*tools[:1], IMAGE_ONLY, *tools[1:], PY_FLOOR]
        report(
            web,
            bench_image(web, web_tools, work, runs=args.runs, jobs=args.jobs, env=env, variants=variants),
        )
        for image in images[1:]:  # no referrers: kiln and skopeo push the same
            report(image, bench_image(image, tools, work, runs=args.runs, jobs=args.jobs, env=env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nratio = skopeo's time / kiln's time (above 1 means kiln is faster)")
    print("targets: cold ratio >= 1, kiln warm < 0.300 s, kiln peak RSS < 150 MB for the 1 GiB push")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
