"""`make demo`: the main job end to end on the embedded default, no server to set up.

Builds both examples reproducibly, prints their digests and sizes, then loads python-web into a
private Docker engine, runs it read-only as uid 65532 with no capabilities, and curls /healthz.
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


def kiln(*args: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "kiln", *args, "--json"]
    print("$ kiln " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: kiln {args[0]} failed (exit {proc.returncode})")
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
        status, body = wait_http(f"http://127.0.0.1:{port}/healthz", attempts=200)
        print(f"  $ curl http://127.0.0.1:{port}/healthz  ->  {status} {body.decode().strip()}")
        _, root = wait_http(f"http://127.0.0.1:{port}/")
        print(f"  $ curl http://127.0.0.1:{port}/  ->  {root.decode().strip()[:200]}")
        if status != 200:
            raise SystemExit("demo: /healthz did not answer 200")
    step("done: outputs in demo-out/ (inspect them with: .venv/bin/kiln inspect demo-out/python-web)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    raise SystemExit(main())
