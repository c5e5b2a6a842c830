"""A VM image through the unchanged image verbs and a real registry, then booted from its reference.

examples/hello-vm is built with ``kiln build --format vm`` (the directory is also an OCI layout),
signed with ``kiln sign``, published with ``kiln publish`` to Debian's docker-registry on loopback,
verified there with ``kiln verify``, pulled with ``kiln pull`` (digests unchanged), copied to
another repository with ``kiln copy``, and ``kiln boot`` boots it from the registry reference (one
TCG boot; the guest serves HTTP on a published loopback port; the test interrupts it after the answer).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.testing import private_registry
from manifests.mediatypes import MediaType
from tests.agent.vmkit import available
from tests.support import IN_CI, require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELLO_VM = Path(__file__).resolve().parents[2] / "examples" / "hello-vm" / "hello-vm.yaml"


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def test_a_vm_image_is_signed_published_verified_pulled_copied_and_booted_from_a_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("docker-registry", "docker-registry")
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    require_root("the test boots a VM")
    why = available()
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    monkeypatch.setenv("KILN_PASSWORD", "vm-publish-test")
    out = tmp_path / "hello-vm"
    built = _json(capsys, ["build", str(HELLO_VM), "--format", "vm", "-o", str(out)])
    digest = str(built["digest"])
    version = str(built["image_version"])
    assert main(["key", "generate", "--out", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert main(["sign", "--key", str(tmp_path / "k.key"), "--identity", "localhost/hello-vm",
                 f"oci:{out}:{version}"]) == 0  # fmt: skip
    capsys.readouterr()
    with private_registry(tmp_path / "registry") as host:
        repo = f"{host}/kiln/hello-vm"
        pub = _json(capsys, ["publish", str(out), repo, "--insecure"])
        assert pub["digest"] == digest
        assert main(["verify", "--key", str(tmp_path / "k.pub"), "--identity", "localhost/hello-vm",
                     f"{repo}:{version}", "--insecure"]) == 0  # fmt: skip
        capsys.readouterr()
        pulled = _json(capsys, ["pull", f"{repo}:{version}", str(tmp_path / "pulled"), "--insecure"])
        assert pulled["digest"] == digest
        manifest = json.loads((tmp_path / "pulled" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
        assert manifest["artifactType"] == MediaType.KILN_VM
        assert manifest["config"]["mediaType"] == MediaType.KILN_VM
        types = [layer["mediaType"] for layer in manifest["layers"]]
        assert types[0] == MediaType.KILN_VM_KERNEL
        assert types[1] in (MediaType.KILN_VM_INITRD_GZIP, MediaType.KILN_VM_INITRD_ZSTD)
        assert types[2:] == [MediaType.KILN_VM_DISK]
        copied = _json(
            capsys, ["copy", f"{repo}:{version}", f"{host}/other/hello-vm:{version}", "--insecure"]
        )
        assert copied["digest"] == digest

        port = _free_port()
        boot = subprocess.Popen(
            [sys.executable, "-m", "kiln", "boot", f"{host}/other/hello-vm@{digest}", "--insecure",
             "-p", f"127.0.0.1:{port}:8080", "--timeout", "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            answer = _first_answer(port, boot)
        finally:
            boot.send_signal(signal.SIGINT)  # kiln boot stops its qemu on an interrupt
            console, errors = boot.communicate(timeout=60)
    assert answer is not None, f"the guest never answered:\n{console[-2000:]!r}\n{errors[-2000:]!r}"
    assert answer.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), answer[:100]
    assert b"verified 3 parts" in errors
    assert boot.returncode == 130


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_answer(port: int, boot: subprocess.Popen[bytes]) -> bytes | None:
    """GET / until the guest answers (None if kiln boot ends first or two minutes pass)."""
    end = time.monotonic() + 120
    while time.monotonic() < end and boot.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = s.recv(4096)
            if data:
                return data
        except OSError:
            pass
        time.sleep(0.2)
    return None
