"""The qemu runtime's pure parts: the command line, how a guest ended, the checks before a boot."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import struct
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import InstanceError, RuntimeFailure
from agent.qemu import (
    Accel,
    BootPlan,
    Forward,
    Machine,
    QemuRuntime,
    RoutedRuntime,
    env_script,
    guest_exit,
    guest_ports,
    host_tsc_khz,
    kvm_usable,
    pick_accel,
    qemu_argv,
)
from agent.runtime import InstanceSpec, InstanceStatus
from agent.vmimage import check_parts, check_root_hash, check_vm_dir, sealed_parts
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.image import HealthCheck, HttpCheck
from manifests.mediatypes import MediaType
from manifests.vm import (
    DiskLayout,
    PartName,
    VerityParams,
    VMConfig,
    VMImageConfig,
    VMPart,
    VMProfile,
)
from tests.agent.agentkit import FakeRuntime
from tests.support import memfds


def _plan(**kw: object) -> BootPlan:
    base = {
        "name": "kiln-web-0123abcd",
        "kernel": Path("/x/kernel"),
        "initrd": Path("/x/initrd"),
        "drives": (Path("/x/rootfs.erofs"), Path("/x/rootfs.verity")),
        "cmdline": "console=ttyS0 panic=-1 reboot=t kiln.roothash=ab",
        "memory_mib": 256,
        "cpus": 1,
        "forwards": (Forward(host="127.0.0.1", host_port=18080, guest_port=8080),),
        "serial": Path("/state/logs/kiln-web-0123abcd.log"),
    }
    base.update(kw)
    return BootPlan(**base)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_microvm_read_only_drives_restricted_net_and_exit_device() -> None:
    argv = qemu_argv(_plan(), pidfile=Path("/state/qemu/x/qemu.pid"))
    assert _after(argv, "-M") == ["microvm"]
    assert _after(argv, "-accel") == ["tcg"]
    assert "-no-reboot" in argv
    drives = _after(argv, "-drive")
    assert drives == [
        "id=d0,file=/x/rootfs.erofs,format=raw,if=none,readonly=on",
        "id=d1,file=/x/rootfs.verity,format=raw,if=none,readonly=on",
    ]
    devices = _after(argv, "-device")
    assert "virtio-blk-device,drive=d0" in devices
    assert "virtio-net-device,netdev=n0" in devices
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in devices
    assert _after(argv, "-netdev") == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:18080-:8080"]
    assert _after(argv, "-chardev") == ["file,id=s0,path=/state/logs/kiln-web-0123abcd.log,append=on"]
    assert _after(argv, "-append") == ["console=ttyS0 panic=-1 reboot=t kiln.roothash=ab"]
    assert argv[-3:] == ["-daemonize", "-pidfile", "/state/qemu/x/qemu.pid"]
    assert _after(argv, "-sandbox") == ["on,obsolete=deny,resourcecontrol=deny"]
    assert "-runas" not in argv
    assert _after(qemu_argv(_plan(run_as="65534:65534")), "-runas") == ["65534:65534"]
    assert "guest=kiln-web-0123abcd" in argv


def test_argv_q35_fallback_uses_pci_and_kvm_uses_the_host_cpu() -> None:
    argv = qemu_argv(_plan(machine=Machine.Q35, accel=Accel.KVM, serial=None))
    assert _after(argv, "-M") == ["q35"]
    assert _after(argv, "-cpu") == ["host"]
    assert "virtio-blk-pci,drive=d0" in _after(argv, "-device")
    assert "virtio-net-pci,netdev=n0" in _after(argv, "-device")
    assert _after(argv, "-chardev") == ["stdio,id=s0,signal=off"]
    assert "-daemonize" not in argv


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    argv = qemu_argv(_plan(drives=(Path("/x/a,b"),)))
    assert _after(argv, "-drive")[0].startswith("id=d0,file=/x/a,,b,")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:8080:80", Forward(host="127.0.0.1", host_port=8080, guest_port=80)),
        ("9000:8080", Forward(host="127.0.0.1", host_port=9000, guest_port=8080)),
    ],
)
def test_forward_parse(text: str, want: Forward) -> None:
    assert Forward.parse(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:8080:80", "refusing to forward 0.0.0.0:8080"),
        ("127.0.0.1:x:80", "invalid --publish"),
        ("8080", "invalid --publish"),
        ("127.0.0.1:70000:80", "invalid port forward"),
    ],
)
def test_forward_parse_refusals(text: str, message: str) -> None:
    with pytest.raises(InstanceError, match=message):
        Forward.parse(text)


@pytest.mark.parametrize(
    ("rc", "serial", "status", "detail"),
    [
        (7, "", 3, "exited with 3"),  # isa-debug-exit: 2N+1
        (1, "kiln-exit: 0\n", 0, "exited with 0"),
        (1, "", None, "qemu failed (exit 1)"),  # qemu's own error
        (0, "guest: bye\nkiln-exit: 4\n[ 1.2] reboot: Restarting system\n", 4, "exited with 4"),
        (
            0,
            "[ 2.0] device-mapper: verity: 254:0: data block 0 is corrupted\n"
            "[ 2.0] Kernel panic - not syncing: dm-verity device corrupted\n",
            None,
            "panicked: dm-verity device corrupted",
        ),
        (0, "kiln-exit: 0\nKernel panic - not syncing: Attempted to kill init!\n", None, "panicked"),
        (0, "no marker", None, "rebooted without an exit status"),
        (0, "kiln-exit: 300", None, "rebooted without an exit status"),
        (-9, "", None, "qemu failed (exit -9)"),
    ],
)
def test_guest_exit(rc: int, serial: str, status: int | None, detail: str) -> None:
    result = guest_exit(rc, serial)
    assert result.status == status
    assert detail in result.detail
    assert result.code == (status if status is not None else 1)


def test_host_tsc_khz_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2600.000\n")
    khz = host_tsc_khz(cpuinfo)
    assert khz is not None
    assert khz > 0
    cpuinfo.write_text("processor\t: 0\n")
    assert host_tsc_khz(cpuinfo) is None or Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").exists()


def test_kvm_needs_hardware_virtualization(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 hypervisor\n")
    assert kvm_usable(cpuinfo=cpuinfo) is False
    cpuinfo.write_text("flags\t\t: fpu vmx\n")
    assert kvm_usable(device=str(tmp_path / "no-kvm"), cpuinfo=cpuinfo) is False


def test_pick_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_accel("tcg") is Accel.TCG
    monkeypatch.setenv("KILN_QEMU_ACCEL", "kvm")
    assert pick_accel(None) is Accel.KVM
    with pytest.raises(InstanceError, match="unknown accelerator"):
        pick_accel("xen")


# -- checks before a boot --------------------------------------------------------------------------


def _part(directory: Path, name: PartName, data: bytes, mt: MediaType) -> VMPart:
    (directory / name.file).write_bytes(data)
    return VMPart(name=name, media_type=mt, digest=Digest.of(data), size=len(data))


def _verity_image(directory: Path, *, layout: DiskLayout) -> VMConfig:
    """A synthetic verity image: the hash device is a superblock block and one top block."""
    salt = bytes(range(32))
    top = hashlib.sha256(b"the tree's top block").digest() * 128
    root_hash = hashlib.sha256(salt + top).hexdigest()
    hash_dev = b"verity\0\0" + bytes(4088) + top
    parts = [
        _part(directory, PartName.KERNEL, b"kernel bytes", MediaType.KILN_VM_KERNEL),
        _part(directory, PartName.INITRD, b"initrd bytes", MediaType.KILN_VM_INITRD_GZIP),
    ]
    vuuid = str(uuid.UUID(root_hash[32:]))
    if layout is DiskLayout.GPT:
        disk = bytearray(512 * 40 + len(hash_dev))
        header = bytearray(92)
        header[:8] = b"EFI PART"
        struct.pack_into("<QII", header, 72, 2, 4, 128)
        disk[512 : 512 + 92] = header
        entry = bytearray(128)
        entry[16:32] = uuid.UUID(vuuid).bytes_le
        struct.pack_into("<Q", entry, 32, 40)
        disk[1024 + 128 : 1024 + 256] = entry  # the second entry
        disk[512 * 40 :] = hash_dev
        parts.append(_part(directory, PartName.DISK, bytes(disk), MediaType.KILN_VM_DISK))
    else:
        parts.append(_part(directory, PartName.ROOTFS, b"erofs" * 100, MediaType.KILN_VM_ROOTFS))
        parts.append(_part(directory, PartName.VERITY, hash_dev, MediaType.KILN_VM_VERITY))
    return VMConfig(
        name="web",
        version="1.0.0",
        profile=VMProfile.VERITY,
        layout=layout,
        architecture="amd64",
        kernel_release="6.1.0-57-cloud-amd64",
        parts=tuple(parts),
        verity=VerityParams(
            root_hash=root_hash,
            salt=salt.hex(),
            uuid="00000000-0000-0000-0000-000000000001",
            data_blocks=1,
            verity_partition_uuid=vuuid if layout is DiskLayout.GPT else None,
        ),
        cmdline=("console=ttyS0",),
        memory_mib=256,
        cpus=1,
        ports=("8080/tcp", "9090/tcp"),
        health=HealthCheck(check=HttpCheck(port=8081, path="/h"), interval=1.0, timeout=1.0, retries=2),
        config=VMImageConfig(),
        tree_digest=Digest.of(b"tree"),
        modules=(),
    )


@pytest.mark.parametrize("layout", [DiskLayout.PARTS, DiskLayout.GPT])
def test_an_intact_image_passes_and_any_flipped_byte_is_refused_as_digest(
    tmp_path: Path, layout: DiskLayout
) -> None:
    config = _verity_image(tmp_path, layout=layout)
    check_vm_dir(tmp_path, config)
    for part in config.parts:
        path = tmp_path / part.file
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(VerificationError, match=f"part {part.name}") as err:
            check_vm_dir(tmp_path, config)
        assert err.value.reason == "digest"
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    (tmp_path / PartName.KERNEL.file).unlink()
    with pytest.raises(VerificationError, match="is missing"):
        check_parts(tmp_path, config)


@pytest.mark.parametrize("layout", [DiskLayout.PARTS, DiskLayout.GPT])
def test_a_root_hash_that_is_not_the_trees_is_refused(tmp_path: Path, layout: DiskLayout) -> None:
    config = _verity_image(tmp_path, layout=layout)
    assert config.verity is not None
    other = replace(config, verity=replace(config.verity, root_hash="ab" * 32))
    with pytest.raises(VerificationError, match="the verity tree's root is") as err:
        check_root_hash(tmp_path, other)
    assert err.value.reason == "digest"


@pytest.mark.parametrize("layout", [DiskLayout.PARTS, DiskLayout.GPT])
def test_sealed_parts_are_the_checked_bytes_and_cannot_change(tmp_path: Path, layout: DiskLayout) -> None:
    config = _verity_image(tmp_path, layout=layout)
    fds = sealed_parts(tmp_path, config)
    try:
        assert set(fds) == {p.name for p in config.parts}
        for part in config.parts:
            fd = fds[part.name]
            original = (tmp_path / part.file).read_bytes()
            # The file changes on disk after the check: what qemu would open is still the original.
            (tmp_path / part.file).write_bytes(b"changed after the check")
            assert Path(f"/proc/self/fd/{fd}").read_bytes() == original
            with pytest.raises(PermissionError):  # sealed: no write, no resize
                os.pwrite(fd, b"x", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 1)
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SEAL
    finally:
        for fd in fds.values():
            os.close(fd)
    # And a part that differs from vm.json is refused as it is copied; nothing stays open.
    before = memfds()
    with pytest.raises(VerificationError, match="at boot") as err:
        sealed_parts(tmp_path, config)
    assert err.value.reason == "digest"
    assert memfds() == before


def test_sealed_parts_translate_a_host_error_and_close_what_they_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memfd_create failing (EMFILE, ENOMEM) on the second part is a RuntimeFailure naming the
    directory, not a raw OSError; the first part's memfd is closed."""
    config = _verity_image(tmp_path, layout=DiskLayout.PARTS)
    real = os.memfd_create
    calls: list[str] = []

    def memfd_create(name: str, flags: int = 0) -> int:
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(name, flags)

    monkeypatch.setattr(os, "memfd_create", memfd_create)
    before = memfds()
    with pytest.raises(
        RuntimeFailure, match=r"cannot copy the VM image's parts into sealed memory: Too many"
    ):
        sealed_parts(tmp_path, config)
    assert len(calls) == 2
    assert memfds() == before


@pytest.mark.parametrize("layout", [DiskLayout.PARTS, DiskLayout.GPT])
def test_sealed_parts_check_the_root_hash_of_the_copy(tmp_path: Path, layout: DiskLayout) -> None:
    config = _verity_image(tmp_path, layout=layout)
    assert config.verity is not None
    other = replace(config, verity=replace(config.verity, root_hash="ab" * 32))
    with pytest.raises(VerificationError, match=r"\(as booted\): the verity tree's root is") as err:
        sealed_parts(tmp_path, other)
    assert err.value.reason == "digest"


def test_env_script_quotes_every_value_and_refuses_bad_names() -> None:
    script = env_script({"B": "it's $HOME `id`", "A": "1"})
    assert script == b"set -- A=1 'B=it'\"'\"'s $HOME `id`'\n"
    with pytest.raises(InstanceError, match="not valid"):
        env_script({"-x": "1"})
    with pytest.raises(InstanceError, match="not valid"):
        env_script({"A B": "1"})
    with pytest.raises(InstanceError, match="NUL"):
        env_script({"A": "\x00"})
    with pytest.raises(InstanceError, match="environment variable A: the value is not valid UTF-8"):
        env_script({"A": "lone \udcff surrogate"})
    plan = BootPlan(
        name="x",
        kernel=Path("/k"),
        initrd=Path("/i"),
        drives=(),
        cmdline="c",
        memory_mib=64,
        cpus=1,
        forwards=(),
        serial=None,
        env_file=Path("/s/a,b/env"),
    )
    argv = qemu_argv(plan)
    assert argv[argv.index("-fw_cfg") + 1] == "name=opt/kiln/env,file=/s/a,,b/env"


def test_guest_ports_are_the_images_then_the_health_port(tmp_path: Path) -> None:
    assert guest_ports(_verity_image(tmp_path, layout=DiskLayout.PARTS)) == (8080, 9090, 8081)


def test_the_runtime_refuses_a_tampered_part_before_creating_anything(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    config = _verity_image(image, layout=DiskLayout.PARTS)
    (image / "rootfs.erofs").write_bytes(b"tampered")
    runtime = QemuRuntime(tmp_path / "state", qemu="/nonexistent/qemu", accel="tcg")
    spec = InstanceSpec(
        instance_id="kiln-web-00000001",
        service="web",
        image_digest=Digest.of(b"x"),
        image_config=json.loads(config.to_bytes()),
        rootfs=image,
    )
    with pytest.raises(VerificationError, match="part rootfs") as err:
        runtime.start(spec)
    assert err.value.reason == "digest"
    assert runtime.list() == ()
    assert runtime.state("kiln-web-00000001").status is InstanceStatus.MISSING


def test_the_release_env_file_is_private_and_gone_once_qemu_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env (it may hold secrets) is written 0600 for qemu's -fw_cfg file= and removed once
    qemu started (qemu reads it at start-up; the boot test checks the guest still gets it)."""
    image = tmp_path / "image"
    image.mkdir()
    config = _verity_image(image, layout=DiskLayout.PARTS)
    runtime = QemuRuntime(tmp_path / "state", accel="tcg")
    seen: list[tuple[int, bytes]] = []

    def launch(iid: str, netns: str, argv: list[str], pidfile: Path, *, fds: tuple[int, ...] = ()) -> int:
        env = Path(argv[argv.index("-fw_cfg") + 1].split(",file=", 1)[1])
        seen.append((os.stat(env).st_mode & 0o7777, env.read_bytes()))
        return 4242

    monkeypatch.setattr(runtime, "_launch", launch)
    spec = InstanceSpec(
        instance_id="kiln-web-00000002",
        service="web",
        image_digest=Digest.of(b"x"),
        image_config=json.loads(config.to_bytes()),
        rootfs=image,
        netns="/run/netns/not-owned",
        env={"TOKEN": "s3cret"},
    )
    runtime.start(spec)
    assert seen == [(0o600, b"set -- TOKEN=s3cret\n")]
    assert not (runtime.instance_dir("kiln-web-00000002") / "env").exists()
    assert (runtime.instance_dir("kiln-web-00000002") / "instance.json").exists()


def test_routed_runtime_sends_containers_to_the_container_runtime(tmp_path: Path) -> None:
    fake = FakeRuntime()
    routed = RoutedRuntime(fake, QemuRuntime(tmp_path / "state", accel="tcg"))
    spec = InstanceSpec(
        instance_id="kiln-api-00000001",
        service="api",
        image_digest=Digest.of(b"x"),
        image_config={"config": {}},
    )
    try:
        handle = routed.start(spec)
        assert handle.runtime == "fake"
        assert routed.list() == ("kiln-api-00000001",)
        assert routed.state("kiln-api-00000001").status is InstanceStatus.RUNNING
        assert routed.name == "fake+qemu"
    finally:
        routed.stop("kiln-api-00000001")
    assert routed.state("kiln-api-00000001").status is InstanceStatus.MISSING
