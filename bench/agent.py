"""Deploy with the kiln agent against `docker pull` + `docker run`, in the same run, as root.

python-web is built in ``--runs + 1`` versions that differ only in their app layer (the greeting
names the version), and each is signed and published to a private registry (Debian's
docker-registry) on loopback. Then:

- **new release -> serving**, ``--runs`` times. kiln: a signed release pinning the next version is
  published (`kiln release publish`) while `kiln agent run` follows the channel on runc, and the
  bench nudges the agent with SIGHUP (what `kiln agent reconcile --now` asks over the socket;
  ``--no-nudge`` leaves it to the poll). Timed from the publish returning to the first answer of
  the new version on the service address: the agent verifies the release and the image
  signature, pulls the one new layer by digest, unpacks that one layer into a snapshot, mounts
  the read-only root, starts the instance, probes it at once and then every 10, 20, 40 ms, and
  switches the address. docker: a private dockerd that already pulled the previous version runs
  `docker pull REGISTRY/...@sha256:...` and `docker run -d --network host` of the same image,
  timed from the pull starting to the first answer. The bench's client asks kiln's address every
  5 ms, and the old version answers it until the switch; with ``--same-traffic`` a client asks
  docker's old container as often during docker's deploy, so both machines carry the same load.
- **verification of the running release**: in-process ``Agent.reconcile_once()`` with nothing to
  do, and its parts.
- **rollback** to the previous release (cached), until the address answers: through `kiln agent
  rollback` (a new interpreter) and through the agent's socket (what that command sends), each
  without and inside ``keep_previous: 5m``; against `docker run` of the cached previous image.
- **a fleet from nothing**, ``--fleet-runs`` times: a new host (empty store) follows its own
  release repository; a release of 2 services x 2 instances is published; timed until both
  addresses answer.

Everything started is stopped again: instances, namespaces, mounts, the agents, the registry and
dockerd. Nothing here asserts a time: read the numbers (docs/performance.md keeps the last ones).

    .venv/bin/python bench/agent.py [--runs N] [--poll SECONDS] [--verify-runs N] [--rollbacks N]
                                    [--fleet-runs N] [--no-nudge] [--same-traffic]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.kit.services import PrivateDockerd, free_port, http_get, private_dockerd, private_registry

REPO = Path(__file__).resolve().parent.parent
# This file is bench/agent.py: keep its directory from shadowing kiln's own `agent` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
PASSWORD = "kiln-bench"  # noqa: S105 - throwaway keys in a temporary directory
GREETING = '"hello from kiln"'


def kiln_env() -> dict[str, str]:
    """kiln as installed: bytecode cached (see bench/build.py), a passphrase for the bench keys."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["KILN_PASSWORD"] = PASSWORD
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    return env


def kiln(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "--json", *args],
        capture_output=True,
        text=True,
        env=kiln_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return out


def greeting(version: int) -> str:
    return f"hello from kiln, release {version}"


def wait_answer(url: str, needle: str, *, timeout: float = 120.0, every: float = 0.005) -> float:
    """Poll ``url`` until its body contains ``needle``; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, body = http_get(url, timeout=1.0)
            if needle.encode() in body:
                return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer {needle!r} within {timeout:g} s")
        time.sleep(every)


# -- images -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    version: int
    layout: Path
    digest: str
    layers: tuple[str, ...]


def build_images(work: Path, count: int) -> list[Image]:
    """python-web versions 1.0.1 .. 1.0.count: the same base layers, one app layer each."""
    images = []
    for v in range(1, count + 1):
        src = work / f"src-{v}"
        shutil.copytree(REPO / "examples/python-web", src, ignore=shutil.ignore_patterns("__pycache__"))
        manifest, server = src / "python-web.yaml", src / "app/server.py"
        manifest.write_text(manifest.read_text().replace("version: 1.0.0", f"version: 1.0.{v}"))
        text = server.read_text()
        if GREETING not in text:
            raise SystemExit(f"{server}: the greeting {GREETING} is gone; update bench/agent.py")
        server.write_text(text.replace(GREETING, json.dumps(greeting(v))))
        built = kiln(
            "-q", "build", str(manifest), "-o", str(work / f"image-{v}"), "--cache-dir", str(work / "cache")
        )
        images.append(
            Image(
                version=v,
                layout=work / f"image-{v}",
                digest=built["digest"],
                layers=tuple(layer["digest"] for layer in built["layers"]),
            )
        )
    shared = set(images[0].layers).intersection(*(i.layers for i in images))
    print(f"built {count} versions of python-web: {len(shared)} of {len(images[0].layers)} layers shared")
    return images


# -- the kiln side --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """One agent host: keys, trust root, config, state; the registry it reads from."""

    work: Path
    registry: str  # 127.0.0.1:PORT
    listen: str

    @property
    def repository(self) -> str:
        return f"{self.registry}/bench/python-web"

    @property
    def config(self) -> Path:
        return self.work / "agent.yaml"

    @property
    def state(self) -> Path:
        return self.work / "state"


RELEASE = """\
apiVersion: kiln.dev/v1
kind: Release
channel: stable
version: {version}
expires: {expires}
services:
{services}"""

SERVICE = """\
  - name: {name}
    image: {image}
    replicas: {replicas}
    listen: {listen}
    strategy: blue-green
    health: {{http: {{port: 8080, path: /healthz}}, interval: 100ms, timeout: 1s, retries: 1, grace: 0s}}
"""

AGENT = """\
apiVersion: kiln.dev/v1
kind: AgentConfig
source: {registry}/{releases}
channel: stable
trust_root: root.yaml
state: state
runtime: runc
insecure: true
poll_interval: {poll}s
max_attempts: 1
"""


def setup_host(work: Path, registry: str, images: list[Image], poll: float) -> Host:
    host = Host(work=work, registry=registry, listen=f"127.0.0.1:{free_port()}")
    keys = work / "keys"
    keys.mkdir()
    for name in ("image", "release", "root"):
        kiln("key", "generate", "--out", str(keys / name))
    kiln(
        "root", "init", "--root-key", str(keys / "root.pub"), "--release-key", str(keys / "release.pub"),
        "--image-key", str(keys / "image.pub"), "--image-repository", f"{registry}/bench/**",
        "--channel", "stable", "--expires", "24h", "-o", str(work / "root.yaml"),
    )  # fmt: skip
    for image in images:
        ref = f"oci:{image.layout}:1.0.{image.version}"
        kiln("sign", "--key", str(keys / "image.key"), "--identity", host.repository, ref)
        kiln("publish", str(image.layout), host.repository, "--insecure")
    host.config.write_text(AGENT.format(registry=registry, releases="bench/releases", poll=poll))
    return host


def fleet_host(main: Host, name: str, poll: float) -> Host:
    """Another host (an empty state) trusting the same keys, following its own release repository."""
    host = Host(work=main.work / name, registry=main.registry, listen=f"127.0.0.1:{free_port()}")
    host.work.mkdir()
    (host.work / "keys").symlink_to(main.work / "keys")
    shutil.copy(main.work / "root.yaml", host.work / "root.yaml")
    host.config.write_text(AGENT.format(registry=main.registry, releases=f"bench/{name}", poll=poll))
    return host


def publish_to(host: Host, envelope: Path, releases: str) -> None:
    kiln("release", "publish", str(envelope), f"{host.registry}/{releases}", "--insecure")


def sign_release(
    host: Host,
    version: int,
    image: Image,
    *,
    keep_previous: str | None = None,
    services: list[tuple[str, str]] | None = None,
    replicas: int = 1,
) -> Path:
    """Release ``version`` of ``image``: one service ``web`` on the host's address, or the
    ``services`` given as (name, listen), each with ``replicas`` instances."""
    doc = host.work / f"release-{version}.yaml"
    text = ""
    for name, listen in services or [("web", host.listen)]:
        text += SERVICE.format(
            name=name, image=f"{host.repository}@{image.digest}", replicas=replicas, listen=listen
        )
        if keep_previous is not None:
            text += f"    keep_previous: {keep_previous}\n"
    doc.write_text(
        RELEASE.format(
            version=version,
            expires=(datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            services=text,
        )
    )
    envelope = host.work / f"release-{version}.dsse.json"
    kiln("release", "sign", "--key", str(host.work / "keys/release.key"), str(doc), "-o", str(envelope))
    return envelope


def publish_release(host: Host, envelope: Path) -> float:
    t0 = time.monotonic()
    kiln("release", "publish", str(envelope), f"{host.registry}/bench/releases", "--insecure")
    return time.monotonic() - t0


@contextmanager
def running_agent(host: Host) -> Iterator[subprocess.Popen[bytes]]:
    """`kiln agent run` as a host would run it; SIGTERM on exit (its instances keep running)."""
    with (host.work / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln", "agent", "run", "--config", str(host.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=kiln_env(),
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def agent_status(host: Host) -> dict[str, Any] | None:
    from agent.status import query

    try:
        code, body = query(host.state, "/status", timeout=5.0)
    except OSError:
        return None
    doc = json.loads(body) if code == 200 else None
    return doc if isinstance(doc, dict) else None


def wait_settled(
    host: Host, version: int, proc: subprocess.Popen[bytes], timeout: float = 120.0, *, instances: int = 1
) -> None:
    """Until the running agent reports ``version`` good, no rollout, ``instances`` instances."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kiln agent run exited {proc.returncode}; see {host.work / 'agent.log'}")
        doc = agent_status(host)
        if (
            doc is not None
            and (doc.get("release") or {}).get("version") == version
            and not doc.get("rollout")
            and len(doc.get("instances") or []) == instances
        ):
            return
        time.sleep(0.05)
    raise SystemExit(f"the agent did not settle on release v{version}; see {host.work / 'agent.log'}")


def agent_phases(host: Host, version: int, since: float) -> str:
    """Where the agent's time went, from its event log: ``accepted`` comes after the poll, the
    fetch, the verification, the pull and the unpack; ``started`` after runc started the instance."""
    seen: dict[str, float] = {}
    for line in (host.work / "agent.log").read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and version in (event.get("version"), event.get("release")):
            seen.setdefault(str(event.get("event")), float(event.get("time", 0.0)))
    if "accepted" not in seen or "started" not in seen:
        return "no events"
    accepted, started = seen["accepted"] - since, seen["started"] - seen["accepted"]
    return f"poll+verify+pull+unpack {accepted:.2f} s, runc start {started:.2f} s, then health+switch"


def stop_instances(host: Host) -> list[str]:
    """Stop every instance of the bench's agent (journal and runc), with their namespaces."""
    from agent.reconcile import Agent
    from agent.runc import RuncRuntime
    from manifests.agentconfig import load_agent_config

    if not host.state.exists():
        return []
    agent = Agent(load_agent_config(host.config)).open()
    try:
        for iid in agent.runtime.list():
            agent.runtime.stop(iid, grace=2.0)
    finally:
        agent.close(stop_instances=True)
    return list(RuncRuntime(host.state).list())


# -- verification of the current release --------------------------------------------------------------


def measure_verification(host: Host, image: Image, runs: int) -> dict[str, list[float]]:
    """In-process: ``reconcile_once`` on the running release, and its parts, ``runs`` times each."""
    from agent.compose import composed_fingerprint
    from agent.reconcile import Agent
    from agent.sources import open_image_location
    from manifests.agentconfig import load_agent_config
    from manifests.digest import Digest
    from publisher.release_artifact import fetch_release, open_release_endpoint
    from signing.cosign import attestation_tag, signature_tag
    from signing.image import stored_layers
    from signing.release import check_release
    from signing.root import image_policy

    config = load_agent_config(host.config)
    # The loopback registry is plain http by design here; its warning once per connection is noise.
    logging.getLogger("kiln.publisher").setLevel(logging.ERROR)
    agent = Agent(config)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        value = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return value

    try:
        agent.start()
        highest = agent.journal.state.highest
        if highest is None:
            raise SystemExit("the agent runs no release")
        pin = Digest.parse(image.digest)
        manifest = agent.store.image(pin).manifest_digest
        for _ in range(runs):
            result = timed("reconcile_once (nothing to do)", agent.reconcile_once)
            if getattr(result, "outcome", None) != "current":
                raise SystemExit(f"expected a reconcile with nothing to do, got {result}")

            def fetch() -> bytes:
                with open_release_endpoint(config.source, insecure=True) as endpoint:
                    return fetch_release(endpoint, config.channel)

            envelope = timed("  fetch the release artifact", fetch)
            assert isinstance(envelope, bytes)

            def check(envelope: bytes = envelope) -> None:
                check_release(
                    envelope,
                    root=agent.root,
                    channel=config.channel,
                    now=datetime.now(UTC),
                    highest_accepted=highest.version,
                    current_payload_digest=highest.payload_digest,
                )

            timed("  signatures, threshold, expiry, version", check)

            def policy() -> None:
                with open_image_location(
                    config.location_for(host.repository), staging=host.state / "tmp", insecure=True
                ) as loc:
                    image_policy(agent.root).evaluate(
                        repository=host.repository,
                        tag=None,
                        image_digest=pin,
                        signatures=stored_layers(loc.artifacts, signature_tag(pin)),
                        attestations=stored_layers(loc.artifacts, attestation_tag(pin)),
                        now=datetime.now(UTC),
                    )

            timed("  (extra) image signature under the policy", policy)

            def rehash() -> None:
                pulled = agent.store.image(pin)
                for desc in (pulled.manifest.config, *pulled.layers):
                    agent.store.verify(desc.digest, size=desc.size)

            timed("  (extra) re-hash the cached blobs", rehash)
            timed(
                "  root fingerprint, every snapshot read (enforcement)",
                lambda: composed_fingerprint(agent.roots_dir, manifest, agent.snapshots),
            )
    finally:
        agent.close()
    return times


# -- rollbacks and a fleet from nothing ---------------------------------------------------------------


ROLLBACK_AFTER = 1.0  # seconds after the release settled (the agent polls every 5 s, SIGHUP aside)


def rollback_once(host: Host, answer: str, *, via: str) -> tuple[float, float]:
    """Roll back through ``kiln agent rollback`` (``via="cli"``) or a POST of /rollback on the
    agent's socket (``via="socket"``: what the command sends, without starting a Python
    interpreter); (until the address answers ``answer``, until the request returned)."""
    from agent.status import query

    t0 = time.monotonic()
    outcome: list[str] = []
    if via == "cli":
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln", "agent", "rollback", "--config", str(host.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=kiln_env(),
        )
        answered = wait_answer(f"http://{host.listen}/", answer) - t0
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"kiln agent rollback failed: {err.decode(errors='replace')}")
    else:

        def post() -> None:
            code, body = query(host.state, "/rollback", method="POST")
            outcome.append("" if code == 200 else f"{code} {body.decode(errors='replace')}")

        thread = threading.Thread(target=post)
        thread.start()
        answered = wait_answer(f"http://{host.listen}/", answer, every=0.001) - t0
        thread.join(120)
        if outcome != [""]:
            raise SystemExit(f"POST /rollback failed: {outcome}")
    return answered, time.monotonic() - t0


def measure_rollbacks(
    host: Host,
    proc: subprocess.Popen[bytes],
    previous: Image,
    newest: Image,
    *,
    next_release: int,
    rounds: int,
    keep_previous: str | None,
    via: str,
    first_is_ready: bool,
) -> tuple[list[float], list[float], int]:
    """``rounds`` times: roll forward to ``newest`` (a new release; skipped in the first round when
    ``first_is_ready``), then back to ``previous``. Returns the times until the address answered,
    until the request returned, and the next free release version."""
    answered: list[float] = []
    returned: list[float] = []
    for i in range(rounds):
        if i or not first_is_ready:
            publish_release(host, sign_release(host, next_release, newest, keep_previous=keep_previous))
            proc.send_signal(signal.SIGHUP)
            wait_answer(f"http://{host.listen}/", greeting(newest.version))
            wait_settled(host, next_release, proc)
            next_release += 1
        # The release is recorded good before the pass that rolled it out ends: its tail
        # (enforcement reads every snapshot, gc, standby expiry) holds the agent's lock for
        # 0.1-0.2 s more. An operator's rollback comes later than that; asked at once, it would
        # time the wait for that tail (run J: 0.115 s inside keep_previous, the switch itself
        # taking about 10 ms). So the rollback is asked once the pass is surely over.
        time.sleep(ROLLBACK_AFTER)
        status = agent_status(host) or {}
        back_to = int(((status.get("previous") or {}).get("version")) or 0)
        a, r = rollback_once(host, greeting(previous.version), via=via)
        answered.append(a)
        returned.append(r)
        wait_settled(host, back_to, proc)
    return answered, returned, next_release


def measure_fleet(main: Host, image: Image, runs: int, poll: float) -> list[float]:
    """From an empty store: a release of 2 services x 2 instances published -> both addresses
    answer; a new host (state, release repository) each run."""
    times = []
    for i in range(runs):
        name = f"fleet-{i}"
        host = fleet_host(main, name, poll)
        services = [("web-a", f"127.0.0.1:{free_port()}"), ("web-b", f"127.0.0.1:{free_port()}")]
        envelope = sign_release(host, 1, image, services=services, replicas=2)
        try:
            with running_agent(host) as proc:
                deadline = time.monotonic() + 60
                while agent_status(host) is None:  # the agent is up, its store empty
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the fleet agent did not come up; see {host.work / 'agent.log'}")
                    time.sleep(0.05)
                publish_to(host, envelope, f"bench/{name}")
                t0 = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                done = [wait_answer(f"http://{listen}/", greeting(image.version)) for _, listen in services]
                times.append(max(done) - t0)
                wait_settled(host, 1, proc, instances=4)
        finally:
            left = stop_instances(host)
            if left:
                raise SystemExit(f"fleet instances left running: {left}")
        print(f"  fleet {i + 1}: 2 services x 2 instances serving {times[-1]:.3f} s after the publish")
    return times


# -- the docker side ------------------------------------------------------------------------------


def docker_run(engine: PrivateDockerd, ref: str, name: str, port: int) -> None:
    engine.cli(
        "run", "-d", "--name", name, "--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--tmpfs", "/tmp", "--network", "host",
        "-e", f"PORT={port}", ref,
    )  # fmt: skip


# -- main -------------------------------------------------------------------------------------------


@contextmanager
def traffic(url: str, *, on: bool, every: float = 0.005) -> Iterator[None]:
    """With ``on``: a client requests ``url`` every ``every`` seconds meanwhile, as the bench's
    client requests kiln's address (answered by the old version) while kiln deploys."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            with suppress(OSError):
                http_get(url, timeout=1.0)
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    if on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            thread.join(5)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.3f} s" if len(values) == 1 else f"{med:.3f} s (min {min(values):.3f}, n={len(values)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="new releases to roll out (default 3)")
    ap.add_argument("--poll", type=float, default=5.0, help="the agent's poll_interval (default 5 s)")
    ap.add_argument("--verify-runs", type=int, default=20, help="reconciles with nothing to do (20)")
    ap.add_argument("--rollbacks", type=int, default=3, help="rollbacks of each kind (default 3)")
    ap.add_argument("--fleet-runs", type=int, default=3, help="2x2 releases from an empty store (3)")
    ap.add_argument(
        "--no-nudge",
        dest="nudge",
        action="store_false",
        help="do not wake the agent (SIGHUP) after a publish: it finds releases by polling alone",
    )
    ap.add_argument(
        "--same-traffic",
        action="store_true",
        help="while docker deploys, request its old container as often as the bench requests kiln's "
        "address while kiln deploys (there the old version answers until the switch)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/agent.py runs as root (runc, network namespaces, dockerd)")
    for tool in ("runc", "docker-registry", "dockerd", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make debs-test installs it)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-agent-", dir="/var/tmp"))
    kiln_deploy: list[float] = []
    docker_deploy: list[float] = []
    publish_times: list[float] = []
    verify: dict[str, list[float]] = {}
    rollback: dict[str, list[float]] = {}
    fleet: list[float] = []
    host: Host | None = None
    leftovers: list[str] | None = None
    try:
        images = build_images(work, args.runs + 1)
        with private_registry(work / "registry") as registry, private_dockerd() as engine:
            host = setup_host(work, registry, images, args.poll)
            print(f"registry {registry}, agent on runc polling every {args.poll:g} s, address {host.listen}")
            # Both sides start from version 1 running, its layers cached.
            first = images[0]
            docker_port = free_port()
            engine.cli("pull", f"{host.repository}@{first.digest}", timeout=300)
            docker_run(engine, f"{host.repository}@{first.digest}", "web-1", docker_port)
            wait_answer(f"http://127.0.0.1:{docker_port}/", greeting(1))
            publish_release(host, sign_release(host, 1, first))
            with running_agent(host) as proc:
                wait_answer(f"http://{host.listen}/", greeting(1))
                wait_settled(host, 1, proc)
                for image in images[1:]:
                    v = image.version
                    envelope = sign_release(host, v, image)
                    publish_times.append(publish_release(host, envelope))
                    t0, wall0 = time.monotonic(), time.time()
                    if args.nudge:  # what `kiln agent reconcile --now` does, without a new interpreter
                        proc.send_signal(signal.SIGHUP)
                    kiln_deploy.append(wait_answer(f"http://{host.listen}/", greeting(v)) - t0)
                    wait_settled(host, v, proc)

                    ref = f"{host.repository}@{image.digest}"
                    port = free_port()
                    with traffic(f"http://127.0.0.1:{docker_port}/", on=args.same_traffic):
                        t0 = time.monotonic()
                        engine.cli("pull", ref, timeout=300)
                        docker_run(engine, ref, f"web-{v}", port)
                        docker_deploy.append(wait_answer(f"http://127.0.0.1:{port}/", greeting(v)) - t0)
                    engine.cli("rm", "-f", f"web-{v - 1}")
                    docker_port = port
                    print(
                        f"  release {v}: kiln {kiln_deploy[-1]:.3f} s ({agent_phases(host, v, wall0)}), "
                        f"docker {docker_deploy[-1]:.3f} s"
                    )

            verify = measure_verification(host, images[-1], args.verify_runs)

            previous, newest = images[-2], images[-1]
            next_release = newest.version + 1
            with running_agent(host) as proc:
                wait_settled(host, newest.version, proc)
                plans = [
                    ("kiln agent rollback", None, "cli"),
                    ("rollback through the agent's socket", None, "socket"),
                    ("kiln agent rollback, inside keep_previous", "5m", "cli"),
                    ("rollback through the socket, inside keep_previous", "5m", "socket"),
                ]
                for n, (label, keep, via) in enumerate(plans):
                    answered, returned, next_release = measure_rollbacks(
                        host,
                        proc,
                        previous,
                        newest,
                        next_release=next_release,
                        rounds=args.rollbacks,
                        keep_previous=keep,
                        via=via,
                        first_is_ready=n == 0,
                    )
                    rollback[f"{label}: until the address answers"] = answered
                    rollback[f"{label}: the request returns"] = returned
            for i in range(args.rollbacks):
                port = free_port()
                t0 = time.monotonic()
                docker_run(engine, f"{host.repository}@{previous.digest}", f"web-rollback-{i}", port)
                rollback.setdefault("docker run of the cached image: until it answers", []).append(
                    wait_answer(f"http://127.0.0.1:{port}/", greeting(previous.version)) - t0
                )
                engine.cli("rm", "-f", f"web-rollback-{i}")
            fleet = measure_fleet(host, newest, args.fleet_runs, args.poll)
            leftovers = stop_instances(host)
    finally:
        if host is not None and leftovers is None:
            try:
                leftovers = stop_instances(host)
            except BaseException:
                print(f"could not stop the bench's instances: their runc state is in {work}", file=sys.stderr)
                raise
        if not leftovers:
            shutil.rmtree(work, ignore_errors=True)

    k, d = statistics.median(kiln_deploy), statistics.median(docker_deploy)
    print("\nnew release -> new version serving (python-web; the base layers cached on both sides)")
    print(f"  {'kiln (release published -> the address answers it)':<58}{fmt(kiln_deploy)}")
    print(f"  {'docker pull + docker run (pull starts -> it answers)':<58}{fmt(docker_deploy)}")
    print(f"  {'ratio kiln / docker (target <= 0.8x)':<58}{k / d:.2f}x")
    print(f"  {'(kiln release publish itself, not counted above)':<58}{fmt(publish_times)}")
    if args.same_traffic:
        print("  (the old version got a request every 5 ms during each deploy, on both sides)")
    wait = "no poll wait: SIGHUP after the publish" if args.nudge else f"up to {args.poll:g} s of poll wait"
    print(f"  (kiln includes {wait}, signature and policy checks;")
    print("   docker checks no signature)")
    print("\nverification of the release already running (in-process, nothing to do; target < 0.2 s)")
    for name, values in verify.items():
        print(f"  {name:<58}{fmt(values)}")
    print("\nrollback to the previous release, cached (targets: 0.5 s until it answers, 0.05 s")
    print("inside keep_previous)")
    for name, values in rollback.items():
        print(f"  {name:<66}{fmt(values)}")
    ratio = statistics.median(
        rollback["docker run of the cached image: until it answers"]
    ) / statistics.median(rollback["kiln agent rollback: until the address answers"])
    print(f"  {'ratio docker run / kiln agent rollback (until it answers)':<66}{ratio:.2f}x")
    print("\na release of 2 services x 2 instances from an empty store (target 3 s)")
    print(f"  {'published -> both addresses answer':<58}{fmt(fleet)}")
    print(f"\nleft running: {', '.join(leftovers) if leftovers else 'nothing'}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    raise SystemExit(main())
