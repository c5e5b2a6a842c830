"""A private etcd for tests: Debian's etcd-server on loopback, temporary data, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Etcd:
    url: str
    proc: subprocess.Popen[bytes]
    data: Path

    def fleet_name(self) -> str:
        return f"t{uuid.uuid4().hex[:10]}"


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is not installed: `make test` installs etcd-server")
        pytest.skip("etcd is not installed (Debian package etcd-server; `make test` installs it)")
    return path


@contextmanager
def private_etcd(host: str = "127.0.0.1", *, also: Sequence[str] = ()) -> Iterator[Etcd]:
    """etcd on ``host`` (and on the addresses ``also``, e.g. test hosts' gateways), same port."""
    binary = etcd_binary()
    data = Path(tempfile.mkdtemp(prefix="kiln-etcd-"))
    client, peer = _free_port(), _free_port()
    url = f"http://{host}:{client}"
    listen = ",".join([url, *(f"http://{a}:{client}" for a in also)])
    log = (data / "etcd.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "--name", "kiln-test",
            "--data-dir", str(data / "data"),
            "--listen-client-urls", listen,
            "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://{host}:{peer}",
            "--initial-advertise-peer-urls", f"http://{host}:{peer}",
            "--initial-cluster", f"kiln-test=http://{host}:{peer}",
            "--log-level", "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.post(f"{url}/v3/maintenance/status", content="{}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: {(data / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield Etcd(url=url, proc=proc, data=data)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
