"""Module selection from a real modules directory: dependency order from .modinfo, compressed
modules decompressed in Python, clear errors."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
import zstandard

from builder.errors import SourceError
from builder.vm.modules import kernel_release, select_modules, wanted_modules
from tests.builder.vm.kit import installed_kernel

pytestmark = pytest.mark.integration


def test_release_and_dependency_order() -> None:
    kernel, modules = installed_kernel()
    release = kernel_release(kernel)
    assert release == modules.name
    chosen = select_modules(modules, wanted_modules(verity=True), release=release)
    names = chosen.names
    for wanted in ("virtio_mmio", "virtio_pci", "virtio_blk", "dm_verity", "erofs", "virtio_net"):
        assert wanted in names
    assert len(set(names)) == len(names)
    position = {n: i for i, n in enumerate(names)}
    for m in chosen.modules:
        for dep in m.depends:
            assert position[dep] < position[m.name], f"{dep} must load before {m.name}"
    # The spike order, as far as these modules depend on each other.
    for before, after in [("virtio_ring", "virtio"), ("dm_mod", "dm_bufio"), ("dm_bufio", "dm_verity")]:
        assert position[before] < position[after]
    small = select_modules(modules, wanted_modules(verity=False), release=release).names
    assert "dm_verity" not in small
    assert "erofs" not in small
    assert "virtio_net" in small


def test_compressed_modules_are_read(tmp_path: Path) -> None:
    kernel, modules = installed_kernel()
    release = kernel_release(kernel)
    plain = select_modules(modules, ["virtio_net"], release=release)
    root = tmp_path / release / "kernel"
    root.mkdir(parents=True)
    for i, m in enumerate(plain.modules):
        raw = m.data
        if i % 2:
            (root / f"{m.name}.ko.xz").write_bytes(lzma.compress(raw, check=lzma.CHECK_CRC32))
        else:
            (root / f"{m.name}.ko.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    again = select_modules(tmp_path / release, ["virtio_net"], release=release)
    assert again.names == plain.names
    assert [m.data for m in again.modules] == [m.data for m in plain.modules]


def test_errors(tmp_path: Path) -> None:
    kernel, modules = installed_kernel()
    release = kernel_release(kernel)
    with pytest.raises(SourceError, match="no module 'no_such_module'"):
        select_modules(modules, ["no_such_module"], release=release)
    with pytest.raises(SourceError, match=r"built for kernel .*, not 9\.9\.9"):
        select_modules(modules, ["virtio_ring"], release="9.9.9")
    partial = tmp_path / "kernel"
    partial.mkdir()
    virtio = select_modules(modules, ["virtio"], release=release).modules[-1]
    shutil.copyfile(virtio.path, partial / virtio.path.name)
    with pytest.raises(SourceError, match="virtio depends on 'virtio_ring', which is missing"):
        select_modules(tmp_path, ["virtio"], release=release)
    with pytest.raises(SourceError, match="no kernel modules found"):
        select_modules(tmp_path / "kernel", ["virtio"], release=release)
    (tmp_path / "not-a-kernel").write_bytes(b"\0" * 4096)
    with pytest.raises(SourceError, match="not an x86 bzImage"):
        kernel_release(tmp_path / "not-a-kernel")
