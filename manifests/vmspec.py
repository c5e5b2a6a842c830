"""The ``vm:`` section of an image manifest (what a person writes to get a VM image too).

Kept apart from :mod:`manifests.vm` (the ``vm.json`` the builder writes) so that the image manifest
model can hold it without importing the VM config document.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["VMProfile", "DiskLayout", "VMSpec", "DEFAULT_MEMORY_MIB"]

DEFAULT_MEMORY_MIB = 256


class VMProfile(enum.StrEnum):
    VERITY = "verity"  # EROFS root under dm-verity + a small stub initramfs
    INITRAMFS = "initramfs"  # the whole tree in the initramfs (smallest, unikernel-style)


class DiskLayout(enum.StrEnum):
    """How a ``verity`` image stores its root: one GPT disk, or two separate parts."""

    GPT = "gpt"  # disk.raw: partition 1 root (EROFS), partition 2 root-verity
    PARTS = "parts"  # rootfs.erofs + rootfs.verity


@dataclass(frozen=True, slots=True, kw_only=True)
class VMSpec:
    """A validated ``vm:`` section. ``kernel`` and ``modules`` are host paths as written (relative
    ones start at the manifest's directory); no ``modules`` means ``/lib/modules/<the kernel's
    release>``."""

    kernel: str
    modules: str | None = None
    profile: VMProfile = VMProfile.VERITY
    disk: DiskLayout = DiskLayout.GPT
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = 1
    cmdline: tuple[str, ...] = ()
