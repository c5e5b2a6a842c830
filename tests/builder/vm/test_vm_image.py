"""`kiln build --format vm`: the directory, vm.json, the OCI layout beside it, the tree digest shared
with the OCI image, and `kiln inspect` refusing a changed part."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import SourceError
from builder.vm.image import build_vm
from builder.vm.inspect import inspect_vm
from kiln.cli import main
from manifests.errors import VerificationError
from manifests.image_parse import load_image_manifest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import OCIManifest
from manifests.vm import DiskLayout, PartName, VMConfig, VMProfile
from tests.builder.vm.kit import REPO, installed_kernel, point_at_kernel
from tests.support import require_tool

pytestmark = pytest.mark.integration


def hello(tmp_path: Path, **kw: str) -> Path:
    shutil.copytree(REPO / "examples" / "hello-vm", tmp_path / "hello-vm")
    return point_at_kernel(tmp_path / "hello-vm" / "hello-vm.yaml", **kw)


@pytest.mark.parametrize(
    ("profile", "disk", "files"),
    [
        ("verity", "gpt", ["disk.raw", "initrd", "kernel"]),
        ("verity", "parts", ["initrd", "kernel", "rootfs.erofs", "rootfs.verity"]),
        ("initramfs", None, ["initrd", "kernel"]),
    ],
)
def test_vm_directory(profile: str, disk: str | None, files: list[str], tmp_path: Path) -> None:
    manifest = hello(tmp_path, profile=profile, **({"disk": disk} if disk else {}))
    out = tmp_path / "vm"
    result = build_vm(load_image_manifest(manifest), output=out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*files, "vm.json", "oci-layout", "index.json", "blobs"])
    cfg = VMConfig.from_bytes((out / "vm.json").read_bytes())
    assert cfg == result.config
    assert cfg.to_bytes() == (out / "vm.json").read_bytes()
    assert cfg.profile == VMProfile(profile)
    order = ["kernel", "initrd", "disk.raw", "rootfs.erofs", "rootfs.verity"]
    assert [p.file for p in cfg.parts] == [f for f in order if f in files]
    assert cfg.config.uid == 65532
    assert cfg.config.argv[:2] == ("/bin/busybox", "httpd")
    assert "rdinit=/kiln/init" in cfg.cmdline
    if profile == "verity":
        assert cfg.layout == DiskLayout(disk)
        assert cfg.verity is not None
        assert "dm_verity" in cfg.modules
    # The OCI layout beside the parts: artifactType, the config blob is vm.json, one layer per part.
    layout = OCILayout.open(out)
    desc = layout.resolve("1.0.0")
    assert desc.digest == result.digest
    man = OCIManifest.from_bytes(layout.read_blob(desc.digest))
    assert man.artifact_type == MediaType.KILN_VM
    assert man.config.media_type == MediaType.KILN_VM
    assert layout.read_blob(man.config.digest) == (out / "vm.json").read_bytes()
    assert [
        (d.media_type, d.digest, d.annotations["org.opencontainers.image.title"]) for d in man.layers
    ] == [(str(p.media_type), p.digest, p.file) for p in cfg.parts]
    info = inspect_vm(out)
    assert info["verified"] is True
    assert info["digest"] == str(result.digest)


def test_tree_digest_equals_the_oci_image(tmp_path: Path) -> None:
    manifest = hello(tmp_path)
    assert main(["build", str(manifest), "--format", "vm", "-o", str(tmp_path / "vm"), "--json"]) == 0
    assert main(["build", str(manifest), "-o", str(tmp_path / "oci"), "--no-cache"]) == 0
    layout = OCILayout.open(tmp_path / "oci")
    man = OCIManifest.from_bytes(layout.read_blob(layout.resolve(None).digest))
    cfg = VMConfig.from_bytes((tmp_path / "vm" / "vm.json").read_bytes())
    assert man.annotations["dev.kiln.tree"] == str(cfg.tree_digest)


def test_verity_parts_pass_the_real_tools(tmp_path: Path) -> None:
    veritysetup = require_tool("veritysetup", "cryptsetup-bin")
    fsck = require_tool("fsck.erofs", "erofs-utils")
    sfdisk = require_tool("sfdisk", "fdisk")
    parts = build_vm(load_image_manifest(hello(tmp_path / "a", disk="parts")), output=tmp_path / "parts")
    gpt = build_vm(load_image_manifest(hello(tmp_path / "b")), output=tmp_path / "gpt")
    v = parts.config.verity
    assert v is not None
    subprocess.run([fsck, str(tmp_path / "parts" / "rootfs.erofs")], check=True, capture_output=True)
    subprocess.run(
        [
            veritysetup,
            "verify",
            str(tmp_path / "parts" / "rootfs.erofs"),
            str(tmp_path / "parts" / "rootfs.verity"),
            v.root_hash,
        ],
        check=True,
        capture_output=True,
    )
    # The same tree gives the same root hash in both layouts; the GPT's partitions are the parts.
    assert gpt.config.verity is not None
    assert gpt.config.verity.root_hash == v.root_hash
    table = json.loads(
        subprocess.run(
            [sfdisk, "--json", str(tmp_path / "gpt" / "disk.raw")], check=True, capture_output=True, text=True
        ).stdout
    )["partitiontable"]["partitions"]
    assert [p["type"].lower() for p in table] == [
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
    ]
    assert [p["uuid"].lower() for p in table] == [
        gpt.config.verity.root_partition_uuid,
        gpt.config.verity.verity_partition_uuid,
    ]
    disk = (tmp_path / "gpt" / "disk.raw").read_bytes()
    erofs = (tmp_path / "parts" / "rootfs.erofs").read_bytes()
    start = table[0]["start"] * 512
    assert disk[start : start + len(erofs)] == erofs
    vstart = table[1]["start"] * 512
    verity = (tmp_path / "parts" / "rootfs.verity").read_bytes()
    assert disk[vstart : vstart + len(verity)] == verity


def test_inspect_refuses_a_changed_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vm"
    build_vm(load_image_manifest(hello(tmp_path)), output=out)
    assert main(["inspect", str(out)]) == 0
    assert "every part verified" in capsys.readouterr().out
    disk = out / PartName.DISK.file
    data = bytearray(disk.read_bytes())
    data[len(data) // 2] ^= 0x40
    disk.unlink()  # a hard link to the blob: replace, do not write through
    disk.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="disk part's digest is") as info:
        inspect_vm(out)
    assert info.value.reason == "digest"
    assert main(["inspect", str(out)]) == 3
    assert "disk part's digest is" in capsys.readouterr().err


def test_existing_output_needs_force_and_no_vm_section_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = hello(tmp_path)
    out = tmp_path / "vm"
    assert main(["build", str(manifest), "--format", "vm", "-o", str(out)]) == 0
    assert main(["build", str(manifest), "--format", "vm", "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["build", str(manifest), "--format", "vm", "-o", str(out), "--force"]) == 0
    plain = REPO / "examples" / "hello-static" / "hello.yaml"
    assert main(["build", str(plain), "--format", "vm", "-o", str(tmp_path / "x")]) == 1
    assert "no vm: section" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_kernel_glob_takes_the_newest_installed(tmp_path: Path) -> None:
    kernel, modules = installed_kernel()
    shutil.copytree(REPO / "examples" / "hello-vm", tmp_path / "hello-vm")
    manifest = tmp_path / "hello-vm" / "hello-vm.yaml"
    assert "vmlinuz-*-cloud-amd64" in manifest.read_text()
    result = build_vm(load_image_manifest(manifest), output=tmp_path / "vm")
    assert result.config.kernel_release == modules.name == kernel.name.removeprefix("vmlinuz-")
    manifest.write_text(manifest.read_text().replace("vmlinuz-*-cloud-amd64", "vmlinuz-*-no-such-flavour"))
    with pytest.raises(SourceError, match=r"vm.kernel: nothing matches /boot/vmlinuz-\*-no-such-flavour"):
        build_vm(load_image_manifest(manifest), output=tmp_path / "vm2")
    assert not (tmp_path / "vm2").exists()


def test_attest_signs_the_sbom_and_the_provenance_of_a_vm_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.cmd_sign import build_records
    from signing.attestation import PredicateKind

    monkeypatch.setenv("KILN_PASSWORD", "vm-attest")
    manifest = hello(tmp_path)
    out = tmp_path / "vm"
    config = build_vm(load_image_manifest(manifest), output=out).config
    layout = OCILayout.open(out)
    image = layout.resolve(None)  # the records do not count as a second image
    records = build_records(layout, image.digest)
    assert set(records) == {PredicateKind.SPDX, PredicateKind.SLSAPROVENANCE}
    # The SBOM describes the tree: the same files as the OCI image of the same manifest.
    assert main(["build", str(manifest), "-o", str(tmp_path / "oci"), "-q", "--no-cache"]) == 0
    oci = OCILayout.open(tmp_path / "oci")
    oci_sbom = json.loads(build_records(oci, oci.resolve(None).digest)[PredicateKind.SPDX])
    vm_sbom = json.loads(records[PredicateKind.SPDX])
    assert sorted(f["fileName"] for f in vm_sbom["files"]) == sorted(f["fileName"] for f in oci_sbom["files"])
    assert main(["key", "generate", "--out", str(tmp_path / "k"), "-q"]) == 0
    capsys.readouterr()
    assert main(["attest", "--key", str(tmp_path / "k.key"), "-q", f"oci:{out}"]) == 0
    capsys.readouterr()
    pub = str(tmp_path / "k.pub")
    assert main(["verify-attestation", "--key", pub, "--type", "slsaprovenance", f"oci:{out}", "--json"]) == 0
    statement = json.loads(capsys.readouterr().out)
    text = json.dumps(statement)
    assert image.digest.hex in text  # the subject is the VM artifact
    kernel = installed_kernel()[0].as_posix()
    assert kernel in text  # the kernel the VM boots is a resolved dependency
    assert "/bin/busybox" in text  # and the tree's host inputs
    assert main(["verify-attestation", "--key", pub, "--type", "spdx", f"oci:{out}"]) == 0
    # The image itself is unchanged by its records: inspect still verifies every part.
    assert main(["inspect", str(out), "-q"]) == 0
    assert config.tree_digest == VMConfig.from_bytes((out / "vm.json").read_bytes()).tree_digest
