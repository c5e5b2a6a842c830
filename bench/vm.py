"""VM images: boot to the first health answer, and sizes, against a hand-made busybox baseline.

In one run, on this machine's qemu (TCG unless KVM works): the static hello (examples/hello-vm)
and python-web, each built by ``kiln build --format vm`` in both profiles (``verity``: EROFS root
under dm-verity with a stub initramfs; ``initramfs``: the whole tree in the initramfs), and a
hand-made baseline (busybox-static + a shell init + ``httpd`` in a gzip'd newc cpio, on the same
kernel; :mod:`tests.agent.vmkit`). Each is booted ``--runs`` times the way the agent boots it
(:func:`agent.qemu.boot_plan`, ``-M microvm``, read-only drives, user-mode networking with a
loopback port forwarded), after the same pre-boot check: every part hashed as it is copied into a
sealed memfd, the root hash, and qemu booting those copies. Timed:
from starting qemu to the first 200 of the image's health check (the check itself is included;
the pre-boot verification is timed apart). Sizes: the VM parts against the OCI image of the same
manifest (compressed layers + config). Nothing is asserted; read the ratios.

Targets (issue 9): the initramfs profile of the static hello within 1.2x of the baseline;
python-web (verity) answering within 4 s under TCG here.

Measured on the shared 2-core machine (TCG, ``--runs 5`` round-robin), qemu start to the first
health answer, median, as a ratio to the baseline in the same run. Before python-web baked its
bytecode (load ~9): baseline 3.16 s, python-web verity 7.56 s (2.39x), initramfs 2.71x; the guest
compiled every imported module at each boot. With ``python: {bytecode: true}`` (ADR 0023), three
runs at load 4-10 (baselines of 8.1, 12.4 and 15.0 s: the machine was busy): python-web verity
1.90x, 1.72x, 1.71x; initramfs 2.10x, 1.81x, 1.93x; hello-vm initramfs 0.99x, 0.98x, 0.89x;
hello-vm verity 0.96x, 1.07x, 0.99x. The 4 s target for python-web verity is missed on this
machine (≈ 5.4 s at the quiet baseline); what remains is the emulated execution of the kernel,
the modules and python's ~125 imports (docs/vm.md). Pre-boot verification, now a hashed copy of
every part into sealed memory as the agent does: 0.04-0.5 s. Sizes: hello-vm 20.2 MB (verity) /
15.3 MB (initramfs) against a 1.1 MB OCI image, python-web 49.1 / 24.2 MB against 11.8 MB; the
kernel alone is 14.2 MB.

    .venv/bin/python bench/vm.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This file is bench/vm.py: keep its directory from shadowing kiln's packages.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(REPO))

from agent.qemu import Forward, boot_plan, pick_accel, plan_on_fds, qemu_argv  # noqa: E402
from agent.vmimage import sealed_parts  # noqa: E402
from manifests.vm import VMConfig  # noqa: E402

EXAMPLES = {
    "hello-vm": REPO / "examples" / "hello-vm" / "hello-vm.yaml",
    "python-web": REPO / "examples" / "python-web" / "python-web.yaml",
}


@dataclass
class Image:
    name: str
    profile: str
    directory: Path
    size: int
    container_size: int | None


def kiln(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *args, "--json"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: kiln {' '.join(args)} failed: {proc.stderr.strip()}")
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_profile(manifest: Path, profile: str, work: Path) -> Path:
    """A copy of the example's directory whose manifest asks for ``profile``."""
    dest = work / f"src-{manifest.parent.name}-{profile}"
    if not dest.exists():
        shutil.copytree(manifest.parent, dest, ignore=shutil.ignore_patterns("__pycache__"))
    text = (dest / manifest.name).read_text()
    if "profile: verity" not in text:
        raise SystemExit(f"bench: {manifest} has no 'profile: verity' to switch")
    (dest / manifest.name).write_text(text.replace("profile: verity", f"profile: {profile}"))
    return dest / manifest.name


def build_all(work: Path) -> list[Image]:
    images = []
    for name, manifest in EXAMPLES.items():
        container = kiln("build", str(manifest), "-o", str(work / f"{name}-oci"))
        for profile in ("verity", "initramfs"):
            src = manifest if profile == "verity" else with_profile(manifest, profile, work)
            out = work / f"{name}-{profile}"
            built = kiln("build", str(src), "--format", "vm", "-o", str(out))
            images.append(Image(name, profile, out, int(str(built["size"])), int(str(container["size"]))))
    from tests.agent.vmkit import make_vm_dir

    base = work / "baseline"
    make_vm_dir(base, body="baseline\n")
    size = sum((base / f).stat().st_size for f in ("kernel", "initrd"))
    images.append(Image("busybox baseline", "initramfs", base, size, None))
    return images


def _health_path(config: VMConfig) -> tuple[int, str]:
    check = config.health.check if config.health is not None else None
    port = getattr(check, "port", 8080)
    path = getattr(check, "path", "/")
    return int(port), str(path)


def _get(port: int, path: str) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def boot_once(image: Image, work: Path) -> tuple[float, float]:
    """(seconds verifying, seconds from starting qemu to the first 200)."""
    config = VMConfig.from_bytes((image.directory / "vm.json").read_bytes())
    started = time.monotonic()
    fds = sealed_parts(image.directory, config)  # as the agent: checked copies in sealed memfds
    verified = time.monotonic() - started
    guest_port, path = _health_path(config)
    host_port = free_port()
    serial = work / "serial.log"
    plan = boot_plan(
        image.directory,
        config,
        name="kiln-bench",
        forwards=[Forward(host="127.0.0.1", host_port=host_port, guest_port=guest_port)],
        serial=serial,
        accel=pick_accel(None),
    )
    plan = plan_on_fds(plan, config, fds)
    started = time.monotonic()
    proc = subprocess.Popen(
        qemu_argv(plan), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=tuple(fds.values())
    )
    for fd in fds.values():
        os.close(fd)
    try:
        while _get(host_port, path) != 200:
            if proc.poll() is not None:
                raise SystemExit(f"bench: {image.name} ({image.profile}) exited: see {serial}")
            if time.monotonic() - started > 120:
                raise SystemExit(f"bench: {image.name} ({image.profile}) did not answer in 120 s")
            time.sleep(0.02)
        return verified, time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
        serial.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="boots per image (the median is shown)")
    args = parser.parse_args()
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    accel = pick_accel(None)
    print(f"qemu accelerator: {accel} (microvm); {os.cpu_count()} cores; {args.runs} boots per image")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-vm-"))
    try:
        images = build_all(work)
        # Round-robin (every image once per round): the load on the shared machine drifts, and
        # each image should see the same drift.
        times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(images))}
        for _ in range(args.runs):
            for i, image in enumerate(images):
                times[i].append(boot_once(image, work))
        rows = []
        for i, image in enumerate(images):
            answers = [t[1] for t in times[i]]
            rows.append(
                (image, statistics.median(t[0] for t in times[i]), statistics.median(answers), min(answers))
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = next(r[2] for r in rows if r[0].container_size is None)
    print()
    print(f"{'image':<18} {'profile':<10} {'verify':>8} {'to answer':>10} {'best':>7} {'vs base':>8} "
          f"{'VM size':>9} {'OCI size':>9} {'VM/OCI':>7}")  # fmt: skip
    for image, verify, answer, best in rows:
        oci = f"{image.container_size / 1e6:7.1f}MB" if image.container_size else "        -"
        ratio = f"{image.size / image.container_size:6.2f}x" if image.container_size else "      -"
        print(
            f"{image.name:<18} {image.profile:<10} {verify:7.3f}s {answer:9.2f}s {best:6.2f}s "
            f"{answer / baseline:7.2f}x "
            f"{image.size / 1e6:7.1f}MB {oci} {ratio}"
        )
    hello = next(r[2] for r in rows if r[0].name == "hello-vm" and r[0].profile == "initramfs")
    web = next(r[2] for r in rows if r[0].name == "python-web" and r[0].profile == "verity")
    print()
    print(f"target: hello-vm initramfs within 1.2x of the baseline: {hello / baseline:.2f}x")
    print(f"target: python-web verity answers within 4 s: {web:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
