"""The floor a push from Python is measured against: the least a Python process can do to copy an
image from an OCI layout to a plain-http registry, and nothing else. It starts the interpreter,
imports only the standard library (``http.client``, ``json``, ``threading``), sends each blob on
its own connection in its own thread (``HEAD``, then ``POST`` and one monolithic ``PUT``) and
then ``PUT``s the manifest under its tag. No verification of what it reads, no retries, no auth,
no referrers, no record: what any Python client pays before it does a single check.

bench/push.py runs it beside kiln and skopeo, so the cold push of a small image can be read
against both: kiln / this floor is what kiln's own work costs; this floor / skopeo is what the
interpreter and a Python HTTP stack cost against a static Go binary.

    python bench/pushfloor.py LAYOUT REF HOST REPO
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading

_REF_NAME = "org.opencontainers.image.ref.name"


def _blob_path(layout: str, digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return os.path.join(layout, "blobs", algorithm, hexpart)


def _push_blob(host: str, repo: str, layout: str, desc: dict[str, object], errors: list[str]) -> None:
    digest, size = str(desc["digest"]), int(str(desc["size"]))
    conn = http.client.HTTPConnection(host, timeout=60, blocksize=1 << 20)  # send in 1 MiB pieces
    try:
        conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        answer = conn.getresponse()
        answer.read()
        if answer.status == 200:
            return
        conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        answer = conn.getresponse()
        answer.read()
        location = answer.getheader("Location") or ""
        if answer.status != 202 or not location:
            errors.append(f"POST upload for {digest}: HTTP {answer.status}")
            return
        target = f"{location}{'&' if '?' in location else '?'}digest={digest}"
        with open(_blob_path(layout, digest), "rb") as body:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            conn.request("PUT", target, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 201:
            errors.append(f"PUT {digest}: HTTP {answer.status}")
    finally:
        conn.close()


def main() -> int:
    layout, ref, host, repo = sys.argv[1:5]
    with open(os.path.join(layout, "index.json"), "rb") as fh:
        index = json.load(fh)
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get(_REF_NAME) == ref)
    with open(_blob_path(layout, desc["digest"]), "rb") as fh:
        raw = fh.read()
    manifest = json.loads(raw)
    if "layers" not in manifest:
        print(f"{ref} is not an image manifest (an index?): this floor pushes one image", file=sys.stderr)
        return 2
    errors: list[str] = []
    threads = [
        threading.Thread(target=_push_blob, args=(host, repo, layout, d, errors))
        for d in (manifest["config"], *manifest["layers"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    tag = ref.rpartition(":")[2] if ":" in ref else ref
    conn = http.client.HTTPConnection(host, timeout=60)
    conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=raw, headers={"Content-Type": desc["mediaType"]})
    answer = conn.getresponse()
    answer.read()
    if answer.status != 201:
        print(f"PUT manifest: HTTP {answer.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
