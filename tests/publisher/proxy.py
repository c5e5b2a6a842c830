"""A small fault-injecting HTTP proxy on loopback, in front of a real registry.

Each client connection carries one request: the proxy adds ``Connection: close`` before
forwarding, so the registry closes after its answer and every request is seen here. Rules pick a
fault for matching requests, a bounded number of times:

- ``drop_request(n)``: forward the head and ``n`` body bytes, then cut both connections;
- ``drop_response(n)``: forward the answer's head and ``n`` body bytes, then cut;
- ``respond(status, headers)``: answer in the registry's place (after draining the request body);
- ``stall(seconds)``: read the request, then say nothing;
- ``rewrite(header, value)``: replace a header of the registry's answer.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "Rule", "Seen"]


@dataclass(slots=True, kw_only=True)
class Rule:
    method: str | None = None
    path: str | None = None  # a regular expression searched in the request target
    times: int = 1
    drop_request: int | None = None
    drop_response: int | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stall: float | None = None
    rewrite: tuple[str, str] | None = None
    truncate_to: int | None = None  # answer a short body with a matching Content-Length

    def matches(self, method: str, target: str) -> bool:
        if self.times <= 0:
            return False
        if self.method is not None and method != self.method:
            return False
        return self.path is None or re.search(self.path, target) is not None


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    target: str
    fault: str


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head ended")
        buf += chunk
        if len(buf) > 1 << 20:
            raise ConnectionError("head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name.lower().encode():
            return v.strip().decode("latin-1")
    return None


def _set_header(head: bytes, name: str, value: str) -> bytes:
    lines = [
        ln
        for ln in head.rstrip(b"\r\n").split(b"\r\n")
        if ln.partition(b":")[0].strip().lower() != name.lower().encode()
    ]
    lines.insert(1, f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, **kw: object) -> Rule:
        rule = Rule(**kw)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def faults(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.fault != "pass"]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _pick(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target):
                    rule.times -= 1
                    return rule
            return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            method, target = head.split(b" ", 2)[:2]
            rule = self._pick(method.decode(), target.decode())
            fault = "pass" if rule is None else self._describe(rule)
            with self._lock:
                self.seen.append(Seen(method.decode(), target.decode(), fault))
            length = int(_header(head, "Content-Length") or "0")
            if rule is not None and rule.stall is not None:
                end = time.monotonic() + rule.stall
                while time.monotonic() < end and not self._stop.is_set():
                    time.sleep(0.05)
                return
            if rule is not None and rule.status is not None:
                self._drain(client, length - len(rest))
                hdrs = {"Content-Length": str(len(rule.body)), "Connection": "close", **rule.headers}
                text = f"HTTP/1.1 {rule.status} Fault\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
                client.sendall(text.encode() + b"\r\n" + rule.body)
                return
            upstream = socket.create_connection(self.upstream, timeout=30)
            upstream.sendall(_set_header(head, "Connection", "close"))
            limit = rule.drop_request if rule is not None else None
            self._forward_body(client, upstream, rest, length, limit)
            if limit is not None and limit < length:
                return  # cut mid-body
            self._relay_response(upstream, client, rule)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    @staticmethod
    def _describe(rule: Rule) -> str:
        for name in ("drop_request", "drop_response", "status", "stall", "rewrite", "truncate_to"):
            if getattr(rule, name) is not None:
                return name
        return "pass"

    @staticmethod
    def _drain(sock: socket.socket, left: int) -> None:
        while left > 0:
            chunk = sock.recv(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)

    @staticmethod
    def _forward_body(
        src: socket.socket, dst: socket.socket, rest: bytes, length: int, limit: int | None
    ) -> None:
        budget = length if limit is None else min(limit, length)
        first = rest[:budget]
        dst.sendall(first)
        sent = len(first)
        while sent < budget:
            chunk = src.recv(min(65536, budget - sent))
            if not chunk:
                return
            dst.sendall(chunk)
            sent += len(chunk)

    @staticmethod
    def _relay_response(upstream: socket.socket, client: socket.socket, rule: Rule | None) -> None:
        head, rest = _read_head(upstream)
        if rule is not None and rule.rewrite is not None:
            head = _set_header(head, *rule.rewrite)
        if rule is not None and rule.truncate_to is not None:
            head = _set_header(head, "Content-Length", str(rule.truncate_to))
            body = rest
            while len(body) < rule.truncate_to:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                body += chunk
            client.sendall(head + body[: rule.truncate_to])
            return
        limit = rule.drop_response if rule is not None else None
        client.sendall(head)
        sent = 0

        def send(data: bytes) -> bool:
            nonlocal sent
            if limit is not None and sent + len(data) >= limit:
                client.sendall(data[: limit - sent])
                return False
            client.sendall(data)
            sent += len(data)
            return True

        if rest and not send(rest):
            return
        while chunk := upstream.recv(65536):
            if not send(chunk):
                return


Proxy = Callable[[int], FaultProxy]
