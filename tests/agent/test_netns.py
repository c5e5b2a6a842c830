"""Named network namespaces and connect_in_netns, for real (root and iproute2 needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import InstanceError, RuntimeFailure
from agent.netns import connect_in_netns, create_netns, delete_netns, list_netns, netns_path
from tests.kit.services import free_port
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration


@pytest.fixture
def netns() -> Iterator[str]:
    require_root("creating network namespaces")
    require_tool("ip", "iproute2")
    name = f"kiln-test-{os.getpid()}-{threading.get_ident() % 10000}"
    create_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


def _own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def _get(sock: socket.socket, path: str) -> bytes:
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_connect_reaches_a_server_that_only_listens_inside(netns: str, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "hello.txt").write_bytes(b"inside the namespace\n")
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        before = _own_netns()
        sock = None
        for _ in range(100):
            try:
                sock = connect_in_netns(netns_path(netns), "127.0.0.1", port, timeout=2)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        assert sock is not None, "the server in the namespace never answered"
        reply = _get(sock, "/hello.txt")
        assert reply.startswith(b"HTTP/1.0 200")
        assert reply.endswith(b"inside the namespace\n")
        assert _own_netns() == before  # the calling thread never moved
        # The host's loopback is another network: nothing listens there on that port.
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_fresh_namespace_has_only_loopback_up(netns: str) -> None:
    out = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True, check=True).stdout
    links = [line.split(":")[1].strip() for line in out.splitlines()]
    assert links == ["lo"]
    assert "UP" in out
    with pytest.raises(ConnectionRefusedError):
        connect_in_netns(netns_path(netns), "127.0.0.1", free_port(), timeout=2)


def test_list_and_delete(netns: str) -> None:
    assert netns in list_netns()
    with pytest.raises(InstanceError, match=f"network namespace {netns} already exists"):
        create_netns(netns)
    delete_netns(netns)
    assert netns not in list_netns()
    delete_netns(netns)  # idempotent
    create_netns(netns)  # for the fixture to delete


def test_entering_a_missing_namespace_is_a_runtime_failure() -> None:
    require_root("setns")
    with pytest.raises(RuntimeFailure, match="cannot enter network namespace /run/netns/kiln-nope"):
        connect_in_netns("/run/netns/kiln-nope", "127.0.0.1", 80)


@pytest.mark.parametrize("name", ["web", "kiln-", "kiln-a/b", "kiln-..", "kiln-" + "x" * 201, "kiln-a b"])
def test_namespace_names_are_checked(name: str) -> None:
    with pytest.raises(InstanceError, match="invalid network namespace name"):
        netns_path(name)
