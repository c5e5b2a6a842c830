"""Hand-made VM images for the run side's tests: a busybox initramfs on the host's Debian kernel.

:func:`make_vm_dir` writes a VM image directory of the ``initramfs`` profile (``vm.json``,
``kernel``, ``initrd``) whose init loads the virtio modules, configures the user-mode network and
either serves ``BODY`` over HTTP on a port (busybox ``httpd``) or exits with a status; like kiln's
own guest init it prints ``kiln-exit: N`` and reboots. :func:`vm_layout` makes the directory an
OCI layout too (the published form: ``artifactType`` = config = vm.json, one layer per part).
The kernel is the host's ``linux-image-cloud-amd64`` (a Debian package the tests install).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from builder.vm.image import BASE_CMDLINE
from manifests.digest import Digest
from manifests.image import HealthCheck, HttpCheck
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.vm import PartName, VMConfig, VMImageConfig, VMPart, VMProfile


def _newest_cloud_kernel() -> str:
    """The release of the newest installed Debian cloud kernel (its version may differ per machine)."""
    found = [p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*-cloud-amd64")]
    key = [[(0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.split(r"[.-]", r)] for r in found]
    return max(zip(key, found, strict=True))[1] if found else "6.1.0-57-cloud-amd64"


KERNEL_RELEASE = _newest_cloud_kernel()
KERNEL = Path(f"/boot/vmlinuz-{KERNEL_RELEASE}")
MODULES = Path(f"/lib/modules/{KERNEL_RELEASE}/kernel")
BUSYBOX = Path("/bin/busybox")
MODULE_ORDER = (
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
)
TUNED = tuple(arg for arg in BASE_CMDLINE if not arg.startswith("rdinit="))  # the baseline runs /init

_INIT = """#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko; do :; done
{insmods}
ip link set lo up; ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up
ip route add default via 10.0.2.2
{body}
echo "kiln-exit: $rc"
reboot -f
"""


def available() -> str | None:
    """Why hand-made VMs cannot be built here, or None."""
    for need in (KERNEL, MODULES, BUSYBOX):
        if not need.exists():
            return f"{need} is missing"
    if shutil.which("cpio") is None:
        return "cpio is missing"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is missing"
    return None


def _initrd(work: Path, *, body: str, port: int, exit_status: int | None) -> bytes:
    root = work / "initrd-root"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "www", "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "mount", "insmod", "ip", "httpd", "echo", "reboot", "sleep", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    names = []
    for m in MODULE_ORDER:
        shutil.copy(MODULES / f"{m}.ko", root / "lib" / "modules")
        names.append(Path(m).name)
    (root / "www" / "index.html").write_text(body)
    (root / "www" / "healthz").write_text("ok\n")
    if exit_status is None:
        run = f"echo 'guest: serving on {port}'; httpd -f -p {port} -h /www; rc=$?"
    else:
        run = f"echo 'guest: exiting with {exit_status}'; rc={exit_status}"
    insmods = "\n".join(f"insmod /lib/modules/{n}.ko" for n in names)
    (root / "init").write_text(_INIT.format(insmods=insmods, body=run))
    (root / "init").chmod(0o755)
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    proc = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet", "--reproducible"],
        cwd=root,
        input="\n".join([".", *listing]).encode(),
        capture_output=True,
        check=True,
    )
    return gzip.compress(proc.stdout, compresslevel=1, mtime=0)


def make_vm_dir(
    out: Path,
    *,
    body: str = "hello from a vm\n",
    port: int = 8080,
    exit_status: int | None = None,
    version: str = "1.0.0",
    name: str = "hello-vm",
) -> VMConfig:
    """A VM image directory at ``out`` (module docstring); returns its vm.json."""
    OCILayout.create(out)  # first: a layout must start empty (vm_layout fills it)
    initrd = _initrd(out.parent / f".{out.name}-work", body=body, port=port, exit_status=exit_status)
    shutil.rmtree(out.parent / f".{out.name}-work", ignore_errors=True)
    (out / "initrd").write_bytes(initrd)
    shutil.copy(KERNEL, out / "kernel")
    parts = []
    for pname, mt in (
        (PartName.KERNEL, MediaType.KILN_VM_KERNEL),
        (PartName.INITRD, MediaType.KILN_VM_INITRD_GZIP),
    ):
        data = (out / pname.file).read_bytes()
        parts.append(VMPart(name=pname, media_type=mt, digest=Digest.of(data), size=len(data)))
    config = VMConfig(
        name=name,
        version=version,
        profile=VMProfile.INITRAMFS,
        layout=None,
        architecture="amd64",
        kernel_release=KERNEL_RELEASE,
        parts=tuple(parts),
        verity=None,
        cmdline=TUNED,
        memory_mib=192,
        cpus=1,
        ports=(f"{port}/tcp",),
        health=HealthCheck(check=HttpCheck(port=port, path="/healthz"), interval=0.5, timeout=2.0, retries=3),
        config=VMImageConfig(entrypoint=("/bin/httpd",)),
        tree_digest=Digest(hashlib.sha256(body.encode()).hexdigest()),
        modules=tuple(Path(m).name for m in MODULE_ORDER),
    )
    (out / "vm.json").write_bytes(config.to_bytes())
    return config


def vm_layout(directory: Path, *, tag: str | None = None) -> Descriptor:
    """Make the VM image directory an OCI layout holding it as one artifact; returns its descriptor."""
    config = VMConfig.from_bytes((directory / "vm.json").read_bytes())
    layout = OCILayout.open(directory)
    raw = config.to_bytes()
    cfg = Descriptor(media_type=MediaType.KILN_VM, digest=layout.write_blob(raw), size=len(raw))
    layers = []
    for part in config.parts:
        layout.link_blob(directory / part.file, part.digest, size=part.size)
        layers.append(
            Descriptor(
                media_type=part.media_type,
                digest=part.digest,
                size=part.size,
                annotations={"org.opencontainers.image.title": part.file},
            )
        )
    manifest = OCIManifest(
        config=cfg,
        layers=tuple(layers),
        artifact_type=MediaType.KILN_VM,
        annotations={"org.opencontainers.image.version": config.version},
    )
    data = manifest.to_bytes()
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(data), size=len(data))
    layout.tag(desc, tag or config.version)
    return desc
