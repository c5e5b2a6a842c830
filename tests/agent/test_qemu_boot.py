"""VMs booted for real under qemu (TCG here): the runtime, ``kiln boot``, and the agent with a VM service.

The images are hand-made busybox initramfs images on the host's Debian cloud kernel
(:mod:`tests.agent.vmkit`), and examples/hello-vm built by ``kiln build --format vm``. Each boot
takes a few seconds under TCG; this module boots eleven times in all: the runtime's lifecycle
(one), the release's env reaching the guest (one), ``kiln boot``'s exit status (one), the agent's
release with a runc service and a VM service rolled forward and back (three; the part flipped in
the published copy is refused before boot), hello-vm with a flipped verity data byte (one),
drift: qemu killed, a part changed, past max_lifetime (four). A part changed between prepare and
boot is refused without booting.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.netns import connect_in_netns, list_netns
from agent.qemu import QemuRuntime
from agent.reconcile import Agent
from agent.runtime import InstanceSpec, InstanceStatus, new_instance_id
from kiln.cli import main
from manifests.agentconfig import AgentConfig, ImageLocation
from manifests.oci import Descriptor
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release
from tests.agent.agentkit import (
    NOW,
    free_port,
    http_get,
    make_release,
    make_root,
    service_yaml,
    sign_and_attest,
    signed,
)
from tests.agent.conftest import WebImage
from tests.agent.test_reconcile import Clock
from tests.agent.test_reconcile_runc import REPO, _signed_layout
from tests.agent.vmkit import available, make_vm_dir, vm_layout
from tests.support import IN_CI, require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VM_REPO = "localhost/hello-vm"


@pytest.fixture(autouse=True)
def _needs_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root("qemu instances live in network namespaces")
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    require_tool("nsenter", "util-linux")
    require_tool("ip", "iproute2")
    why = available()
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    monkeypatch.setenv("KILN_QEMU_ACCEL", os.environ.get("KILN_QEMU_ACCEL", "auto"))


def _get_in_netns(netns: str, port: int, path: str = "/", deadline: float = 120.0) -> bytes:
    """GET until the guest answers (slirp accepts on the host side before the guest listens)."""
    end = time.monotonic() + deadline
    while True:
        try:
            with connect_in_netns(netns, "127.0.0.1", port, timeout=3) as sock:
                sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            if data:
                return data
        except OSError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"the guest did not answer on {port} within {deadline}s")
        time.sleep(0.2)


def test_runtime_boots_serves_is_adopted_after_a_restart_and_stops(tmp_path: Path) -> None:
    image = tmp_path / "image"
    config = make_vm_dir(image, body="served by a guest\n")
    netns_before = set(list_netns())
    runtime = QemuRuntime(tmp_path / "state")
    iid = new_instance_id("hello")  # unique: other runs may boot VMs on this host at the same time
    spec = InstanceSpec(
        instance_id=iid,
        service="hello",
        image_digest=config.digest,
        image_config=json.loads(config.to_bytes()),
        rootfs=image,
    )
    handle = runtime.start(spec)
    try:
        assert b"served by a guest" in _get_in_netns(handle.netns_path, 8080)
        status = Path(f"/proc/{handle.pid}/status").read_text()
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in status  # dropped to nobody
        assert "\nSeccomp:\t2\n" in status  # filtered
        # A new runtime over the same state (the agent restarted) finds and controls it.
        again = QemuRuntime(tmp_path / "state")
        assert again.list() == (iid,)
        state = again.state(iid)
        assert state.status is InstanceStatus.RUNNING
        assert state.pid == handle.pid
        assert again.netns_path(iid) == handle.netns_path
        assert again.bundle_digest(iid) == runtime.bundle_digest(iid)
        # qemu killed from outside: the instance is known but not running (the agent's "died").
        os.kill(handle.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while again.state(iid).status is InstanceStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert again.state(iid).status is InstanceStatus.STOPPED
        log = runtime.log_path(iid).read_text()
        assert "guest: serving on 8080" in log  # the serial console was captured
    finally:
        runtime.stop(iid, grace=1.0)
    assert runtime.state(iid).status is InstanceStatus.MISSING
    assert runtime.list() == ()
    assert set(list_netns()) == netns_before


def test_the_release_env_reaches_the_guest_over_the_image_env(tmp_path: Path) -> None:
    """The runtime passes InstanceSpec.env (the release's per-service env) through qemu's fw_cfg;
    the guest init hands it to the entrypoint after the image's env, so it wins. One boot."""
    import re as _re
    import shutil

    from builder.vm.image import build_vm
    from manifests.image_parse import load_image_manifest
    from tests.builder.vm.kit import point_at_kernel

    shutil.copytree(HELLO_VM.parent, tmp_path / "src")
    manifest = point_at_kernel(tmp_path / "src" / HELLO_VM.name, profile="initramfs")
    script = 'echo "greeting=[$GREETING] odd=[$ODD] image=[$IMAGEONLY]"'
    text = _re.sub(
        r"(?m)^entrypoint: .*$",
        "entrypoint: " + json.dumps(["/bin/busybox", "sh", "-c", script]),
        manifest.read_text(),
    )
    manifest.write_text(text + "env:\n  GREETING: from the image\n  IMAGEONLY: kept\n")
    image = tmp_path / "vm"
    config = build_vm(load_image_manifest(manifest), output=image).config
    runtime = QemuRuntime(tmp_path / "state")
    iid = new_instance_id("env")
    odd = 'it\'s $HOME "q" `id` ; x\ty'
    spec = InstanceSpec(
        instance_id=iid,
        service="env",
        image_digest=config.digest,
        image_config=json.loads(config.to_bytes()),
        rootfs=image,
        env={"GREETING": "from the release", "ODD": odd},
    )
    runtime.start(spec)
    assert not (runtime.instance_dir(iid) / "env").exists()  # qemu read it at start-up
    try:
        deadline = time.monotonic() + 240
        log = ""
        while "kiln-exit:" not in log:
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
            log = runtime.log_path(iid).read_text(errors="replace")
    finally:
        runtime.stop(iid, grace=1.0)
    assert f"greeting=[from the release] odd=[{odd}] image=[kept]" in log, log
    assert "kiln-exit: 0" in log


def test_kiln_boot_exits_with_the_guests_status_and_refuses_a_tampered_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "image"
    make_vm_dir(image, exit_status=7)
    vm_layout(image)
    assert main(["boot", f"oci:{image}", "--timeout", "300"]) == 7
    out = capsys.readouterr()
    assert "kiln-exit: 7" in out.out
    assert "verified 2 parts" in out.err
    initrd = image / "initrd"
    data = bytearray(initrd.read_bytes())
    data[100] ^= 0x01
    initrd.write_bytes(bytes(data))
    assert main(["boot", str(image)]) == 3
    err = capsys.readouterr().err
    assert "part initrd" in err
    assert "kiln-exit" not in err


def _vm_svc(port: int, digest: object, *, max_lifetime: str | None = None) -> dict[str, object]:
    return service_yaml(
        "vm",
        f"{VM_REPO}@{digest}",
        listen=f"127.0.0.1:{port}",
        grace="300ms",
        interval="300ms",
        retries=3,
        max_lifetime=max_lifetime,
    )


def _web_svc(port: int, digest: object) -> dict[str, object]:
    return service_yaml(
        "web", f"{REPO}@{digest}", listen=f"127.0.0.1:{port}", grace="300ms", interval="200ms", retries=2
    )


def _publish_vm(tmp_path: Path, repo: Path, body: str, version: str) -> Descriptor:
    """Build a VM image, ``kiln copy`` it into the published repository, sign it there."""
    image = tmp_path / f"vm-{version}"
    make_vm_dir(image, body=body, version=version)
    vm_layout(image)
    assert main(["copy", f"oci:{image}:{version}", f"oci:{repo}:{version}", "-q"]) == 0
    desc = LayoutRepository(repo).layout.resolve(version)
    sign_and_attest(repo, desc, identity=VM_REPO)
    return desc


def test_agent_serves_a_container_and_a_vm_rolls_the_vm_forward_and_back_and_refuses_a_flipped_part(
    python_web: WebImage, tmp_path: Path
) -> None:
    require_tool("runc", "runc")
    netns_before = set(list_netns())
    web = _signed_layout(python_web, tmp_path / "layout")
    repo = tmp_path / "vm-repo"
    v1 = _publish_vm(tmp_path, repo, "vm one\n", "1.0.0")
    v2 = _publish_vm(tmp_path, repo, "vm two\n", "2.0.0")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    web_port, vm_port = free_port(), free_port()
    config = AgentConfig(
        source=f"oci:{tmp_path / 'releases'}",
        channel="stable",
        trust_root=root_path,
        state=tmp_path / "state",
        images=(
            ImageLocation(repository=REPO, location=f"oci:{tmp_path / 'layout'}"),
            ImageLocation(repository=VM_REPO, location=f"oci:{repo}"),
        ),
    )
    releases = LayoutRepository(tmp_path / "releases", create=True)

    def release(version: int, vm: Descriptor) -> None:
        rel = make_release(version, [_web_svc(web_port, web.digest), _vm_svc(vm_port, vm.digest)])
        publish_release(releases, signed(rel), force=True)

    release(1, v1)
    agent = Agent(config, wall=Clock(NOW), health_deadline=120.0, drain_timeout=2.0, stop_grace=1.0)
    agent.start()
    try:
        result = agent.reconcile_once()
        assert result.outcome == "rolled-out", result
        assert http_get("127.0.0.1", web_port)[0] == 200
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm one\n")
        kinds = {r.service: r.id for r in agent.journal.state.instances}
        assert QemuRuntime(config.state).list() == (kinds["vm"],)

        release(2, v2)
        assert agent.reconcile_once().outcome == "rolled-out"
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm two\n")
        assert http_get("127.0.0.1", web_port)[0] == 200
        after = {r.service: r.id for r in agent.journal.state.instances}
        assert after["web"] == kinds["web"]  # the container service was left alone
        assert QemuRuntime(config.state).list() == (after["vm"],)
        assert after["vm"] != kinds["vm"]

        assert agent.rollback().version == 1
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm one\n")
        assert QemuRuntime(config.state).list() == tuple(
            r.id for r in agent.journal.state.instances if r.service == "vm"
        )

        # A byte flipped in a part of the published copy: refused before anything boots.
        v3 = _publish_vm(tmp_path, repo, "vm three\n", "3.0.0")
        initrd = next(layer for layer in _layers(repo, v3) if "initrd" in layer["mediaType"])
        blob = repo / "blobs" / "sha256" / initrd["digest"].split(":")[1]
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        booted = QemuRuntime(config.state).list()
        release(3, v3)
        result = agent.reconcile_once()
        assert result.outcome == "refused"
        assert result.reason == "digest"
        assert agent.journal.state.last_refusal is not None
        assert agent.journal.state.last_refusal.reason == "digest"
        assert QemuRuntime(config.state).list() == booted
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm one\n")
    finally:
        agent.close(stop_instances=True)
    assert QemuRuntime(config.state).list() == ()
    assert set(list_netns()) == netns_before


def _layers(repo: Path, desc: Descriptor) -> list[dict[str, str]]:
    doc = json.loads((repo / "blobs" / "sha256" / desc.digest.hex).read_bytes())
    return list(doc["layers"])


HELLO_VM = Path(__file__).resolve().parents[2] / "examples" / "hello-vm" / "hello-vm.yaml"


def _flip_in_root_partition(disk: Path, offset: int) -> None:
    """Flip one bit ``offset`` bytes into the GPT disk's first partition (the EROFS root)."""
    with open(disk, "r+b") as fh:
        fh.seek(512)
        header = fh.read(92)
        (entries_lba,) = struct.unpack_from("<Q", header, 72)
        fh.seek(entries_lba * 512)
        (first,) = struct.unpack_from("<Q", fh.read(128), 32)
        fh.seek(first * 512 + offset)
        byte = fh.read(1)[0]
        fh.seek(first * 512 + offset)
        fh.write(bytes([byte ^ 0x01]))


def test_a_flipped_verity_data_byte_is_refused_and_booted_unsafely_makes_the_guest_panic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hello-vm"
    assert main(["build", str(HELLO_VM), "--format", "vm", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    _flip_in_root_partition(out / "disk.raw", 3000)  # in the EROFS image's first block: always read
    assert main(["boot", str(out)]) == 3  # verified: refused before boot
    err = capsys.readouterr().err
    assert "part disk" in err
    assert "kiln-exit" not in err
    assert main(["boot", str(out), "--unsafe-skip-verify", "--timeout", "300"]) == 1
    captured = capsys.readouterr()
    assert "--unsafe-skip-verify" in captured.err
    assert "warning" in captured.err
    assert "dm-verity device corrupted" in captured.out
    assert "kiln-exit" not in captured.out
    assert "panicked" in captured.err


def test_a_part_changed_between_prepare_and_boot_is_refused_as_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing boots here: the runtime refuses the changed part as it copies it for qemu."""
    repo = tmp_path / "vm-repo"
    v1 = _publish_vm(tmp_path, repo, "vm toctou\n", "1.0.0")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    config = AgentConfig(
        source=f"oci:{tmp_path / 'releases'}",
        channel="stable",
        trust_root=root_path,
        state=tmp_path / "state",
        images=(ImageLocation(repository=VM_REPO, location=f"oci:{repo}"),),
    )
    releases = LayoutRepository(tmp_path / "releases", create=True)
    publish_release(releases, signed(make_release(1, [_vm_svc(free_port(), v1.digest)])))
    agent = Agent(config, wall=Clock(NOW), health_deadline=60.0, drain_timeout=1.0, stop_grace=1.0)
    agent.start()
    prepare = agent._prepare

    def prepare_then_tamper(*args: Any, **kw: Any) -> Any:
        prepared = prepare(*args, **kw)
        for prep in prepared.values():  # checked and placed: now one byte changes on disk
            initrd = Path(str(prep.rootfs)) / "initrd"
            data = bytearray(initrd.read_bytes())
            data[len(data) // 2] ^= 0x01
            initrd.chmod(0o644)
            initrd.write_bytes(bytes(data))
        return prepared

    monkeypatch.setattr(agent, "_prepare", prepare_then_tamper)
    try:
        result = agent.reconcile_once()
        assert result.outcome == "refused", result
        assert result.reason == "digest"
        assert "part initrd" in result.detail
        refusal = agent.journal.state.last_refusal
        assert refusal is not None
        assert refusal.reason == "digest"
        assert agent.journal.state.instances == ()
        assert QemuRuntime(config.state).list() == ()
    finally:
        agent.close(stop_instances=True)


def test_agent_replaces_a_vm_whose_qemu_died_whose_part_changed_and_past_its_lifetime(tmp_path: Path) -> None:
    repo = tmp_path / "vm-repo"
    v1 = _publish_vm(tmp_path, repo, "vm drift\n", "1.0.0")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    vm_port = free_port()
    config = AgentConfig(
        source=f"oci:{tmp_path / 'releases'}",
        channel="stable",
        trust_root=root_path,
        state=tmp_path / "state",
        images=(ImageLocation(repository=VM_REPO, location=f"oci:{repo}"),),
    )
    releases = LayoutRepository(tmp_path / "releases", create=True)
    publish_release(releases, signed(make_release(1, [_vm_svc(vm_port, v1.digest, max_lifetime="1h")])))
    clock = Clock(NOW)
    agent = Agent(config, wall=clock, health_deadline=120.0, drain_timeout=2.0, stop_grace=1.0)
    agent.start()
    try:
        assert agent.reconcile_once().outcome == "rolled-out"
        (first,) = agent.journal.state.instances
        # qemu killed from outside: "died", replaced by a fresh instance.
        pid = QemuRuntime(config.state).state(first.id).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        result = agent.reconcile_once()
        assert result.replaced == 1
        (second,) = agent.journal.state.instances
        assert second.id != first.id
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm drift\n")
        # A part of the placed image changed on disk: "root", re-placed from the store and rebooted.
        initrd = agent.roots_dir / second.manifest.split(":")[1] / "initrd"
        original = initrd.read_bytes()
        initrd.chmod(0o644)
        initrd.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
        result = agent.reconcile_once()
        assert result.replaced == 1
        (third,) = agent.journal.state.instances
        assert third.id != second.id
        assert initrd.read_bytes() == original
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm drift\n")
        assert QemuRuntime(config.state).list() == (third.id,)
        # Past max_lifetime: replaced, the address keeps answering.
        clock.now = NOW + timedelta(hours=1, minutes=1)
        result = agent.reconcile_once()
        assert result.replaced == 1
        (fourth,) = agent.journal.state.instances
        assert fourth.id != third.id
        assert http_get("127.0.0.1", vm_port, timeout=10) == (200, b"vm drift\n")
        assert QemuRuntime(config.state).list() == (fourth.id,)
    finally:
        agent.close(stop_instances=True)
    assert QemuRuntime(config.state).list() == ()
