"""Shared fixtures: real external components started privately on loopback, and stopped after.

Under ``CI=true`` a missing tool is a failure, never a skip: ``make test`` installs every tool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def require_tool(name: str, package: str) -> str:
    """Return the tool's path; skip (or fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (Debian package {package}; `make test` installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        msg = f"needs root: {why}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, *, timeout: float = 1.0) -> tuple[int, bytes]:
    """One GET; returns (status, body). Raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http(url: str, *, attempts: int = 100, delay: float = 0.1) -> tuple[int, bytes]:
    """Poll ``url`` a bounded number of times until it answers; raise the last error otherwise."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return http_get(url)
        except OSError as exc:
            last = exc
            time.sleep(delay)
    raise AssertionError(f"{url} never answered: {last}")


@dataclass(frozen=True)
class Dockerd:
    host: str  # unix:///...
    root: Path

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private Docker engine: no iptables, no bridge, its own data/exec roots and socket."""
    require_tool("dockerd", "docker.io")
    require_tool("docker", "docker.io")
    require_root("dockerd runs as root here")
    root = Path(tempfile.mkdtemp(prefix="kiln-dockerd-", dir="/tmp"))
    sock = root / "d.sock"
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = Dockerd(host=f"unix://{sock}", root=root)
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"dockerd exited: {(root / 'dockerd.log').read_text()[-2000:]}")
            if sock.exists() and engine.cli("version", check=False, timeout=10).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("dockerd did not come up within 30 s")
        yield engine
    finally:
        with contextlib.suppress(Exception):
            ids = engine.cli("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.cli("rm", "-f", *ids, check=False, timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        subprocess.run(["umount", "-R", str(root / "data")], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
