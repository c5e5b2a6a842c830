"""`make demo`: the main job end to end on the embedded default, no server to set up.

Builds both examples reproducibly and prints their digests and sizes; signs them and attests their
SBOM and provenance with a demo key (cosign format), verifies both; publishes python-web (with its
signatures) to the embedded default registry, an ``oci:`` directory, twice (the second is a no-op)
and prints the pinned reference; then loads python-web into a private Docker engine, runs it
read-only as uid 65532 with no capabilities, and curls /healthz.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kiln.testing import free_port, private_dockerd, wait_http

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kiln(*args: str, json_out: bool = True) -> dict[str, object]:
    cmd = [sys.executable, "-m", "kiln", *args, *(["--json"] if json_out else [])]
    print("$ kiln " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: kiln {args[0]} failed (exit {proc.returncode})")
    if not json_out:
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            print(f"  {line}")
        return {}
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def mb(n: object) -> str:
    return f"{int(str(n)) / 1e6:.1f} MB"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    cache = ["--cache-dir", str(OUT / "cache")]
    step("build both examples (OCI layouts), reproducibly")
    built = {}
    for name, manifest in (
        ("hello-static", "examples/hello-static/hello.yaml"),
        ("python-web", "examples/python-web/python-web.yaml"),
    ):
        built[name] = kiln("build", manifest, "-o", str(OUT / name), "--force", *cache)
    archive = kiln(
        "build",
        "examples/python-web/python-web.yaml",
        "--format",
        "docker-archive",
        "-o",
        str(OUT / "python-web.docker.tar"),
        "--force",
        *cache,
    )
    for name, info in built.items():
        layers = info["layers"]
        assert isinstance(layers, list)
        print(f"  {name:<13} {info['digest']}  {mb(info['size'])} in {len(layers)} layers")

    step("rebuild python-web: same digest, layers straight from the cache")
    again = kiln(
        "build", "examples/python-web/python-web.yaml", "-o", str(OUT / "python-web"), "--force", *cache
    )
    same = "identical" if again["digest"] == built["python-web"]["digest"] else "DIFFERENT (bug!)"
    print(f"  digest {again['digest']}: {same}")

    step("sign and attest both images with a demo key (cosign's formats), then verify")
    keys = OUT / "keys"
    keys.mkdir(exist_ok=True)
    if "KILN_PASSWORD" not in os.environ:
        os.environ["KILN_PASSWORD"] = "kiln-demo"  # noqa: S105 - a demo key, said out loud below
        print("  (demo key passphrase: KILN_PASSWORD=kiln-demo; use your own for real keys)")
    if not (keys / "demo.key").exists():
        kiln("key", "generate", "--out", str(keys / "demo"), json_out=False)
    for name, info in built.items():
        image = f"oci:{info['output']}:{info['image_version']}"
        identity = f"localhost/{name}"
        kiln("sign", "--key", str(keys / "demo.key"), "--identity", identity, image, json_out=False)
        kiln("attest", "--key", str(keys / "demo.key"), image, json_out=False)
        kiln("verify", "--key", str(keys / "demo.pub"), "--identity", identity, image, json_out=False)
        for kind in ("slsaprovenance", "spdx"):
            kiln("verify-attestation", "--key", str(keys / "demo.pub"), "--type", kind, image)
        print(f"  verified {name}: signature and attestations for {info['digest']}")

    step("publish python-web to the embedded default registry (an oci: directory), twice")
    rel = OUT.relative_to(REPO)
    registry = f"oci:{rel / 'registry' / 'python-web'}"
    for attempt in ("first", "again: a no-op"):
        pub = kiln("publish", str(rel / "python-web"), registry, "--channel", "stable")
        changes, blobs = pub["tag_changes"], pub["blobs"]
        assert isinstance(changes, list)
        assert isinstance(blobs, dict)
        tags = ", ".join(f"{t['tag']} {t['action']}" for t in changes)
        print(
            f"  ({attempt}) {tags}; blobs {blobs['uploaded']} uploaded, {blobs['existed']} existed, "
            f"{blobs['mounted']} linked; changed: {pub['changed']}"
        )
    print(f"  pinned reference: {pub['reference']}")

    step("run python-web read-only, as uid 65532, no capabilities, in a private Docker engine")
    with private_dockerd() as engine:
        loaded = engine.cli("load", "-i", str(archive["output"]), timeout=300)
        print("  " + loaded.stdout.strip())
        port = free_port()
        tag = f"{archive['name']}:{archive['image_version']}"
        engine.cli(
            "run",
            "-d",
            "--name",
            "kiln-demo-web",
            "--read-only",
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--tmpfs",
            "/tmp",
            "--network",
            "host",
            "-e",
            f"PORT={port}",
            tag,
        )
        wait_http(f"http://127.0.0.1:{port}/healthz", attempts=200)
        for path in ("/healthz", "/"):
            url = f"http://127.0.0.1:{port}{path}"
            got = subprocess.run(["curl", "-fsS", url], capture_output=True, text=True, check=False)
            print(f"  $ curl {url}\n  {got.stdout.strip()}")
            if got.returncode != 0:
                raise SystemExit(f"demo: curl {url} failed: {got.stderr.strip()}")
    step("done: outputs in demo-out/ (inspect them with: .venv/bin/kiln inspect demo-out/python-web)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    raise SystemExit(main())
