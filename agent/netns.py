"""Per-instance network namespaces, reachable by the agent without bridges, veths or iptables.

Each runc instance gets a named namespace ``kiln-<...>`` (``ip netns add``, then ``lo`` up) that is
its whole network: the service listens on 127.0.0.1 inside it and nothing outside can connect.
The agent reaches it with :func:`connect_in_netns`: a socket belongs to the network namespace it
was *created* in, so a short-lived thread switches itself into the namespace with ``setns(2)``,
creates the socket, and switches back before it ends; the caller then connects from wherever it
is. The switch happens only on that dedicated thread (a thread's namespace is per-thread), so no
other thread of the agent ever runs in the instance's namespace, even if switching back failed.

Docker instances started with ``network_mode="none"`` have the same shape: their namespace is
``/proc/<pid>/ns/net``.

:func:`list_netns` lists ``kiln-*`` namespaces, for leak detection after instances are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

from agent.errors import InstanceError, RuntimeFailure

__all__ = [
    "NETNS_DIR",
    "CLONE_NEWNET",
    "netns_path",
    "create_netns",
    "delete_netns",
    "list_netns",
    "socket_in_netns",
    "connect_in_netns",
]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^kiln-[A-Za-z0-9_.-]{1,200}$")
_IP_TIMEOUT = 30.0


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name in ("kiln-.", "kiln-.."):
        raise InstanceError(
            f"invalid network namespace name {name!r}", hint="kiln namespaces are named kiln-<id>"
        )
    return name


def netns_path(name: str) -> str:
    return str(NETNS_DIR / _check_name(name))


def _ip(*args: str) -> None:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"ip {' '.join(args)}: {exc}", hint="is iproute2 installed?") from exc
    if proc.returncode != 0:
        raise RuntimeFailure(f"ip {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")


def create_netns(name: str) -> str:
    """Create the namespace ``name`` with its loopback up; returns its path. Needs root."""
    _check_name(name)
    if (NETNS_DIR / name).exists():
        raise InstanceError(f"network namespace {name} already exists")
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        with contextlib.suppress(RuntimeFailure):
            _ip("netns", "delete", name)
        raise
    return netns_path(name)


def delete_netns(name: str) -> None:
    """Delete the namespace ``name``; a namespace that does not exist is fine."""
    _check_name(name)
    if not (NETNS_DIR / name).exists():
        return
    _ip("netns", "delete", name)


def list_netns(prefix: str = "kiln-") -> tuple[str, ...]:
    """Names of the named network namespaces starting with ``prefix`` (sorted)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return ()
    return tuple(sorted(n for n in names if n.startswith(prefix)))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(
    path: str | os.PathLike[str],
    family: socket.AddressFamily = socket.AF_INET,
    kind: socket.SocketKind = socket.SOCK_STREAM,
) -> socket.socket:
    """A new socket that lives in the network namespace at ``path`` (made on a dedicated thread)."""
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
                try:
                    result.append(socket.socket(family, kind))
                finally:
                    _setns(own)  # if this failed the thread ends anyway; no one else runs on it
            finally:
                os.close(target)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)
        finally:
            os.close(own)

    worker = threading.Thread(target=work, name="kiln-netns", daemon=True)
    worker.start()
    worker.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError):
            raise RuntimeFailure(f"cannot enter network namespace {os.fspath(path)}: {exc}") from exc
        raise exc
    return result[0]


def connect_in_netns(
    path: str | os.PathLike[str], host: str, port: int, timeout: float = 5.0
) -> socket.socket:
    """A TCP connection to ``host:port`` as seen from inside the namespace at ``path``.

    Connection errors (refused, timed out) are raised as ``OSError`` for the caller to retry.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in_netns(path, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
