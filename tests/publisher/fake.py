"""An in-memory registry behind ``httpx.MockTransport``, for faults a real server will not produce.

It implements just enough of the distribution API (blobs with resumable uploads that honour
``Range`` as the OCI spec says, manifests, tags), and lets a test plug in a ``fault`` hook that
sees every request first and may answer, raise, or cut an upload body short.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

__all__ = ["FakeRegistry"]

Fault = Callable[[httpx.Request], httpx.Response | None]


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return httpx.Response(
        status, content=body, headers={"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class FakeRegistry:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    fault: Fault | None = None
    cut_patch_after: list[int] = field(default_factory=list)  # one entry per PATCH to cut
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=self.transport())

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.log.append((request.method, request.url.path))
        if self.fault is not None:
            answer = self.fault(request)
            if answer is not None:
                request.read()
                return answer
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([^/]*)", path)
        if m:
            return self._upload(request, m.group(1), m.group(2))
        m = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", path)
        if m:
            return self._blob(request, m.group(2))
        m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path)
        if m:
            return self._manifest(request, m.group(1), m.group(2))
        m = re.fullmatch(r"/v2/(.+)/tags/list", path)
        if m:
            names = sorted(self.tags.get(m.group(1), {}), reverse=True)
            return httpx.Response(200, json={"name": m.group(1), "tags": names})
        return httpx.Response(404, text="404 page not found")

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs.get(digest)
        if data is None:
            return _err(404, "BLOB_UNKNOWN", "blob unknown to registry")
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        rng = request.headers.get("range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            part = data[start:]
            return httpx.Response(206, content=part, headers={"Content-Length": str(len(part))})
        return httpx.Response(200, content=data, headers=headers)

    def _location(self, repo: str, uid: str) -> dict[str, str]:
        size = len(self.uploads[uid])
        return {
            "Location": f"/v2/{repo}/blobs/uploads/{uid}?n={next(self._ids)}",
            "Range": f"0-{max(size - 1, 0)}",
        }

    def _upload(self, request: httpx.Request, repo: str, uid: str) -> httpx.Response:
        if request.method == "POST":
            mount = request.url.params.get("mount")
            if mount and mount in self.blobs:
                return httpx.Response(201, headers={"Docker-Content-Digest": mount})
            uid = f"u{next(self._ids)}"
            self.uploads[uid] = bytearray()
            return httpx.Response(202, headers=self._location(repo, uid))
        if uid not in self.uploads:
            request.read()
            return _err(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        buf = self.uploads[uid]
        if request.method == "GET":
            return httpx.Response(204, headers=self._location(repo, uid))
        if request.method == "PATCH":
            start = int(request.headers["content-range"].split("-")[0])
            if start != len(buf):
                request.read()
                return _err(416, "BLOB_UPLOAD_INVALID", "wrong offset")
            cut = self.cut_patch_after.pop(0) if self.cut_patch_after else None
            for chunk in request.stream:  # type: ignore[union-attr]
                if cut is not None and len(chunk) > cut:
                    buf.extend(chunk[:cut])
                    raise httpx.WriteError("connection reset by peer (fake)")
                if cut is not None:
                    cut -= len(chunk)
                buf.extend(chunk)
            return httpx.Response(202, headers=self._location(repo, uid))
        if request.method == "PUT":
            buf.extend(request.read())
            digest = "sha256:" + hashlib.sha256(bytes(buf)).hexdigest()
            if digest != request.url.params.get("digest"):
                return _err(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            self.blobs[digest] = bytes(buf)
            del self.uploads[uid]
            return httpx.Response(
                201, headers={"Docker-Content-Digest": digest, "Location": f"/v2/{repo}/blobs/{digest}"}
            )
        return httpx.Response(405)

    def _manifest(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        if request.method == "PUT":
            data = request.read()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            mt = request.headers.get("content-type", "")
            self.manifests[(repo, digest)] = (data, mt)
            if not ref.startswith("sha256:"):
                self.tags.setdefault(repo, {})[ref] = digest
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        digest = ref if ref.startswith("sha256:") else self.tags.get(repo, {}).get(ref, "")
        found = self.manifests.get((repo, digest))
        if found is None:
            return _err(404, "MANIFEST_UNKNOWN", "manifest unknown")
        data, mt = found
        headers = {"Docker-Content-Digest": digest, "Content-Type": mt, "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        if request.method == "DELETE":
            del self.manifests[(repo, digest)]
            return httpx.Response(202)
        return httpx.Response(200, content=data, headers=headers)
