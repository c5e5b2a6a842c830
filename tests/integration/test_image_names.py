"""Archives name their image as Docker 25+ does: podman and containerd's ctr load them as NAME:VERSION.

Two different images are loaded one after the other into the same store, from both archive
formats: each keeps its own name (before, every kiln archive loaded as ``localhost/1.0.0:latest``
and the second load took the first one's name).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import EXAMPLES, build_json
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration


def _two_images(tmp_path: Path) -> list[tuple[str, Path]]:
    """(expected name, manifest) for hello-static and a second, different image."""
    first = EXAMPLES / "hello-static" / "hello.yaml"
    text = (
        first.read_text()
        .replace("name: hello-static", "name: greeter")
        .replace("version: 1.0.0", "version: 2.5.1")
    )
    text = text.replace("hello from kiln", "greetings from kiln")
    second = tmp_path / "greeter.yaml"
    second.write_text(text)
    return [("hello-static:1.0.0", first), ("greeter:2.5.1", second)]


def _archives(tmp_path: Path) -> list[tuple[str, Path]]:
    out = []
    for fmt in ("oci-archive", "docker-archive"):
        for name, manifest in _two_images(tmp_path):
            path = tmp_path / f"{name.replace(':', '_')}.{fmt}.tar"
            build_json(manifest, path, "--format", fmt, "--no-cache")
            out.append((name, path))
    return out


def test_podman_load_names_each_archive(tmp_path: Path) -> None:
    podman = require_tool("podman", "podman")
    require_root("podman with a private storage root")
    # podman refuses a runroot path longer than 50 characters: a short one of our own.
    store = Path(tempfile.mkdtemp(prefix="kiln-pod-"))
    base = [podman, "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    for name, archive in _archives(tmp_path):
        proc = subprocess.run(
            [*base, "load", "-i", str(archive)], capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert f"Loaded image: localhost/{name}" in proc.stdout, (archive.name, proc.stdout)
    listing = subprocess.run(
        [*base, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert sorted(set(listing)) == ["localhost/greeter:2.5.1", "localhost/hello-static:1.0.0"]
    # A --name override is what podman calls it.
    custom = tmp_path / "custom.tar"
    build_json(EXAMPLES / "hello-static" / "hello.yaml", custom, "--format", "oci-archive",
               "--name", "registry.example:5000/team/hello:7.0", "--no-cache")  # fmt: skip
    proc = subprocess.run(
        [*base, "load", "-i", str(custom)], capture_output=True, text=True, timeout=300, check=True
    )
    assert "Loaded image: registry.example:5000/team/hello:7.0" in proc.stdout
    subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=120, check=False)
    shutil.rmtree(store, ignore_errors=True)


@contextlib.contextmanager
def _private_containerd(root: Path) -> Iterator[Path]:
    """A containerd on its own root, state and socket (no CRI), stopped afterwards."""
    require_tool("containerd", "containerd")
    require_root("containerd runs as root here")
    root.mkdir(parents=True)
    sock = root / "c.sock"
    config = root / "config.toml"
    disabled = ", ".join(
        f'"io.containerd.{p}"'
        for p in ("grpc.v1.cri", "snapshotter.v1.btrfs", "snapshotter.v1.zfs", "snapshotter.v1.aufs",
                  "snapshotter.v1.devmapper")
    )  # fmt: skip
    config.write_text(
        f'version = 2\nroot = "{root / "root"}"\nstate = "{root / "state"}"\n'
        f"disabled_plugins = [{disabled}]\n"
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
    )
    log = open(root / "containerd.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((root / "containerd.log").read_text()[-2000:])
            time.sleep(0.05)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_ctr_import_names_each_archive(tmp_path: Path) -> None:
    ctr = require_tool("ctr", "containerd")
    archives = _archives(tmp_path)
    with _private_containerd(tmp_path / f"containerd-{uuid.uuid4().hex[:8]}") as sock:
        base = [ctr, "-a", str(sock), "-n", "kiln-test"]
        for name, archive in archives:
            proc = subprocess.run(
                [*base, "images", "import", str(archive)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            assert f"unpacking {name} " in proc.stdout or f"unpacking {name} " in proc.stderr, proc.stdout
        names = subprocess.run(
            [*base, "images", "ls", "-q"], capture_output=True, text=True, timeout=120, check=True
        ).stdout.split()
    assert sorted(names) == ["greeter:2.5.1", "hello-static:1.0.0"]
