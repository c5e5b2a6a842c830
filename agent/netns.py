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
import fcntl
import functools
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
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
_MS_BIND = 4096
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
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
    """Create the namespace ``name`` with its loopback up; returns its path. Needs root.

    Once ``/run/netns`` is a mount point (``ip netns add`` makes it one, and it is the first
    namespace's way), a namespace is made in this process: a dedicated thread unshares its
    network namespace, bind-mounts it on ``/run/netns/<name>`` and switches back, and its
    loopback is brought up through a socket in it. That is what ``ip`` does, without starting
    two processes on every instance start."""
    _check_name(name)
    target = NETNS_DIR / name
    if target.exists():
        raise InstanceError(f"network namespace {name} already exists")
    if os.path.ismount(NETNS_DIR):
        _on_own_thread(lambda: _add_here(target))
    else:
        _ip("netns", "add", name)
    try:
        _loopback_up(str(target))
    except BaseException:
        with contextlib.suppress(RuntimeFailure):
            _ip("netns", "delete", name)
        raise
    return netns_path(name)


def _add_here(target: Path) -> None:
    """On a thread of its own: a new network namespace, bind-mounted on ``target``."""
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _checked(_libc().unshare(CLONE_NEWNET), "unshare")
        try:
            src = b"/proc/thread-self/ns/net"
            _checked(_libc().mount(src, os.fsencode(target), None, _MS_BIND, None), f"bind mount on {target}")
        finally:
            _setns(own)  # if this failed the thread ends anyway; no one else runs on it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    finally:
        os.close(own)


def _loopback_up(path: str) -> None:
    """``ip link set lo up`` in the namespace at ``path``, through an ioctl on a socket in it."""
    try:
        with socket_in_netns(path, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            req = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
            flags = struct.unpack_from("16sH", req)[1]
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
    except OSError as exc:
        raise RuntimeFailure(f"cannot bring up the loopback of {path}: {exc}") from exc


def _on_own_thread(work: Callable[[], None]) -> None:
    """Run ``work`` on a dedicated thread (namespace switches stay on it); its OSError is a
    :class:`RuntimeFailure`."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="kiln-netns", daemon=True)
    worker.start()
    worker.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError):
            raise RuntimeFailure(f"cannot create a network namespace: {exc}") from exc
        raise exc


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


def _checked(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


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
