"""Helpers for the crash and real-component tests: an image that says which release it runs, the
agent as a separate process that a test can SIGKILL, and what a state directory holds afterwards.

:func:`echo_image` derives an image from the python-web example: one more layer replaces
``/app/server.py`` with a server whose ``/`` answers ``{"version": $VERSION, "instance":
<hostname>, "flavour": ...}``. runc sets the hostname to the instance id and a release injects
``env: {VERSION: vN}``, so one request through the service address tells which release and which
instance answered. ``flavour`` only changes the layer's bytes, hence the image digest.

:class:`AgentProcess` runs ``python -m kiln agent run --config FILE`` (the real agent: real runc,
its forwarders, its status socket). With ``freeze_after_commit=N`` the process gets
``KILN_AGENT_TEST_FREEZE_AFTER_COMMIT=N`` and stops itself right after its N-th journal commit,
so the test can kill it at exactly that point.

:func:`snapshot` reads what a state directory holds (journal, ``runc list``, the namespaces, the
bundles, the roots, the store's temporary files); :func:`crash_problems` and
:func:`converged_problems` list what a dead or a converged agent must not leave behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.compose import unmount_strays
from agent.journal import FREEZE_AFTER_COMMIT_ENV, Journal, JournalState
from agent.netns import delete_netns, list_netns
from agent.standby import standby_of
from agent.status import query
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from tests.agent.conftest import WebImage
from tests.agent.imagekit import M, compress, tar_bytes
from tests.agent.snapkit import mounts

REPO_ROOT = Path(__file__).resolve().parents[2]

ECHO_SERVER = '''\
"""python-web's server, answering which release (VERSION) and instance (hostname) it is."""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FLAVOUR = {flavour!r}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body, kind = b"ok\\n", "text/plain"
        elif self.path == "/":
            doc = {{"version": os.environ.get("VERSION"), "instance": socket.gethostname()}}
            doc["flavour"] = FLAVOUR
            body, kind = json.dumps(doc).encode(), "application/json"
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
server.daemon_threads = True
stopper = threading.Thread(target=server.shutdown)
signal.signal(signal.SIGTERM, lambda *_: stopper.start())
server.serve_forever()
server.server_close()
sys.exit(0)
'''


def echo_image(web: WebImage, dest: Path, *, flavour: str) -> Descriptor:
    """An OCI layout at ``dest`` (python-web's blobs plus one layer) holding the echo image, tagged
    ``flavour``; returns its manifest descriptor. Calling it again with another flavour adds a
    second image to the same layout."""
    if not (dest / "oci-layout").exists():
        import shutil

        shutil.copytree(web.layout, dest)
    layout = OCILayout.open(dest)
    tar = tar_bytes([M("app/server.py", data=ECHO_SERVER.format(flavour=flavour).encode(), mode=0o644)])
    blob = compress(tar, MediaType.OCI_LAYER_GZIP)
    layer = Descriptor(media_type=MediaType.OCI_LAYER_GZIP, digest=layout.write_blob(blob), size=len(blob))
    config = json.loads(json.dumps(dict(web.image.config)))
    config["rootfs"]["diff_ids"].append(str(Digest.of(tar)))
    if isinstance(config.get("history"), list):
        config["history"].append({"created_by": f"kiln test: echo server ({flavour})"})
    cfg = canonical_json(config)
    man = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=layout.write_blob(cfg), size=len(cfg)),
        layers=(*web.image.layers, layer),
    )
    raw = man.to_bytes()
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(raw), size=len(raw))
    layout.tag(desc, flavour)
    return desc


def last_layer(layout_dir: Path, desc: Descriptor) -> Digest:
    man = OCIManifest.from_bytes(OCILayout.open(layout_dir).read_blob(desc.digest))
    return man.layers[-1].digest


def ask(port: int, *, timeout: float = 3.0) -> dict[str, Any]:
    """``GET /`` through the service address: the echo server's JSON (raises on anything else)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        data = b""
        while len(data) < 65536 and (chunk := s.recv(65536)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1] != b"200":
        raise AssertionError(f"service on port {port} answered {head[:80]!r}")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise AssertionError(f"service on port {port} answered {body[:80]!r}")
    return doc


# -- the agent as a process ----------------------------------------------------------------------


class AgentProcess:
    """``kiln agent run --config FILE`` in a child process (output appended to ``log``)."""

    def __init__(
        self, config: Path, state: Path, log: Path, *, freeze_after_commit: int | None = None
    ) -> None:
        self.state = state
        env = {k: v for k, v in os.environ.items() if k != FREEZE_AFTER_COMMIT_ENV}
        env["PYTHONPATH"] = str(REPO_ROOT)
        if freeze_after_commit is not None:
            env[FREEZE_AFTER_COMMIT_ENV] = str(freeze_after_commit)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kiln", "agent", "run", "--config", str(config)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The running agent's ``/status`` document, or None if it does not answer."""
        try:
            code, body = query(self.state, "/status", timeout=timeout)
        except OSError:
            return None
        if code != 200:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    def wait_up(self, timeout: float) -> dict[str, Any]:
        """Wait until the status socket answers (recovery is done and the forwarders are bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited with {self.proc.returncode} before it was up")
            doc = self.status(timeout=1.0)
            if doc is not None:
                return doc
            time.sleep(0.02)
        raise AssertionError(f"the agent did not come up within {timeout:g}s")

    def frozen(self) -> bool:
        """True when the process stopped itself (state ``T`` in ``/proc/PID/stat``)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] in ("T", "t")

    def wait_frozen(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.frozen():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def kill(self) -> None:
        """SIGKILL the agent (only its own pid: the children it was running are orphaned)."""
        self.proc.send_signal(signal.SIGKILL)  # Popen never signals a pid it already reaped
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: the agent stops after its current step; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the agent did not stop within {timeout:g}s of SIGTERM") from None


def agent_config_yaml(
    *,
    source: str,
    trust_root: Path,
    state: Path,
    images: dict[str, str],
    poll_interval: str = "200ms",
    max_attempts: int = 100,
    insecure: bool = False,
) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "kiln.dev/v1",
        "kind": "AgentConfig",
        "source": source,
        "channel": "stable",
        "trust_root": str(trust_root),
        "state": str(state),
        "runtime": "runc",
        "poll_interval": poll_interval,
        "max_attempts": max_attempts,
        "insecure": insecure,
        "images": [{"repository": r, "location": loc} for r, loc in sorted(images.items())],
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


# -- what a state directory holds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    journal: JournalState
    runc: tuple[str, ...]  # runc --root STATE/runc list
    netns: tuple[str, ...]  # /run/netns entries of this test's service
    bundles: tuple[str, ...]  # STATE/bundles entries
    roots: tuple[str, ...]  # STATE/roots entries
    blob_tmp: tuple[str, ...]  # temporary files left in the content store
    mounts: tuple[str, ...] = ()  # mount points under STATE (composed roots), relative

    @property
    def serving(self) -> tuple[str, ...]:
        return tuple(sorted(r.id for r in self.journal.instances))

    @property
    def releases(self) -> set[int]:
        return {r.release for r in self.journal.instances}


def runc_list(state: Path, *, attempts: int = 20) -> tuple[str, ...]:
    """``runc --root STATE/runc list``. runc fails the whole listing when a container disappears
    while it reads it (a ``runc delete`` orphaned by the kill may still run), so retry."""
    argv = ["runc", "--root", str(state / "runc"), "list", "--format", "json"]
    for _ in range(attempts):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0:
            doc = json.loads(proc.stdout or "null") or []
            return tuple(sorted(str(c["id"]) for c in doc))
        time.sleep(0.05)
    raise AssertionError(f"runc list keeps failing: {proc.stderr.strip()}")


def _entries(path: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except FileNotFoundError:
        return ()


def snapshot(state: Path, service: str) -> Snapshot:
    return Snapshot(
        journal=Journal(state).state,
        runc=runc_list(state),
        netns=tuple(n for n in list_netns() if n.startswith(f"kiln-{service}-")),
        bundles=_entries(state / "bundles"),
        roots=_entries(state / "roots"),
        blob_tmp=tuple(n for n in _entries(state / "blobs" / "sha256") if n.endswith(".tmp")),
        mounts=tuple(mounts(state)),
    )


def crash_problems(snap: Snapshot) -> list[str]:
    """What must hold at ANY moment the agent is dead: nothing exists that the journal does not know,
    and the address serves one release."""
    known = set(snap.journal.known)
    problems = []
    for what, ids in (("runc container", snap.runc), ("netns", snap.netns), ("bundle", snap.bundles)):
        unknown = sorted(set(ids) - known)
        if unknown:
            problems.append(f"{what} unknown to the journal: {unknown}")
    if not set(snap.serving) <= known:
        problems.append(f"serving {snap.serving} not all in known {sorted(known)}")
    if len(snap.releases) > 1:
        problems.append(f"the serving set mixes releases {sorted(snap.releases)}")
    stray = [m for m in snap.mounts if not (m.startswith("roots/") and len(m) == len("roots/") + 64)]
    if stray:
        problems.append(f"mounts other than composed roots under the state directory: {stray}")
    return problems


def converged_problems(snap: Snapshot, *, replicas: int, keep_roots: set[str]) -> list[str]:
    """What must hold once the agent converged: one release's instances, nothing else."""
    st = snap.journal
    problems = crash_problems(snap)
    if st.rolling_out:
        problems.append(f"a rollout is still recorded: {st.rollout_from} -> {st.rollout_to}")
    if st.good is None or snap.releases != {st.good.version}:
        problems.append(f"serving releases {sorted(snap.releases)}, good is {st.good}")
    if len(snap.serving) != replicas:
        problems.append(f"{len(snap.serving)} serving instances, not {replicas}")
    for what, ids in (
        ("runc containers", snap.runc),
        ("netns", snap.netns),
        ("bundles", snap.bundles),
        ("known", st.known),
    ):
        if tuple(sorted(ids)) != snap.serving:
            problems.append(f"{what} {sorted(ids)} are not exactly the serving set {list(snap.serving)}")
    running = [*st.instances, *(s.record for s in standby_of(st))]  # standby: keep_previous
    wanted = {f"roots/{Digest.parse(r.manifest).hex}" for r in running}
    leaked = sorted(set(snap.mounts) - wanted)
    if leaked:
        problems.append(f"mounts no serving instance runs from: {leaked}")
    extra_roots = sorted(set(snap.roots) - keep_roots)
    if extra_roots:
        problems.append(f"roots beyond the good and previous releases: {extra_roots}")
    if snap.blob_tmp:
        problems.append(f"temporary files left in the content store: {list(snap.blob_tmp)}")
    return problems


def cleanup(state: Path, service: str) -> None:
    """Stop the data plane, every container in ``STATE/runc`` and this service's namespaces
    (teardown)."""
    from agent.dataplane.embedded import ProcessDataPlane
    from agent.dataplane.haproxy import HAProxyDataPlane
    from agent.runc import RuncRuntime

    for plane in (ProcessDataPlane(state), HAProxyDataPlane(state)):
        with contextlib.suppress(Exception):
            plane.stop()

    runtime = RuncRuntime(state)
    for iid in runc_list(state):
        with contextlib.suppress(Exception):
            runtime.stop(iid, grace=0.5)
    for name in list_netns():
        if name.startswith(f"kiln-{service}-"):
            with contextlib.suppress(Exception):
                delete_netns(name)
    with contextlib.suppress(Exception):
        unmount_strays(state / "roots")  # the composed roots (read-only overlays) go last
