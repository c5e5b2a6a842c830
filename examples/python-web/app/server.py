"""A tiny stdlib-only web service for the python-web example image.

GET /healthz -> 200 "ok"; GET / -> a small JSON greeting. Listens on 0.0.0.0:$PORT (default
8080), logs one line per request to stderr, and exits cleanly on SIGTERM or SIGINT. It writes
nothing to disk, so it runs on a read-only root as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

SERVICE = "python-web"


class Handler(BaseHTTPRequestHandler):
    server_version = SERVICE
    sys_version = ""

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif self.path == "/":
            body = json.dumps({"service": SERVICE, "message": "hello from kiln"}).encode() + b"\n"
            self._send(200, body, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a service in a container
    server.daemon_threads = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        sys.stderr.write(f"{SERVICE}: signal {signum}, shutting down\n")
        # shutdown() waits for serve_forever() to return, so it must not run on the serving thread.
        stopper.start()

    stopper = threading.Thread(target=server.shutdown, name="stopper")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(f"{SERVICE}: listening on 0.0.0.0:{port}\n")
    server.serve_forever()
    stopper.join()
    server.server_close()
    sys.stderr.write(f"{SERVICE}: stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
