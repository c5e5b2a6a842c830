"""Real boots under qemu TCG (microvm), a bounded number (five): each profile of hello-vm serves
HTTP through a user-mode-net hostfwd on 127.0.0.1; the guest applies the image config and reports
the entrypoint's exit status; a flipped byte under dm-verity panics the guest; python-web boots as
a verity VM. The seconds to the first answer are printed (speed belongs in bench/, not asserts)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from builder.vm.image import build_vm
from manifests.image_parse import load_image_manifest
from manifests.vm import VMConfig
from tests.builder.vm.kit import REPO, boot, exit_status, point_at_kernel, run_to_exit, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _example(tmp_path: Path, name: str, manifest: str, **kw: str) -> Path:
    shutil.copytree(REPO / "examples" / name, tmp_path / name)
    return point_at_kernel(tmp_path / name / manifest, **kw)


@pytest.mark.parametrize("profile", ["verity", "initramfs"])
def test_hello_vm_serves_http(profile: str, tmp_path: Path) -> None:
    manifest = _example(tmp_path, "hello-vm", "hello-vm.yaml", profile=profile)
    image = tmp_path / "vm"
    build_vm(load_image_manifest(manifest), output=image)
    with boot(image, tmp_path / "console.log") as guest:
        body, seconds = wait_http(guest, "/index.html")
    assert body == b"hello from a kiln VM\n"
    print(f"hello-vm {profile}: first answer after {seconds:.2f} s")


def test_guest_applies_the_image_config_and_reports_the_exit_status(tmp_path: Path) -> None:
    manifest = _example(tmp_path, "hello-vm", "hello-vm.yaml", disk="parts")
    script = (
        'echo "who=$(/bin/busybox id -u):$(/bin/busybox id -g) cwd=$(/bin/busybox pwd) greeting=$GREETING";'
        " /bin/busybox touch /tmp/w && echo tmp-writable;"
        " /bin/busybox touch /www/x 2>/dev/null || echo root-read-only;"
        " exit 3"
    )
    text = manifest.read_text()
    text = re.sub(
        r"(?m)^entrypoint: .*$", f"entrypoint: {_yaml_list(['/bin/busybox', 'sh', '-c', script])}", text
    )
    text += "env:\n  GREETING: hi there\nworkdir: /www\n"
    manifest.write_text(text)
    image = tmp_path / "vm"
    build_vm(load_image_manifest(manifest), output=image)
    code, console = run_to_exit(image, tmp_path / "console.log")
    assert "who=65532:65532 cwd=/www greeting=hi there" in console, console
    assert "tmp-writable" in console
    assert "root-read-only" in console
    assert exit_status(console) == 3, console
    assert code == 0  # qemu ends normally after the guest's reboot; the status is the exit line


def test_a_flipped_byte_under_verity_panics_the_guest(tmp_path: Path) -> None:
    manifest = _example(tmp_path, "hello-vm", "hello-vm.yaml")
    image = tmp_path / "vm"
    build_vm(load_image_manifest(manifest), output=image)
    cfg = VMConfig.from_bytes((image / "vm.json").read_bytes())
    disk = image / "disk.raw"
    data = bytearray(disk.read_bytes())
    data[2048 * 512 + 1024 + 48] ^= 0x01  # the EROFS superblock's UUID, in the root partition
    disk.unlink()  # a hard link to the layout's blob: replace it, do not write through
    disk.write_bytes(bytes(data))
    code, console = run_to_exit(image, tmp_path / "console.log")
    assert exit_status(console) is None, console
    assert "data block 0 is corrupted" in console, console
    assert "Kernel panic - not syncing: dm-verity device corrupted" in console
    assert cfg.verity is not None
    del code  # qemu exits after the panic's reboot (panic=-1, -no-reboot); no exit line is the failure


def test_python_web_verity_vm_serves_health(tmp_path: Path) -> None:
    manifest = _example(tmp_path, "python-web", "python-web.yaml")
    image = tmp_path / "vm"
    build_vm(load_image_manifest(manifest), output=image)
    with boot(image, tmp_path / "console.log") as guest:
        body, seconds = wait_http(guest, "/healthz")
    assert body
    print(f"python-web verity: first answer after {seconds:.2f} s")


def _yaml_list(items: list[str]) -> str:
    import json

    return json.dumps(items)
