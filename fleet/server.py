"""``kiln fleet serve``: the FleetLock protocol on etcd, and the fleet's read-only dashboard.

FleetLock (Zincati's reboot coordination protocol)::

    POST /v1/pre-reboot     lock a slot of client_params.group for client_params.id (recursive)
    POST /v1/steady-state   release it (a no-op when not held)
    header  fleet-lock-protocol: true
    body    {"client_params": {"id": "...", "group": "..."}}
    answer  200 on success; otherwise a JSON {"kind": "...", "value": "..."}

The slots are the same ones kiln agents take (:mod:`fleet.slots`), so Zincati hosts and kiln
agents share one per-group limit. FleetLock holders have no lease: a rebooting host must keep its
slot across the reboot, until it reports steady-state.

The dashboard: ``GET /`` (HTML, CSS and a little JavaScript shipped in ``fleet/dashboard/``) polls
``GET /api/status`` (:func:`fleet.state.status_document`) once a second. Both are read-only.
Requests are size-capped and every answer is produced from one etcd snapshot.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from fleet.gate import store_config
from fleet.state import FleetStore, status_document
from manifests.errors import KilnError
from manifests.fleet import FleetConfig

__all__ = ["FleetServer", "MAX_REQUEST_BYTES"]

MAX_REQUEST_BYTES = 64 * 1024
_GROUP = re.compile(r"^[a-zA-Z0-9.-]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class _Refusal(Exception):
    def __init__(self, status: HTTPStatus, kind: str, value: str) -> None:
        super().__init__(value)
        self.status, self.kind, self.value = status, kind, value


def _static(name: str) -> bytes:
    return resources.files("fleet").joinpath("dashboard", name).read_bytes()


class FleetServer:
    """The HTTP server; :meth:`serve_forever` in the caller's thread, :meth:`start` in a thread."""

    def __init__(
        self,
        store: FleetStore,
        config: FleetConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.log = log or (lambda _line: None)
        store_config(store, config)
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- FleetLock

    def _client_params(self, body: bytes) -> tuple[str, str]:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "the body is not JSON") from exc
        params = doc.get("client_params") if isinstance(doc, dict) else None
        if not isinstance(params, dict):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "missing client_params")
        ident, group = params.get("id"), params.get("group", "default")
        if not isinstance(ident, str) or not _ID.match(ident):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "client_params.id: invalid or missing")
        if not isinstance(group, str) or not _GROUP.match(group):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "client_params.group: invalid")
        return ident, group

    def fleetlock(self, path: str, body: bytes) -> None:
        ident, group = self._client_params(body)
        try:
            if path == "/v1/pre-reboot":
                limit = self.config.max_for(group)
                if not self.store.slots.acquire(group, ident, limit=limit, kind="fleetlock"):
                    held = ", ".join(h.id for h in self.store.slots.holders(group))
                    raise _Refusal(
                        HTTPStatus.CONFLICT,
                        "failed_lock",
                        f"group '{group}' has no free slot ({limit} of {limit} held: {held})",
                    )
                self.log(f"fleetlock: {ident} locked a slot of {group}")
            else:
                released = self.store.slots.release(group, ident)
                self.log(f"fleetlock: {ident} {'released' if released else 'held no'} slot of {group}")
        except KilnError as exc:
            raise _Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "etcd_unavailable", exc.message[:300]) from exc

    def status(self) -> dict[str, Any]:
        return status_document(self.store.snapshot(), self.config, now=self.clock())

    # -- HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "kiln-fleet"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, doc: object) -> None:
                self._send(status, json.dumps(doc, sort_keys=True).encode(), "application/json")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/api/status":
                    try:
                        self._json(200, server.status())
                    except KilnError as exc:
                        self._json(503, {"kind": "etcd_unavailable", "value": exc.message[:300]})
                    return
                if path in _STATIC:
                    name, ctype = _STATIC[path]
                    self._send(200, _static(name), ctype)
                    return
                self._json(404, {"kind": "not_found", "value": path[:100]})

            def _body(self) -> bytes:
                if self.path.split("?", 1)[0] not in ("/v1/pre-reboot", "/v1/steady-state"):
                    raise _Refusal(HTTPStatus.NOT_FOUND, "not_found", "unknown endpoint")
                if self.headers.get("fleet-lock-protocol", "").lower() != "true":
                    raise _Refusal(
                        HTTPStatus.BAD_REQUEST, "bad_request", "missing header fleet-lock-protocol: true"
                    )
                length = self.headers.get("Content-Length", "")
                if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
                    raise _Refusal(
                        HTTPStatus.BAD_REQUEST, "bad_request", f"a body of at most {MAX_REQUEST_BYTES} bytes"
                    )
                return self.rfile.read(int(length))

            def do_POST(self) -> None:
                try:
                    server.fleetlock(self.path.split("?", 1)[0], self._body())
                except _Refusal as refusal:
                    self._json(refusal.status, {"kind": refusal.kind, "value": refusal.value})
                    return
                self._json(200, {})

        return Handler
