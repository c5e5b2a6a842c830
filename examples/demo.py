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

Last, the same python-web as a VM (:func:`deploy_a_vm`, everything under demo-out/vm/): built with
``--format vm`` (an EROFS root under dm-verity, Debian's cloud kernel), signed, published, pinned in
a release and booted by the agent's qemu runtime (TCG here), then curled through the agent's service
address. python-web 1.1.0 as a VM, with one byte of its disk flipped in the published copy, is
refused before anything boots (exit 3, reason ``digest``). The VM is stopped at the end.
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

from tests.kit.services import free_port, http_get, private_dockerd, wait_http

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
    deploy_a_vm(cache)
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


def agent_status(state: Path = STATE) -> dict[str, Any] | None:
    """The running agent's status document (from its Unix socket), or None."""
    from agent.status import query

    try:
        code, body = query(state, "/status", timeout=5.0)
    except OSError:
        return None
    doc = json.loads(body) if code == 200 else None
    return doc if isinstance(doc, dict) else None


def wait_for(what: str, check: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[bytes],
             timeout: float, *, probe: str | None = None,
             state: Path = STATE) -> tuple[int, int]:  # fmt: skip
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
            doc = agent_status(state)
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
        step("`kiln agent run` keeps reconciling; the address is held by its data plane process: curl it")
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

        step("stop the agent (SIGTERM): the v1 instance and its address keep serving (its data plane stays)")
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
    """What an operator does to take the host out of service: ``kiln agent down``."""
    from agent.runc import RuncRuntime

    stop_with_agent_down(config)
    left = RuncRuntime(STATE).list()
    if left:
        raise SystemExit(f"demo: runc still lists {', '.join(left)}")
    print("  runc lists no kiln instance; nothing of the demo is left running")


def stop_with_agent_down(config: str) -> None:
    """``kiln agent down``: stop every instance, data plane and namespace the agent runs."""
    down = kiln("agent", "down", "--config", config)
    stopped = down.get("stopped")
    for iid in stopped if isinstance(stopped, list) else []:
        print(f"  stopped {iid}")
    if down.get("failed"):
        raise SystemExit(f"demo: kiln agent down could not stop {down['failed']}")


# -- the same service as a VM ----------------------------------------------------------------------

VM_OUT = OUT / "vm"
VM_STATE = VM_OUT / "agent-state"
VM_REPOSITORY = "localhost/python-web-vm"


def _vm_agent_config() -> str:
    text = (RELEASE_TEMPLATES / "agent.yaml").read_text()
    text = text.replace("trust_root: trust/root.yaml", "trust_root: ../trust/root.yaml")
    text = text.replace(
        '{repository: localhost/python-web, location: "oci:registry/python-web"}',
        f'{{repository: {VM_REPOSITORY}, location: "oci:registry/python-web-vm"}}',
    )
    if VM_REPOSITORY not in text or "../trust" not in text:
        raise SystemExit("demo: examples/release/agent.yaml changed; update deploy_a_vm")
    (VM_OUT / "agent.yaml").write_text(text)
    return rel(VM_OUT / "agent.yaml")


def _vm_release(version: int, digest: str, listen: str) -> None:
    doc = VM_OUT / f"release-v{version}.yaml"
    expires = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc.write_text(
        "apiVersion: kiln.dev/v1\nkind: Release\nchannel: stable\n"
        f"version: {version}\nexpires: {expires}\nservices:\n"
        f"  - name: web-vm\n    image: {VM_REPOSITORY}@{digest}\n    listen: {listen}\n"
        "    health: {http: {port: 8080, path: /healthz}, interval: 500ms, timeout: 2s, retries: 3,"
        " grace: 500ms}\n"
    )
    keys = OUT / "keys"
    envelope = rel(VM_OUT / f"release-v{version}.dsse.json")
    kiln("release", "sign", "--key", rel(keys / "release-a.key"), rel(doc), "-o", envelope, json_out=False)
    kiln("release", "sign", "--key", rel(keys / "release-b.key"), "--append", envelope, rel(doc),
         json_out=False)  # fmt: skip
    kiln("release", "publish", envelope, f"oci:{rel(VM_OUT / 'releases')}", json_out=False)


def _vm_part_blob(registry: Path, digest: str, media_type_word: str) -> Path:
    manifest = json.loads((registry / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())
    for layer in manifest["layers"]:
        if media_type_word in layer["mediaType"]:
            return registry / "blobs" / "sha256" / str(layer["digest"]).removeprefix("sha256:")
    raise SystemExit(f"demo: the VM artifact {digest} has no {media_type_word} part")


def stop_vm_leftovers() -> None:
    if not (VM_STATE / "qemu").is_dir():
        return
    from agent.qemu import QemuRuntime

    runtime = QemuRuntime(VM_STATE)
    for iid in runtime.list():
        print(f"  stopping {iid}, left running by an earlier demo run")
        runtime.stop(iid, grace=2.0)


def deploy_a_vm(cache: list[str]) -> None:
    """python-web as a verity VM: build, sign, publish, release, boot by the agent, curl; tamper."""
    keys = OUT / "keys"
    step("python-web as a VM: the same tree as an EROFS root under dm-verity, Debian's cloud kernel")
    stop_vm_leftovers()
    remove_demo_dir(VM_OUT)
    VM_OUT.mkdir()
    built = kiln("build", "examples/python-web/python-web.yaml", "--format", "vm", "-o",
                 rel(VM_OUT / "python-web-vm"), "--force", *cache)  # fmt: skip
    vm = built.get("vm")
    verity = vm.get("verity") if isinstance(vm, dict) else None
    root_hash = verity.get("rootHash", "") if isinstance(verity, dict) else ""
    print(f"  {built['digest']}  {mb(built['size'])}, dm-verity root hash {root_hash[:16]}...")
    image = f"oci:{rel(VM_OUT / 'python-web-vm')}:{built['image_version']}"
    kiln("sign", "--key", rel(keys / "demo.key"), "--identity", VM_REPOSITORY, image, json_out=False)
    kiln("verify", "--key", rel(keys / "demo.pub"), "--identity", VM_REPOSITORY, image, json_out=False)
    registry = VM_OUT / "registry" / "python-web-vm"
    pub = kiln("publish", rel(VM_OUT / "python-web-vm"), f"oci:{rel(registry)}")
    print(f"  pinned reference: {pub['reference']}")

    listen = f"127.0.0.1:{free_port()}"
    step(f"release v1 pins {VM_REPOSITORY}@{str(pub['digest'])[:19]}..., listens on {listen}")
    _vm_release(1, str(pub["digest"]), listen)
    config = _vm_agent_config()
    proc: subprocess.Popen[bytes] | None = None
    try:
        step("the agent boots it under qemu (microvm; TCG here) after checking every part and the root hash")
        started = time.monotonic()
        proc = start_agent(config)
        wait_for("the VM", lambda d: (d.get("release") or {}).get("version") == 1, proc, 240, state=VM_STATE)
        print(f"  {time.monotonic() - started:.1f} s from the agent's start to the VM serving", flush=True)
        curl(f"http://{listen}/healthz")
        curl(f"http://{listen}/")
        stop_agent(proc)
        proc = None

        step("python-web 1.1.0 as a VM, signed and published, then one byte of its disk flipped there")
        src = OUT / "src" / "python-web-1.1.0" / "python-web.yaml"
        built2 = kiln("build", rel(src), "--format", "vm", "-o", rel(VM_OUT / "python-web-vm-1.1.0"),
                      "--force", *cache)  # fmt: skip
        image2 = f"oci:{rel(VM_OUT / 'python-web-vm-1.1.0')}:{built2['image_version']}"
        kiln("sign", "--key", rel(keys / "demo.key"), "--identity", VM_REPOSITORY, image2, json_out=False)
        pub2 = kiln("publish", rel(VM_OUT / "python-web-vm-1.1.0"), f"oci:{rel(registry)}")
        victim = _vm_part_blob(registry, str(pub2["digest"]), "disk")
        tamper(victim)
        print(f"  flipped one byte of the disk part sha256:{victim.name[:16]}... in {rel(registry)}")
        _vm_release(2, str(pub2["digest"]), listen)
        kiln("agent", "reconcile", "--once", "--config", config, json_out=False, expect=3)
    finally:
        if proc is not None:
            stop_agent(proc)
        step("stop the VM and its network namespace")
        stop_vm(config)


def stop_vm(config: str) -> None:
    from agent.qemu import QemuRuntime

    stop_with_agent_down(config)
    left = QemuRuntime(VM_STATE).list()
    if left:
        raise SystemExit(f"demo: qemu instances still running: {', '.join(left)}")
    print("  no qemu instance is left running")


if __name__ == "__main__":
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    raise SystemExit(main())
