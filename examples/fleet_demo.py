"""`make demo-fleet`: a 3-host fleet on one machine, coordinated through etcd.

Everything lives under demo-out/fleet/ and is removed at the end. As root:

1. python-web is built, signed with a demo key and published to ``oci:demo-out/fleet/registry``;
   release keys and a trust root are made (a release needs both release keys).
2. Three hosts are network namespaces joined to this machine by veth pairs, each with its own
   address: ``canary-1`` (group canary), ``web-1`` and ``web-2`` (group web). A private etcd listens on
   loopback and on the hosts' gateways; ``kiln fleet serve`` serves FleetLock and the dashboard on
   loopback.
3. Each host runs its own ``kiln agent run`` (runc) inside its namespace, with ``fleet: {etcd: ...}``.
4. Release v1, then v2, with ``rollout: {waves: [{group: canary}, {group: "*"}]}``: the canary updates
   first, then the web hosts one at a time (group max 1). ``kiln fleet status`` shows the waves.
5. Release v3 fails its health check on the canary: it rolls back, v3 is halted for the whole fleet,
   and the web hosts never start it.

Then every agent, instance, data plane, namespace and server is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out" / "fleet"
HOSTS = {"canary-1": "canary", "web-1": "web", "web-2": "web"}
REPOSITORY = "localhost/python-web"
PORT = 8080


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kiln(*args: str, json_out: bool = True, expect: int = 0) -> dict[str, object]:
    cmd = [sys.executable, "-m", "kiln", *args, *(["--json"] if json_out else [])]
    print("$ kiln " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != expect:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo-fleet: kiln {args[0]} exited {proc.returncode}, expected {expect}")
    return json.loads(proc.stdout) if json_out and proc.stdout.strip() else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def hosts() -> Iterator[dict[str, tuple[str, str, str]]]:
    """name -> (netns, address, gateway); the namespaces (and their veth pairs) go at the end."""
    tag = f"{random.randrange(16**4):04x}"  # noqa: S311 - names, not secrets
    net = 200 + random.randrange(50)  # noqa: S311
    made: dict[str, tuple[str, str, str]] = {}
    try:
        for i, name in enumerate(HOSTS, start=1):
            ns, addr, gw = f"kiln-fleetdemo-{tag}-{i}", f"10.{net}.{i}.2", f"10.{net}.{i}.1"
            ip("netns", "add", ns)
            made[name] = (ns, addr, gw)
            veth = f"kfd{tag}{i}"
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("addr", "add", f"{gw}/30", "dev", veth)
            ip("link", "set", veth, "up")
            for cmd in (("link", "set", "lo", "up"), ("addr", "add", f"{addr}/30", "dev", "eth0"),
                        ("link", "set", "eth0", "up"), ("route", "add", "default", "via", gw)):  # fmt: skip
                ip("-n", ns, *cmd)
        yield made
    finally:
        for ns, _addr, _gw in made.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "delete", ns)


@contextlib.contextmanager
def etcd(gateways: list[str]) -> Iterator[str]:
    port, peer = free_port(), free_port()
    data = OUT / "etcd"
    urls = ",".join(f"http://{a}:{port}" for a in ["127.0.0.1", *gateways])
    log = (OUT / "etcd.log").open("wb")
    proc = subprocess.Popen(
        ["etcd", "--name", "demo", "--data-dir", str(data), "--listen-client-urls", urls,
         "--advertise-client-urls", f"http://127.0.0.1:{port}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"demo=http://127.0.0.1:{peer}", "--log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait("etcd answers", lambda: _etcd_up(port), timeout=30)
        yield str(port)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _etcd_up(port: int | str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


def wait(what: str, ok: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo-fleet: {what}: not within {timeout:g}s (logs in {OUT})")
        time.sleep(0.3)


def answers(address: str) -> bool:
    """The host's service address answers GET /healthz with 200."""
    try:
        with socket.create_connection((address, PORT), timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1] == b"200"


def running(config: Path) -> str | None:
    """The release this host's agent runs (its status), when its address answers too."""
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "agent", "status", "--config", str(config), "--json"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None
    rel = doc.get("release") or {}
    return f"v{rel.get('version')}" if rel.get("version") is not None and doc.get("rollout") is None else None


def release(version: int, digest: str, health_path: str) -> None:
    doc = {
        "apiVersion": "kiln.dev/v1",
        "kind": "Release",
        "channel": "stable",
        "version": version,
        "expires": (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "services": [
            {
                "name": "web",
                "image": f"{REPOSITORY}@{digest}",
                "listen": f"0.0.0.0:{PORT}",
                "strategy": "blue-green",
                "health": {
                    "http": {"port": 8080, "path": health_path},
                    "interval": "300ms",
                    "timeout": "1s",
                    "retries": 2,
                    "grace": "500ms",
                },
                "env": {"DEMO_RELEASE": str(version)},
            }
        ],
        "rollout": {"waves": [{"group": "canary"}, {"group": "*"}]},
    }
    path = OUT / f"v{version}.yaml"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    envelope = OUT / f"v{version}.dsse.json"
    keys = OUT / "keys"
    kiln(
        "release",
        "sign",
        "--key",
        str(keys / "release-a.key"),
        str(path),
        "-o",
        str(envelope),
        json_out=False,
    )
    kiln("release", "sign", "--key", str(keys / "release-b.key"), "--append", str(envelope), str(path),
         json_out=False)  # fmt: skip
    kiln("release", "publish", str(envelope), f"oci:{OUT / 'releases'}", json_out=False)


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo-fleet: run as root (network namespaces, veth pairs, runc)")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    os.environ.setdefault("KILN_PASSWORD", "kiln-demo")
    keys = OUT / "keys"
    keys.mkdir()
    step("build, sign and publish python-web; release keys and a trust root")
    built = kiln("build", "examples/python-web/python-web.yaml", "-o", str(OUT / "python-web"), "--force")
    for name in ("image", "release-a", "release-b", "root"):
        kiln("key", "generate", "--out", str(keys / name), json_out=False)
    image = f"oci:{built['output']}:{built['image_version']}"
    kiln("sign", "--key", str(keys / "image.key"), "--identity", REPOSITORY, image, json_out=False)
    kiln("attest", "--key", str(keys / "image.key"), image, json_out=False)
    pub = kiln("publish", str(OUT / "python-web"), f"oci:{OUT / 'registry'}", "--channel", "stable")
    digest = str(pub["digest"])
    kiln("root", "init", "--root-key", str(keys / "root.pub"), "--release-key", str(keys / "release-a.pub"),
         "--release-key", str(keys / "release-b.pub"), "--release-threshold", "2",
         "--image-key", str(keys / "image.pub"), "--image-repository", "localhost/**", "--channel", "stable",
         "--expires", "720h", "-o", str(OUT / "root.yaml"), json_out=False)  # fmt: skip
    fleet_yaml = OUT / "fleet.yaml"
    fleet_yaml.write_text(
        "apiVersion: kiln.dev/v1\nkind: FleetConfig\nname: demo\ndefault_max: 1\nlease_ttl: 10s\n"
    )

    with hosts() as made, etcd([gw for _ns, _a, gw in made.values()]) as etcd_port:
        names = ", ".join(f"{n} ({HOSTS[n]}, {a})" for n, (_ns, a, _g) in made.items())
        step(f"3 hosts: {names}; etcd on loopback")
        dash = free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "kiln", "fleet", "serve", "--etcd", etcd_url, "--config", str(fleet_yaml),
             "--listen", f"127.0.0.1:{dash}"],
            cwd=REPO, stdout=(OUT / "fleet-serve.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        print(f"  the dashboard: http://127.0.0.1:{dash}/  (FleetLock on the same address)")
        agents: dict[str, subprocess.Popen[bytes]] = {}
        configs: dict[str, Path] = {}
        try:
            for name, (ns, _addr, gw) in made.items():
                config = {
                    "apiVersion": "kiln.dev/v1", "kind": "AgentConfig",
                    "source": f"oci:{OUT / 'releases'}", "channel": "stable",
                    "trust_root": str(OUT / "root.yaml"), "state": str(OUT / "hosts" / name),
                    "runtime": "runc", "poll_interval": "500ms", "group": HOSTS[name],
                    "images": [{"repository": REPOSITORY, "location": f"oci:{OUT / 'registry'}"}],
                    "fleet": {"etcd": f"http://{gw}:{etcd_port}", "name": "demo", "host": name},
                }  # fmt: skip
                configs[name] = OUT / f"{name}.yaml"
                configs[name].write_text(json.dumps(config, indent=2) + "\n")
                argv = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "kiln", "agent", "run",
                        "--config", str(configs[name])]  # fmt: skip
                agents[name] = subprocess.Popen(
                    argv, cwd=REPO, stdout=(OUT / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip

            def versions() -> dict[str, str | None]:
                return {n: running(configs[n]) if answers(a) else None for n, (_ns, a, _g) in made.items()}

            for version, health in ((1, "/healthz"), (2, "/healthz")):
                step(f"release v{version}: the canary wave first, then the web hosts one at a time")
                release(version, digest, health)
                wait(f"every host serves v{version}", lambda v=version: set(versions().values()) == {f"v{v}"})
                print(f"  every host serves v{version}: {versions()}")
                print(f"$ kiln fleet status --etcd {etcd_url} --name demo")
                status = subprocess.run(
                    [sys.executable, "-m", "kiln", "fleet", "status", "--etcd", etcd_url, "--name", "demo"],
                    cwd=REPO, capture_output=True, text=True, check=True,
                )  # fmt: skip
                print("  " + status.stdout.strip().replace("\n", "\n  "))

            step("release v3 fails its health check on the canary: it rolls back and halts v3 fleet-wide")
            release(3, digest, "/missing")
            halted = {}

            def is_halted() -> bool:
                argv = [sys.executable, "-m", "kiln", "fleet", "status", "--etcd", etcd_url, "--name", "demo"]
                out = subprocess.run([*argv, "--json"], cwd=REPO, capture_output=True, text=True, check=False)
                doc = json.loads(out.stdout) if out.returncode == 0 else {"releases": []}
                v3 = next((r for r in doc["releases"] if r["version"] == 3), None)
                if v3 is not None and v3["halted"]:
                    halted.update(v3)
                return bool(halted)

            wait("v3 halted", is_halted)
            time.sleep(3)
            print(f"  halted by {halted['halt']['host']}: {halted['halt']['reason']}")
            print(f"  every host still serves v2: {versions()}")
            if set(versions().values()) != {"v2"}:
                raise SystemExit("demo-fleet: a host does not serve v2 after the halt")
        finally:
            step("stop every agent, instance, data plane and server")
            for proc in agents.values():
                proc.send_signal(signal.SIGTERM)
            for name, proc in agents.items():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                down = [sys.executable, "-m", "kiln", "agent", "down", "--config", str(configs[name])]
                subprocess.run(down, cwd=REPO, capture_output=True, check=False)
            server.terminate()
            server.wait(timeout=20)
    step("done: a fleet of 3 hosts rolled out v1 and v2 in waves and halted a bad v3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
