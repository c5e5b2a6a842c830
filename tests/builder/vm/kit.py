"""Shared helpers for the VM tests: the installed cloud kernel, manifests pointed at it, and a
minimal qemu runner (TCG, microvm, the issue's cmdline facts) until agent/qemu.py is used."""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from manifests.vm import EXIT_LINE_PREFIX, VMConfig
from tests.support import IN_CI, require_tool

REPO = Path(__file__).resolve().parents[3]
_VERSION = re.compile(r"vmlinuz-(\d+)\.(\d+)\.(\d+)-(\d+)-cloud-amd64\Z")


def installed_kernel() -> tuple[Path, Path]:
    """The newest ``linux-image-cloud-amd64`` kernel with its modules directory."""
    found = []
    for k in Path("/boot").glob("vmlinuz-*-cloud-amd64"):
        m = _VERSION.match(k.name)
        release = k.name.removeprefix("vmlinuz-")
        if m and (Path("/lib/modules") / release / "kernel").is_dir():
            found.append((tuple(int(x) for x in m.groups()), k, Path("/lib/modules") / release))
    if not found:
        msg = "no linux-image-cloud-amd64 kernel (Debian package linux-image-cloud-amd64)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    _, kernel, modules = max(found)
    return kernel, modules


def point_at_kernel(manifest: Path, *, profile: str | None = None, disk: str | None = None) -> Path:
    """Rewrite ``manifest``'s vm: kernel/modules (and optionally profile, disk) in place."""
    kernel, modules = installed_kernel()
    text = manifest.read_text()
    text = re.sub(r"(?m)^  kernel: .*$", f"  kernel: {kernel}", text)
    text = re.sub(r"(?m)^  modules: .*$\n?", "", text)
    text = text.replace(f"  kernel: {kernel}\n", f"  kernel: {kernel}\n  modules: {modules}\n")
    if profile is not None:
        text = re.sub(r"(?m)^  profile: .*$", f"  profile: {profile}", text)
    if disk is not None:
        text = text.replace("  profile: verity\n", f"  profile: verity\n  disk: {disk}\n")
    manifest.write_text(text)
    return manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int | None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def qemu_argv(image: Path, *, port: int | None = None, guest_port: int = 8080) -> list[str]:
    qemu = require_tool("qemu-system-x86_64", "qemu-system-x86")
    cfg = VMConfig.from_bytes((image / "vm.json").read_bytes())
    argv = [
        qemu, "-M", "microvm", "-cpu", "max", "-m", str(cfg.memory_mib), "-smp", str(cfg.cpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", str(image / "kernel"), "-initrd", str(image / "initrd"),
        "-append", cfg.boot_cmdline([f"tsc_early_khz={_tsc_khz()}"]),
    ]  # fmt: skip
    for i, part in enumerate(cfg.drives):
        argv += ["-drive", f"id=d{i},file={image / part.file},format=raw,if=none,readonly=on"]
        argv += ["-device", f"virtio-blk-device,drive=d{i}"]
    fwd = f",hostfwd=tcp:127.0.0.1:{port}-:{guest_port}" if port is not None else ""
    argv += ["-netdev", f"user,id=n0{fwd}", "-device", "virtio-net-device,netdev=n0"]
    return argv


@contextlib.contextmanager
def boot(image: Path, log: Path, *, guest_port: int = 8080, forward: bool = True) -> Iterator[Guest]:
    port = free_port() if forward else None
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            qemu_argv(image, port=port, guest_port=guest_port), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield Guest(proc=proc, log=log, port=port)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def wait_http(guest: Guest, path: str, *, deadline: float = 240.0) -> tuple[bytes, float]:
    """The first answer to ``GET path`` and the seconds it took (a generous deadline: TCG, load)."""
    start = time.monotonic()
    url = f"http://127.0.0.1:{guest.port}{path}"
    while time.monotonic() - start < deadline:
        if guest.proc.poll() is not None:
            raise AssertionError(f"qemu exited {guest.proc.returncode} before answering:\n{guest.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read(), time.monotonic() - start
        except (OSError, http.client.HTTPException):  # slirp accepts before the guest listens
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url} within {deadline} s:\n{guest.output()}")


def run_to_exit(image: Path, log: Path, *, deadline: float = 240.0) -> tuple[int, str]:
    """Boot without forwarding and wait for qemu to exit; its return code and the console."""
    with boot(image, log, forward=False) as guest:
        try:
            code = guest.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the guest did not power off within {deadline} s:\n{guest.output()}"
            ) from None
        return code, guest.output()


def exit_status(console: str) -> int | None:
    """The entrypoint's status from the guest's exit line, or None (no line: a failure)."""
    for line in console.splitlines():
        if line.startswith(EXIT_LINE_PREFIX):
            return int(line[len(EXIT_LINE_PREFIX) :].strip())
    return None


def build_vm_dir(manifest: Path, output: Path) -> Path:
    from builder.vm.image import build_vm
    from manifests.image_parse import load_image_manifest

    build_vm(load_image_manifest(manifest), output=output)
    return output
