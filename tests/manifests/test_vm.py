"""vm.json (manifests.vm) and the image manifest's vm: section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from manifests.errors import DocumentError, ManifestError
from manifests.image import HealthCheck, HttpCheck
from manifests.image_parse import parse_image_manifest
from manifests.vm import (
    DiskLayout,
    PartName,
    VerityParams,
    VMConfig,
    VMImageConfig,
    VMPart,
    VMProfile,
)
from manifests.vmspec import VMSpec

PUUID = "abababab-abab-abab-abab-abababababab"


def _part(name: PartName, n: int) -> VMPart:
    return VMPart(name=name, media_type=name.media_types[0], digest=Digest.of(bytes([n])), size=100 + n)


def sample(profile: VMProfile = VMProfile.VERITY, layout: DiskLayout | None = DiskLayout.GPT) -> VMConfig:
    names = [PartName.KERNEL, PartName.INITRD]
    if profile is VMProfile.VERITY:
        names += [PartName.DISK] if layout is DiskLayout.GPT else [PartName.ROOTFS, PartName.VERITY]
    verity = None
    if profile is VMProfile.VERITY:
        verity = VerityParams(
            root_hash="ab" * 32,
            salt="cd" * 32,
            uuid="01234567-89ab-cdef-0123-456789abcdef",
            data_blocks=10,
            root_partition_uuid=PUUID if layout is DiskLayout.GPT else None,
            verity_partition_uuid="abababab-abab-abab-abab-abababababab"
            if layout is DiskLayout.GPT
            else None,
        )
    return VMConfig(
        name="hello",
        version="1.0.0",
        profile=profile,
        layout=layout,
        architecture="amd64",
        kernel_release="6.1.0-57-cloud-amd64",
        parts=tuple(_part(n, i) for i, n in enumerate(names)),
        verity=verity,
        cmdline=("console=ttyS0", "quiet"),
        memory_mib=256,
        cpus=1,
        ports=("8080/tcp",),
        health=HealthCheck(check=HttpCheck(port=8080, path="/")),
        config=VMImageConfig(
            entrypoint=("/hello",), env=(("PATH", "/bin"),), workdir="/", writable=("/tmp",)
        ),
        tree_digest=Digest.of(b"tree"),
        modules=("virtio_ring", "virtio"),
    )


@pytest.mark.parametrize(
    ("profile", "layout"),
    [(VMProfile.VERITY, DiskLayout.GPT), (VMProfile.VERITY, DiskLayout.PARTS), (VMProfile.INITRAMFS, None)],
)
def test_round_trip_exact_bytes(profile: VMProfile, layout: DiskLayout | None) -> None:
    cfg = sample(profile, layout)
    data = cfg.to_bytes()
    back = VMConfig.from_bytes(data)
    assert back == cfg
    assert back.to_bytes() == data
    assert VMConfig.from_dict(json.loads(data)).to_bytes() == data
    assert back.digest == Digest.of(data)


def test_drives_and_cmdline() -> None:
    gpt = sample()
    assert [p.file for p in gpt.drives] == ["disk.raw"]
    parts = sample(VMProfile.VERITY, DiskLayout.PARTS)
    assert [p.file for p in parts.drives] == ["rootfs.erofs", "rootfs.verity"]
    assert sample(VMProfile.INITRAMFS, None).drives == ()
    line = gpt.boot_cmdline(["tsc_early_khz=2000000"])
    assert line.startswith("console=ttyS0 quiet tsc_early_khz=2000000 kiln.profile=verity kiln.layout=gpt")
    assert f"kiln.roothash={'ab' * 32}" in line.split()
    with pytest.raises(ValueError, match="host kernel argument"):
        gpt.boot_cmdline(["kiln.roothash=00"])


def test_verity_table() -> None:
    v = sample().verity
    assert v is not None
    assert v.table("/dev/vda1", "/dev/vda2") == (
        "0 80 verity 1 /dev/vda1 /dev/vda2 4096 4096 10 1 sha256 "
        f"{'ab' * 32} {'cd' * 32} 1 panic_on_corruption"
    )


def _mutate(path: list[str], value: object) -> bytes:
    d = json.loads(sample().to_bytes())
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["schemaVersion"], 2, "schemaVersion must be 1"),
        (["mediaType"], "x", "mediaType must be"),
        (["profile"], "disk", "'profile' is 'disk'"),
        (["bogus"], 1, "unknown key 'bogus'"),
        (["parts", "disk"], KeyError, "has the parts kernel, initrd, disk, not kernel, initrd"),
        (["parts", "extra"], {}, "unknown part 'extra'"),
        (["parts", "kernel", "mediaType"], "application/octet-stream", "unexpected mediaType"),
        (["parts", "kernel", "digest"], "sha256:00", "invalid digest"),
        (["parts", "kernel", "size"], -1, "'size' must be an integer"),
        (["verity", "rootHash"], "AB" * 32, "'rootHash' must be lowercase hex"),
        (["verity", "hashAlgorithm"], "sha1", "must be sha256"),
        (["verity", "dataBlockSize"], 3000, "'dataBlockSize' must be"),
        (["verity"], KeyError, "'verity' is required by the verity profile"),
        (["cmdline"], ["a b"], "kernel argument 'a b'"),
        (["cmdline"], ['x="y'], "kernel argument 'x=\"y'"),
        (["cmdline"], ["kiln.roothash=00"], "kiln.\\* arguments are derived"),
        (["cpus"], 0, "'cpus' must be an integer from 1"),
        (["config", "uid"], "0", "'uid' must be an integer"),
        (["health", "type"], "udp", "'type' must be http, tcp or exec"),
        (["kernelRelease"], "../x y", "invalid kernelRelease"),
    ],
)
def test_refusals(path: list[str], value: object, message: str) -> None:
    with pytest.raises(DocumentError, match=message.replace("(", r"\(")):
        VMConfig.from_bytes(_mutate(path, value))


def test_refuses_oversized_and_duplicates() -> None:
    with pytest.raises(DocumentError, match="cap"):
        VMConfig.from_bytes(b"{" + b" " * (2 << 20) + b"}")
    with pytest.raises(DocumentError, match="duplicate key"):
        VMConfig.from_bytes(b'{"name":"a","name":"b"}')


VM = "vm:\n  kernel: /k\n  modules: /m\n"
HEAD = """apiVersion: kiln.dev/v1
kind: Image
name: hello
version: 1.0.0
entrypoint: ["/hello"]
contents:
  - dir: {path: /data}
"""


def test_vm_section_parsed() -> None:
    text = HEAD + (
        "vm:\n  kernel: /boot/vmlinuz\n  modules: /lib/modules/6.1\n  profile: initramfs\n"
        "  memory: 1G\n  cpus: 2\n  cmdline: [quiet]\n"
    )
    m = parse_image_manifest(text.encode(), source="m.yaml", base_dir=Path(), fmt="yaml")
    assert m.vm == VMSpec(
        kernel="/boot/vmlinuz",
        modules="/lib/modules/6.1",
        profile=VMProfile.INITRAMFS,
        memory_mib=1024,
        cpus=2,
        cmdline=("quiet",),
    )
    plain = parse_image_manifest(HEAD.encode(), source="m.yaml", base_dir=Path(), fmt="yaml")
    assert plain.vm is None
    short = parse_image_manifest(
        (HEAD + "vm: {kernel: k}\n").encode(), source="m.yaml", base_dir=Path(), fmt="yaml"
    )
    assert short.vm == VMSpec(kernel="k")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("vm: 3\n", "m.yaml:8:1: vm: expected a mapping, got integer"),
        ("vm:\n  modules: /m\n", "m.yaml:8:1: vm.kernel: missing required key"),
        (
            VM + "  memory: 256\n",
            "m.yaml:11:3: vm.memory: expected a size such as 256M",
        ),
        (
            VM + "  memory: 12K\n",
            "m.yaml:11:3: vm.memory: invalid memory size '12K'",
        ),
        (VM + "  memory: 32M\n", "vm.memory: 32 MiB is out of range"),
        (VM + "  profile: disk\n", "m.yaml:11:3: vm.profile:"),
        (VM + "  cpus: 0\n", "m.yaml:11:3: vm.cpus: out of range (1 to 64)"),
        (
            VM + "  cmdline: [root=/dev/sda]\n",
            "vm.cmdline[0]: 'root' is set by kiln",
        ),
        (
            VM + "  cmdline: ['a b']\n",
            "vm.cmdline[0]: invalid kernel argument 'a b'",
        ),
        ("vm:\n  kernel: /k\n  modulez: /m\n", "vm.modulez: unknown key (did you mean 'modules'?)"),
        (
            VM + "  profile: initramfs\n  disk: gpt\n",
            "m.yaml:12:3: vm.disk: the initramfs profile has no disk",
        ),
    ],
)
def test_vm_section_errors(body: str, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_image_manifest((HEAD + body).encode(), source="m.yaml", base_dir=Path(), fmt="yaml")
    assert expected in str(info.value)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_vm_json_only_raises_document_errors(data: st.DataObject) -> None:
    """Untrusted vm.json bytes: a value anywhere replaced by junk is a DocumentError or a valid document."""
    doc = json.loads(sample().to_bytes())
    paths: list[list[str]] = []
    stack: list[tuple[list[str], object]] = [([], doc)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append([*path, k])
                stack.append(([*path, k], v))
    path = data.draw(st.sampled_from(paths))
    junk = data.draw(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        )
    )  # fmt: skip
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = junk
    raw = json.dumps(doc).encode()
    try:
        cfg = VMConfig.from_bytes(raw)
    except DocumentError:
        return
    assert cfg.to_bytes() == raw
