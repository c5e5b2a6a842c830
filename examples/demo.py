"""`make demo`: the main job end to end on the embedded default, no server to set up.

Builds both examples reproducibly and prints their digests and sizes; signs them and attests their
SBOM and provenance with a demo key (cosign format), verifies both; publishes python-web (with its
signatures) to the embedded default registry, an ``oci:`` directory, twice (the second is a no-op)
and prints the pinned reference; loads python-web into a private Docker engine, runs it read-only
as uid 65532 with no capabilities, and curls /healthz.

Then the deploy side, everything under demo-out/: release keys and a trust root (a release needs
both release keys); release v1 (examples/release/release.yaml.in) pins the published digest, is
signed, verified and published to ``oci:demo-out/releases``; the agent (examples/release/agent.yaml,
runtime runc) deploys it with one ``kiln agent reconcile --once``, and ``kiln agent run`` in the
background keeps the service address open while the demo curls it. Release v2 has a failing health
check: the agent returns to v1 by itself and ``kiln agent status`` shows it. Release v3 pins
python-web 1.1.0, one of whose layer blobs is altered in the registry after signing:
``kiln agent reconcile --once`` refuses it (exit 3, reason ``digest``). Last, every instance is
stopped with its network namespace; the demo leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

from kiln.testing import free_port, http_get, private_dockerd, wait_http

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kiln(*args: str, json_out: bool = True, expect: int = 0) -> dict[str, object]:
    """Run ``kiln ARGS`` from the repository; stop the demo unless it exits with ``expect``."""
    cmd = [sys.executable, "-m", "kiln", *args, *(["--json"] if json_out else [])]
    print("$ kiln " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != expect:
        sys.stderr.write(proc.stdout if not json_out else "")
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: kiln {args[0]} exited {proc.returncode}, expected {expect}")
    if not json_out or expect != 0:
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            print(f"  {line}")
        if expect != 0:
            print(f"  (exit {proc.returncode})")
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
    # A fresh registry every run: a rebuilt image must not meet the version tag an older build
    # took (version tags are immutable), and the tampered blob of the last step must not linger.
    remove_demo_dir(OUT / "registry")
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

    layers = built["python-web"]["layers"]
    assert isinstance(layers, list)
    deploy_with_the_agent(str(pub["digest"]), layers, cache)
    step("done: outputs in demo-out/ (inspect them with: .venv/bin/kiln inspect demo-out/python-web)")
    return 0


# -- release -> agent -------------------------------------------------------------------------------

RELEASE_TEMPLATES = REPO / "examples" / "release"
STATE = OUT / "agent-state"
AGENT_LOG = OUT / "agent.log"
REPOSITORY = "localhost/python-web"


def rel(path: Path) -> str:
    """``path`` as the demo's commands spell it: relative to the repository."""
    return str(path.relative_to(REPO))


def remove_demo_dir(path: Path) -> None:
    """Remove a directory this demo makes under demo-out/ (never a link, never anything outside)."""
    if path.is_symlink() or not path.parent.resolve().is_relative_to(OUT.resolve()) or path == OUT:
        raise SystemExit(f"demo: refusing to remove {path}: not a directory the demo made in {OUT}")
    if path.exists():
        shutil.rmtree(path)


def stop_leftovers() -> None:
    """Stop what an interrupted earlier run left in demo-out/agent-state (instances, namespaces)."""
    if not (STATE / "runc").is_dir():
        return
    from agent.runc import RuncRuntime

    runtime = RuncRuntime(STATE)
    for iid in runtime.list():
        print(f"  stopping {iid}, left running by an earlier demo run")
        runtime.stop(iid, grace=2.0)


def sign_and_publish_release(version: int, digest: str, listen: str, health_path: str) -> None:
    """Fill examples/release/release.yaml.in, sign it with both release keys, verify, publish."""
    keys = OUT / "keys"
    text = Template((RELEASE_TEMPLATES / "release.yaml.in").read_text()).substitute(
        version=version,
        expires=(datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        digest=digest,
        listen=listen,
        health_path=health_path,
    )
    (OUT / "release").mkdir(exist_ok=True)
    doc = OUT / "release" / f"v{version}.yaml"
    doc.write_text(text)
    envelope = rel(OUT / "release" / f"v{version}.dsse.json")
    kiln("release", "sign", "--key", rel(keys / "release-a.key"), rel(doc), "-o", envelope, json_out=False)
    kiln(
        "release",
        "sign",
        "--key",
        rel(keys / "release-b.key"),
        "--append",
        envelope,
        rel(doc),
        json_out=False,
    )
    kiln("release", "verify", "--root", rel(OUT / "trust" / "root.yaml"), "--channel", "stable", envelope,
         json_out=False)  # fmt: skip
    kiln("release", "publish", envelope, f"oci:{rel(OUT / 'releases')}", json_out=False)


def start_agent(config: str) -> subprocess.Popen[bytes]:
    print(f"$ kiln agent run --config {config} &    (its log: {rel(AGENT_LOG)})", flush=True)
    with AGENT_LOG.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kiln", "agent", "run", "--config", config],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the demo reaches the demo; it stops the agent
        )


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the agent finishes its current step and exits; its instances keep running."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def agent_status() -> dict[str, Any] | None:
    """The running agent's status document (from its Unix socket), or None."""
    from agent.status import query

    try:
        code, body = query(STATE, "/status", timeout=5.0)
    except OSError:
        return None
    doc = json.loads(body) if code == 200 else None
    return doc if isinstance(doc, dict) else None


def wait_for(what: str, check: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[bytes],
             timeout: float, *, probe: str | None = None) -> tuple[int, int]:  # fmt: skip
    """Poll the agent's status until ``check`` holds; meanwhile GET ``probe`` (if given) every
    0.2 s. Returns (answered, failed) requests."""
    deadline = time.monotonic() + timeout
    answered = failed = 0
    next_status = 0.0
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the agent exited ({proc.returncode}); see {rel(AGENT_LOG)}")
        now = time.monotonic()
        if now >= next_status:
            doc = agent_status()
            if doc is not None and check(doc):
                return answered, failed
            next_status = now + 0.5
        if now > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}; see {rel(AGENT_LOG)}")
        if probe is not None:
            try:
                code, _ = http_get(probe, timeout=2.0)
            except OSError:
                code = 0
            answered += code == 200
            failed += code != 200
        time.sleep(0.2)


def curl(url: str) -> None:
    got = subprocess.run(["curl", "-fsS", url], capture_output=True, text=True, check=False)
    print(f"  $ curl {url}\n  {got.stdout.strip()}")
    if got.returncode != 0:
        raise SystemExit(f"demo: curl {url} failed: {got.stderr.strip()}")


def agent_log_lines(*words: str) -> None:
    for line in AGENT_LOG.read_text(errors="replace").splitlines():
        if any(w in line for w in words):
            print(f"  agent: {line.strip()}")


def tamper(blob: Path) -> None:
    """Flip one byte of a blob in the registry directory. The file is replaced, not edited in place:
    kiln links blobs between layouts on one filesystem, and the build output must stay intact."""
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    tmp = blob.with_name(blob.name + ".tampered")
    tmp.write_bytes(data)
    os.replace(tmp, blob)


def build_python_web_1_1(cache: list[str]) -> dict[str, object]:
    """python-web 1.1.0: the example with another greeting (a new app layer, the same base layers)."""
    src = OUT / "src" / "python-web-1.1.0"
    remove_demo_dir(src)
    shutil.copytree(REPO / "examples" / "python-web", src, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = src / "python-web.yaml"
    server = src / "app" / "server.py"
    for path, old, new in (
        (manifest, "version: 1.0.0", "version: 1.1.0"),
        (server, '"hello from kiln"', '"hello from kiln 1.1.0"'),
    ):
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"demo: {path} no longer contains {old!r}")
        path.write_text(text.replace(old, new))
    return kiln("build", rel(manifest), "-o", rel(OUT / "python-web-1.1.0"), "--force", *cache)


def deploy_with_the_agent(digest: str, v1_layers: list[Any], cache: list[str]) -> None:
    keys = OUT / "keys"
    config = rel(OUT / "agent.yaml")
    step("release keys and a trust root: a release needs both release keys, an image the demo key")
    stop_leftovers()
    for name in ("agent-state", "releases", "release", "trust"):
        remove_demo_dir(OUT / name)
    (OUT / "trust").mkdir()
    for name in ("release-a", "release-b", "root"):
        if not (keys / f"{name}.key").exists():
            kiln("key", "generate", "--out", rel(keys / name), json_out=False)
    kiln(
        "root", "init",
        "--root-key", rel(keys / "root.pub"),
        "--release-key", rel(keys / "release-a.pub"),
        "--release-key", rel(keys / "release-b.pub"),
        "--release-threshold", "2",
        "--image-key", rel(keys / "demo.pub"),
        "--image-repository", "localhost/**",
        "--channel", "stable",
        "--expires", "720h",
        "-o", rel(OUT / "trust" / "root.yaml"),
        json_out=False,
    )  # fmt: skip

    listen = f"127.0.0.1:{free_port()}"
    step(f"release v1 pins {REPOSITORY}@{digest[:19]}..., listens on {listen}; publish it")
    sign_and_publish_release(1, digest, listen, "/healthz")

    step("the agent (runc; state, store and roots in demo-out/agent-state): one reconcile deploys v1")
    shutil.copyfile(RELEASE_TEMPLATES / "agent.yaml", OUT / "agent.yaml")
    for line in (OUT / "agent.yaml").read_text().splitlines():
        if line and not line.startswith("#"):
            print(f"  | {line}")
    kiln("agent", "reconcile", "--once", "--config", config, json_out=False)

    proc: subprocess.Popen[bytes] | None = None
    try:
        step("`kiln agent run` keeps the service address open (its forwarder lives in the agent): curl it")
        proc = start_agent(config)
        wait_for("the agent", lambda d: (d.get("release") or {}).get("version") == 1, proc, 60)
        curl(f"http://{listen}/healthz")
        curl(f"http://{listen}/")

        step("release v2: the same image, a health check that fails (GET /nope answers 404)")
        sign_and_publish_release(2, digest, listen, "/nope")
        print("  the running agent picks v2 up; its new instance gets 60 s to turn healthy (about a minute)")
        started = time.monotonic()
        answered, failed = wait_for(
            "v2 to fail",
            lambda d: any(f["version"] == 2 for f in d.get("failures") or []) and not d.get("rollout"),
            proc,
            180,
            probe=f"http://{listen}/healthz",
        )
        print(f"  {time.monotonic() - started:.0f} s: v2 failed and the agent went back to v1 by itself")
        print(f"  the service address answered {answered} requests meanwhile; {failed} failed")
        agent_log_lines("rollout_failed", "rolled_back")
        kiln("agent", "status", "--config", config, json_out=False)
        curl(f"http://{listen}/")

        step("stop the agent (SIGTERM): the v1 instance keeps running, the address closes with the agent")
        stop_agent(proc)

        step(
            "release v3: python-web 1.1.0, signed and published, then one layer blob altered in the registry"
        )
        built = build_python_web_1_1(cache)
        image = f"oci:{rel(OUT / 'python-web-1.1.0')}:1.1.0"
        kiln("sign", "--key", rel(keys / "demo.key"), "--identity", REPOSITORY, image, json_out=False)
        pub = kiln("publish", rel(OUT / "python-web-1.1.0"), f"oci:{rel(OUT / 'registry' / 'python-web')}")
        print(f"  pinned reference: {pub['reference']}")
        known = {layer["digest"] for layer in v1_layers}
        layers = built["layers"]
        assert isinstance(layers, list)
        fresh = [layer for layer in layers if layer["digest"] not in known]
        if not fresh:
            raise SystemExit("demo: python-web 1.1.0 shares every layer with 1.0.0; nothing to alter")
        victim = fresh[-1]
        hex_ = str(victim["digest"]).removeprefix("sha256:")
        tamper(OUT / "registry" / "python-web" / "blobs" / "sha256" / hex_)
        print(f"  flipped one byte of the {victim['category']} layer {victim['digest']}")
        sign_and_publish_release(3, str(built["digest"]), listen, "/healthz")
        kiln("agent", "reconcile", "--once", "--config", config, json_out=False, expect=3)
        kiln("agent", "status", "--config", config, json_out=False)
    finally:
        if proc is not None:
            stop_agent(proc)
        step("stop the demo's instances and their network namespaces")
        stop_instances(config)


def stop_instances(config: str) -> None:
    """What an operator does to take the host out of service: stop every instance the agent runs."""
    from agent.reconcile import Agent
    from agent.runc import RuncRuntime
    from manifests.agentconfig import load_agent_config

    agent = Agent(load_agent_config(REPO / config)).open()
    ids = [r.id for r in agent.journal.state.instances]
    agent.close(stop_instances=True)
    left = RuncRuntime(STATE).list()
    for iid in ids:
        print(f"  stopped {iid}")
    if left:
        raise SystemExit(f"demo: runc still lists {', '.join(left)}")
    print("  runc lists no kiln instance; nothing of the demo is left running")


if __name__ == "__main__":
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    raise SystemExit(main())
