"""Kernel module selection for the guest: only what it needs, in dependency order, no depmod.

Each module's ``.modinfo`` section (read with pyelftools) gives ``depends=`` (hard dependencies)
and ``softdep=`` (``pre:`` modules, taken when the modules directory has them: a soft
dependency on something built into the kernel is not a file). The load order is a depth-first
walk of the wanted names in their given order, dependencies first; a cycle is an error. Modules
may be ``.ko``, ``.ko.xz``, ``.ko.zst`` or ``.ko.gz``: they are decompressed here, in Python, and
each module's ``vermagic`` must name the kernel release being built for.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from builder.errors import SourceError

__all__ = ["KernelModule", "ModuleSet", "select_modules", "wanted_modules", "kernel_release"]

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_MAX_MODULE = 64 << 20

BASE = ("virtio_mmio", "virtio_pci", "virtio_net")
VERITY = ("virtio_blk", "dm_verity", "erofs")


# Loaded by the guest init only when the runner passes a run-time environment (``kiln.env=fw_cfg``):
# qemu's fw_cfg device, read through sysfs (found through ACPI on microvm and q35).
ENV_MODULES = ("qemu_fw_cfg",)


def wanted_modules(*, verity: bool) -> tuple[str, ...]:
    """The modules a guest asks for (their dependencies come with them)."""
    return BASE + VERITY if verity else BASE


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelModule:
    name: str  # normalized: '-' becomes '_'
    path: Path  # on the host
    data: bytes  # the uncompressed ELF object
    depends: tuple[str, ...]
    softdeps: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleSet:
    release: str
    modules: tuple[KernelModule, ...]  # load order

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)


def _norm(name: str) -> str:
    return name.replace("-", "_")


def kernel_release(kernel: Path) -> str:
    """The release string in an x86 bzImage's setup header (``6.1.0-28-cloud-amd64``)."""
    try:
        with open(kernel, "rb") as fh:
            head = fh.read(0x8000)
    except OSError as exc:
        raise SourceError(f"cannot read the kernel {kernel}: {exc.strerror}") from exc
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise SourceError(f"{kernel} is not an x86 bzImage (no HdrS setup header)")
    offset = int.from_bytes(head[0x20E:0x210], "little")
    if not offset:
        raise SourceError(f"{kernel}: the setup header has no kernel version")
    start = offset + 0x200
    text = head[start : start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    release = text.split(" ", 1)[0]
    if not release:
        raise SourceError(f"{kernel}: empty kernel version")
    return release


def _index(root: Path) -> dict[str, Path]:
    """Module name -> file, for every module under ``root/kernel`` (and ``root/updates``, ``extra``)."""
    found: dict[str, Path] = {}
    for sub in ("kernel", "updates", "extra"):
        base = root / sub
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                for suffix in _SUFFIXES:
                    if fn.endswith(suffix):
                        found.setdefault(_norm(fn[: -len(suffix)]), Path(dirpath) / fn)
                        break
    if not found:
        raise SourceError(f"{root}: no kernel modules found", hint="vm.modules names /lib/modules/<release>")
    return found


def _load(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read the module {path}: {exc.strerror}") from exc
    try:
        if path.name.endswith(".xz"):
            return lzma.LZMADecompressor().decompress(raw, max_length=_MAX_MODULE)
        if path.name.endswith(".zst"):
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read(_MAX_MODULE)
        if path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                return fh.read(_MAX_MODULE)
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as exc:
        raise SourceError(f"cannot decompress the module {path}: {exc}") from exc
    return raw


def _modinfo(path: Path, data: bytes) -> dict[str, list[str]]:
    try:
        elf = ELFFile(io.BytesIO(data))
        section = elf.get_section_by_name(".modinfo")
        if section is None:
            raise SourceError(f"{path}: no .modinfo section (not a kernel module?)")
        blob = section.data()
    except ELFError as exc:
        raise SourceError(f"{path}: not a valid ELF module: {exc}") from exc
    info: dict[str, list[str]] = {}
    for item in blob.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _softdeps(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        words = value.split()
        pre = False
        for w in words:
            if w.endswith(":"):
                pre = w == "pre:"
            elif pre:
                out.append(_norm(w))
    return tuple(out)


def select_modules(modules_dir: Path, wanted: Sequence[str], *, release: str) -> ModuleSet:
    """``wanted`` and everything they depend on, dependencies first."""
    index = _index(modules_dir)
    loaded: dict[str, KernelModule] = {}

    def module(name: str, needed_by: str | None) -> KernelModule | None:
        if name in loaded:
            return loaded[name]
        path = index.get(name)
        if path is None:
            if needed_by is None:
                raise SourceError(
                    f"{modules_dir}: no module {name!r}",
                    hint="the kernel may have it built in; or vm.modules names another release",
                )
            raise SourceError(f"{modules_dir}: {needed_by} depends on {name!r}, which is missing")
        data = _load(path)
        info = _modinfo(path, data)
        magic = (info.get("vermagic") or [""])[0].split(" ", 1)[0]
        if magic != release:
            raise SourceError(
                f"{path}: built for kernel {magic or '?'}, not {release}",
                hint="vm.kernel and vm.modules must be the same release",
            )
        depends = tuple(_norm(d) for v in info.get("depends", []) for d in v.split(",") if d)
        loaded[name] = KernelModule(
            name=name, path=path, data=data, depends=depends, softdeps=_softdeps(info.get("softdep", []))
        )
        return loaded[name]

    order: list[KernelModule] = []
    done: set[str] = set()
    # Iterative depth-first walk (no recursion over data from a directory).
    for top in wanted:
        stack: list[tuple[str, str | None, bool]] = [(_norm(top), None, False)]
        active: set[str] = set()
        while stack:
            name, parent, expanded = stack.pop()
            if name in done:
                continue
            if expanded:
                active.discard(name)
                done.add(name)
                order.append(loaded[name])
                continue
            if name in active:
                raise SourceError(f"{modules_dir}: module dependency cycle through {name!r}")
            mod = module(name, parent)
            if mod is None:
                continue
            active.add(name)
            stack.append((name, parent, True))
            soft = [s for s in mod.softdeps if s in index]
            for dep in reversed((*soft, *mod.depends)):
                if dep not in done:
                    stack.append((dep, name, False))
    return ModuleSet(release=release, modules=tuple(order))
