"""The embedded data plane's control protocol: one JSON object per line over a Unix socket.

A request is ``{"v": 1, "op": OP, ...}``; the answer is ``{"v": 1, "ok": true, ...}`` or
``{"v": 1, "ok": false, "error": TEXT}``. One request per connection. Reads are capped
(:data:`MAX_REQUEST`, :data:`MAX_REPLY`) and the top level must be an object.

Operations (``v`` 1)::

    hello                                 -> protocol, kiln, pid
    set     service, listen [h, p],       bind the address once, switch new connections to
            backends [{id, netns, port, host}]
    drain   service, id, timeout          -> drained (false: the rest was closed at the timeout)
    remove  service                       close one address
    state                                 -> services [{name, listen, backends, open}]
    stop                                  close every address, exit
    handover                              -> services; the listening sockets ride along (SCM_RIGHTS)
    retire                                stop accepting, let open connections finish, exit

``hello``, ``handover``, ``retire`` and ``stop`` are frozen: every version answers them the same
way, so a data plane of any version can be replaced by another without closing an address.

The socket is created with mode 0600 in the agent's state directory (0700): only root talks to it.
"""

from __future__ import annotations

import array
import contextlib
import json
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from agent.dataplane import DataPlaneError

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_REQUEST",
    "MAX_REPLY",
    "MAX_FDS",
    "SOCKET_FILE",
    "send",
    "receive",
    "call",
]

PROTOCOL_VERSION: Final = 1
MAX_REQUEST: Final = 1024 * 1024
MAX_REPLY: Final = 4 * 1024 * 1024
MAX_FDS: Final = 253  # SCM_MAX_FD
SOCKET_FILE: Final = "dataplane.sock"
_CHUNK: Final = 65536


def send(sock: socket.socket, doc: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        data = data[sent:]
    if data:
        sock.sendall(data)


def receive(sock: socket.socket, cap: int, *, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """Read one line (at most ``cap`` bytes) and the fds that came with it; parse it as an object."""
    fds: list[int] = []
    try:
        line = _read_line(sock, cap, max_fds, fds)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        raise
    return _parse(line, fds)


def _read_line(sock: socket.socket, cap: int, max_fds: int, fds: list[int]) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        if max_fds:
            chunk, got, _, _ = socket.recv_fds(sock, _CHUNK, max(1, max_fds - len(fds)))
            fds.extend(got)
        else:
            chunk = sock.recv(_CHUNK)
        if not chunk:
            raise DataPlaneError("the data plane's control connection closed mid-message")
        buf += chunk
        if len(buf) > cap:
            raise DataPlaneError(f"a control message is larger than {cap} bytes")
    return bytes(buf[: buf.index(b"\n")])


def _parse(line: bytes, fds: list[int]) -> tuple[dict[str, Any], list[int]]:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        doc = exc
    if not isinstance(doc, dict):
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        what = f"not JSON: {doc}" if isinstance(doc, Exception) else "not a JSON object"
        raise DataPlaneError(f"a control message is {what}")
    return doc, fds


def call(
    path: Path, doc: Mapping[str, Any], *, timeout: float = 10.0, max_fds: int = 0
) -> tuple[dict[str, Any], list[int]]:
    """One request to the control socket at ``path``; the answer (``ok`` checked) and any fds.

    ``OSError`` when nothing listens there (the caller may start a data plane); a
    :class:`DataPlaneError` when the data plane refused or answered nonsense.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        send(sock, {"v": PROTOCOL_VERSION, **doc})
        answer, fds = receive(sock, MAX_REPLY, max_fds=max_fds)
    finally:
        sock.close()
    if answer.get("ok") is not True:
        for fd in fds:
            socket.close(fd)
        error = answer.get("error")
        raise DataPlaneError(
            f"data plane refused {doc.get('op')}: {error if isinstance(error, str) else 'no reason given'}"
        )
    return answer, fds
