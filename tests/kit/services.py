"""Start real components privately for tests, benchmarks and the demo, and stop them after.

Nothing here is used by kiln's commands; it exists so the test suite, ``bench/`` and
``make demo`` start the same private Docker engine the same way (loopback/Unix socket only,
temporary state, no iptables, no bridge). It lives under ``tests/`` so the wheel does not ship it
(it used to be ``kiln/testing.py``); ``bench/`` and ``examples/`` run from a checkout and import it
from there (the Makefile puts the checkout on ``PYTHONPATH``), so there is one copy.
"""

from __future__ import annotations

import contextlib
import json
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

__all__ = ["PrivateDockerd", "private_dockerd", "private_registry", "free_port", "http_get", "wait_http"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, *, timeout: float = 1.0) -> tuple[int, bytes]:
    """One GET; returns (status, body). Raises OSError when nothing answers."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"refusing a non-loopback URL: {url}")
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
    raise TimeoutError(f"{url} never answered after {attempts} attempts: {last}")


@dataclass(frozen=True, slots=True)
class PrivateDockerd:
    """A running private engine: ``host`` is ``unix:///...`` for the CLI and the SDK."""

    host: str
    root: Path

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextlib.contextmanager
def private_dockerd(*, start_timeout: float = 30.0) -> Iterator[PrivateDockerd]:
    """Run ``dockerd`` with its own data/exec roots and socket; remove everything on exit."""
    root = Path(tempfile.mkdtemp(prefix="kiln-dockerd-", dir="/tmp"))
    sock = root / "d.sock"
    log_path = root / "dockerd.log"
    with log_path.open("wb") as log:
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
    engine = PrivateDockerd(host=f"unix://{sock}", root=root)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited early:\n{log_path.read_text()[-2000:]}")
            if sock.exists() and engine.cli("version", check=False, timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {start_timeout} s")
            time.sleep(0.1)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            ids = engine.cli("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.cli("rm", "-f", *ids, check=False, timeout=60)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        subprocess.run(["umount", "-R", str(root / "data")], check=False, capture_output=True)
        # dockerd bind-mounts its default network namespace under the exec root and leaves it
        # there on exit: unmount it too, or every engine leaks a namespace and this directory.
        for mount in _mounts_under(root):
            subprocess.run(["umount", mount], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points below ``root`` (deepest first), from /proc/self/mountinfo."""
    prefix = f"{root}/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


@contextlib.contextmanager
def private_registry(root: Path, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Run Debian's ``docker-registry`` on a free loopback port, no auth, storage under
    ``root/storage``; yields ``127.0.0.1:PORT`` and stops the registry on exit (``root`` stays)."""
    root.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": "kiln-private-registry"},
    }
    # JSON is YAML: no YAML writer needed.
    (root / "config.yml").write_text(json.dumps(config))
    log_path = root / "registry.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited early:\n{log_path.read_text()[-2000:]}")
            try:
                wait_http(f"http://{host}/v2/", attempts=1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield host
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
