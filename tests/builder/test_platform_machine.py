"""An ELF file whose machine does not match the image's platform is refused, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.build import build_image
from builder.elf import check_platform_machines
from builder.errors import ClosureError
from manifests.oci import Platform
from tests.builder.helpers import files, manifest


def _host_elf(tmp_path: Path) -> Path:
    src = Path(shutil.which("true") or "/bin/true")
    dst = tmp_path / "true"
    shutil.copyfile(src, dst)
    return dst


def test_x86_64_file_in_an_arm64_image_is_refused(tmp_path: Path) -> None:
    _host_elf(tmp_path)
    m = manifest(
        tmp_path,
        files(("true", "/app/true")),
        entrypoint=("/app/true",),
        platform=Platform(architecture="arm64"),
    )
    with pytest.raises(ClosureError, match=r"/app/true: an ELF64 x86-64 file in a linux/arm64 image"):
        build_image(m, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_matching_and_non_elf_files_pass(tmp_path: Path) -> None:
    elf = _host_elf(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("not an ELF file at all\n")
    check_platform_machines([("/app/true", elf), ("/app/t.txt", text)], "amd64")
    with pytest.raises(ClosureError, match="linux/s390x"):
        check_platform_machines([("/app/true", elf)], "s390x")
