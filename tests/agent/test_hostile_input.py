"""The hostile-input table (issue 8, acceptance 3): bytes shaped to stop the agent.

Each test starts from the attack table's serving agent (v42 of ``localhost/web``: fake runtime,
real signatures, real release artifacts, real store, unpacker and forwarder), feeds it one hostile
input and checks that

- one reconcile returns a result (no exception escapes) refusing the input with its reason,
- v42 still serves (the service address answers),
- and a restarted agent on the same state directory starts cleanly and refuses the same input
  again, still serving.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

from agent.reconcile import Agent
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.limits import AgentLimits
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from tests.agent.agentkit import (
    NOW,
    R1,
    R2,
    Published,
    http_get,
    loopback_connector,
    sign_payload,
)
from tests.agent.imagekit import image_config
from tests.agent.test_attacks import Serving
from tests.agent.test_attacks import serving as _serving

serving = _serving  # the attack table's serving agent, as a fixture of this module too

# -- helpers ------------------------------------------------------------------------------------------


def restart(s: Serving) -> Agent:
    """Stop the agent (its instances keep running) and start a new one on the same state."""
    config = s.agent.config
    s.agent.close()
    s.agent = Agent(
        config,
        runtime=s.runtime,
        connector=loopback_connector,
        wall=lambda: NOW,
        health_deadline=5.0,
        drain_timeout=1.0,
        stop_grace=0.1,
    )
    s.agent.start()
    return s.agent


def refused_then_restart_clean(s: Serving, reason: str) -> None:
    """Refused with ``reason``, still serving; after a restart the same again."""
    s.refused(reason)
    restart(s)
    s.refused(reason)
    roots = s.ws.state / "roots"
    leftovers = [p.name for p in roots.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".trash-")]
    assert leftovers == []


def with_limits(s: Serving, **kw: Any) -> None:
    s.agent.config = replace(s.ws.config(), limits=AgentLimits(**kw))


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


# -- release envelopes and payloads -------------------------------------------------------------------

SIGNED_PAYLOADS = {
    "a list": b"[]",
    "a string": b'"release"',
    "100,000-deep JSON": deep(100_000),
    "100,000-deep JSON inside an object": b'{"services":' + deep(100_000) + b"}",
    "a 5,000-digit integer": b'{"version":' + b"9" * 5000 + b"}",
    "a float overflow": b'{"version":1e400}',
    "NaN": b'{"version":NaN}',
}


@pytest.mark.parametrize("payload", SIGNED_PAYLOADS.values(), ids=SIGNED_PAYLOADS.keys())
def test_hostile_release_payload_signed_by_the_release_keys(serving: Serving, payload: bytes) -> None:
    """Even correctly signed, a payload that is not a bounded JSON object is a ``parse`` refusal."""
    serving.ws.publish_raw(sign_payload(payload, R1, R2))
    refused_then_restart_clean(serving, "parse")
    detail = serving.agent.journal.state.last_refusal.detail  # type: ignore[union-attr]
    assert detail.startswith("release payload")


ENVELOPES = {
    "a list": b"[]",
    "a string": b'"envelope"',
    "100,000-deep JSON": deep(100_000),
    "a 5,000-digit integer": b'{"payload":' + b"1" * 5000 + b"}",
    "a float overflow": b'{"payload":"e30=","payloadType":"x","signatures":[],"n":-1e400}',
}


@pytest.mark.parametrize("envelope", ENVELOPES.values(), ids=ENVELOPES.keys())
def test_hostile_release_envelope(serving: Serving, envelope: bytes) -> None:
    serving.ws.publish_raw(envelope)
    refused_then_restart_clean(serving, "parse")


def test_hostile_trust_root_update_is_refused_and_the_agent_keeps_its_root(serving: Serving) -> None:
    from manifests.errors import VerificationError

    before = serving.agent.root.version
    for junk in (deep(100_000), b"[]", b'{"payload":' + b"1" * 5000 + b"}"):
        with pytest.raises(VerificationError) as err:
            serving.agent.trust_update(junk)
        assert err.value.reason == "parse"
    assert serving.agent.root.version == before
    assert serving.agent.reconcile_once().outcome == "current"
    assert http_get("127.0.0.1", serving.port)[0] == 200


# -- a registry as the release source: hostile token answers, a trickling peer --------------------------


class _Registry(http.server.ThreadingHTTPServer):
    """A loopback "registry" that asks for a Bearer token and serves ``token_body`` as the answer,
    or (``trickle``) sends one byte every ``interval`` seconds."""

    daemon_threads = True

    def __init__(self, token_body: bytes = b"", *, trickle: bool = False, interval: float = 2.0) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.token_body = token_body
        self.trickle = trickle
        self.interval = interval
        self.stop = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _RegistryHandler(http.server.BaseHTTPRequestHandler):
    server: _Registry
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        srv = self.server
        if srv.trickle:
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
            )
            for _ in range(64):
                if srv.stop.wait(srv.interval):
                    return
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
            return
        if self.path.startswith("/token"):
            self._send(200, srv.token_body, "application/json")
            return
        realm = f"http://{srv.host}/token"
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _running(registry: _Registry) -> Callable[[], None]:
    thread = threading.Thread(target=registry.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        registry.stop.set()
        registry.shutdown()
        registry.server_close()
        thread.join(10)

    return stop


@pytest.fixture
def registry_source(serving: Serving) -> Iterator[Callable[[_Registry], None]]:
    """Point the serving agent's release source at a loopback registry."""
    stops: list[Callable[[], None]] = []

    def use(registry: _Registry) -> None:
        stops.append(_running(registry))
        serving.agent.config = replace(
            serving.agent.config, source=f"{registry.host}/releases", insecure=True
        )

    yield use
    for stop in stops:
        stop()


TOKEN_ANSWERS = {
    "not JSON": b"<html>login</html>",
    "a list": b'["token"]',
    "a string": b'"token"',
    "deep": b'{"token":' + deep(100_000) + b"}",
    "huge": b'{"token":"' + b"t" * (2 << 20) + b'"}',
    "a 5,000-digit expires_in": b'{"token":"t","expires_in":' + b"9" * 5000 + b"}",
    "expires_in overflows": b'{"token":"t","expires_in":1e400}',
    "token not a string": b'{"token":["t"]}',
    "no token": b'{"expires_in":60}',
    "token with a newline": b'{"token":"a\\r\\nX-Evil: 1"}',
    "token too long for a header": b'{"token":"' + b"t" * (100 << 10) + b'"}',
}


@pytest.mark.parametrize("answer", TOKEN_ANSWERS.values(), ids=TOKEN_ANSWERS.keys())
def test_hostile_token_answer(
    serving: Serving, registry_source: Callable[[_Registry], None], answer: bytes
) -> None:
    registry_source(_Registry(answer))
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.reason) == ("refused", "parse"), result
    assert "token" in result.detail
    serving.still_serving("parse")
    restart(serving)
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.reason) == ("refused", "parse"), result
    serving.still_serving("parse")


def test_huge_expires_in_is_clamped_not_trusted() -> None:
    from publisher.auth import MAX_TOKEN_LIFETIME, parse_token_response

    for body in (b'{"token":"t","expires_in":1e300}', b'{"token":"t","expires_in":' + b"9" * 60 + b"}"):
        assert parse_token_response(body, now=1000.0).expires_at == 1000.0 + MAX_TOKEN_LIFETIME


def test_registry_sending_one_byte_every_two_seconds(
    serving: Serving, registry_source: Callable[[_Registry], None]
) -> None:
    """The per-read timeout never fires (a byte comes every 2 s); the request deadline does."""
    registry_source(_Registry(trickle=True, interval=2.0))
    serving.agent.config = replace(
        serving.agent.config, limits=AgentLimits(request_deadline=3.0, read_timeout=30.0)
    )
    started = time.monotonic()
    result = serving.agent.reconcile_once()
    elapsed = time.monotonic() - started
    assert result.outcome == "unavailable", result
    assert "3s request deadline" in result.detail
    assert elapsed < 120  # five attempts of 3 s each plus backoff, not 64 bytes x 2 s per attempt
    assert http_get("127.0.0.1", serving.port)[0] == 200
    assert serving.agent.journal.state.good.version == 42  # type: ignore[union-attr]
    config = serving.agent.config
    restart(serving)
    serving.agent.config = config
    assert serving.agent.reconcile_once().outcome == "unavailable"
    assert http_get("127.0.0.1", serving.port)[0] == 200


# -- hostile layers -------------------------------------------------------------------------------------


class _Sink:
    """Hashes the uncompressed tar (its diff_id) while compressing it with zstd into memory."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.out = io.BytesIO()
        self._z = zstandard.ZstdCompressor(level=3).stream_writer(self.out, closefd=False)

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self._z.write(data)
        return len(data)

    def finish(self) -> tuple[bytes, Digest]:
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()
        return self.out.getvalue(), Digest(self.h.hexdigest())


def _zstd_image(s: Serving, name: str, write_tar: Callable[[_Sink], None]) -> Published:
    """A signed image of one zstd layer streamed by ``write_tar`` (never held uncompressed)."""
    sink = _Sink()
    write_tar(sink)
    blob, diff_id = sink.finish()
    root = s.tmp / f"src-{name}"
    layout = OCILayout.create(root)
    layer = Descriptor(media_type=MediaType.OCI_LAYER_ZSTD, digest=layout.write_blob(blob), size=len(blob))
    cfg = canonical_json(image_config([diff_id], labels={"dev.kiln.ports": '["8080/tcp"]'}))
    man = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=layout.write_blob(cfg), size=len(cfg)),
        layers=(layer,),
    )
    raw = man.to_bytes()
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(raw), size=len(raw))
    layout.tag(desc, "1.0.0")
    published = s.ws.add_image(f"localhost/{name}", root, desc)
    s.agent.config = replace(s.agent.config, images=tuple(s.ws.images))
    return published


def _dirs(tar: tarfile.TarFile, depth: int, part: str = "d") -> str:
    path = ""
    for _ in range(depth):
        path = f"{path}/{part}" if path else part
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    return path


def _stream_tar(sink: _Sink) -> tarfile.TarFile:
    return tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]


def _publish_release(s: Serving, image: Published) -> None:
    s.ws.publish(s.release(43, image=image.pin))


def test_layer_1500_directories_deep(serving: Serving) -> None:
    def write(sink: _Sink) -> None:
        with _stream_tar(sink) as tar:
            _dirs(tar, 1500)

    _publish_release(serving, _zstd_image(serving, "deep1500", write))
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.reason) == ("refused", "unpack"), result
    assert "directories deep, more than 256" in result.detail
    serving.still_serving("unpack")
    refused_then_restart_clean(serving, "unpack")


def test_hostile_leftovers_never_block_a_restart(serving: Serving) -> None:
    """A 1,500-deep interrupted unpack and a 0000-mode tree (from a crash or an older kiln) are
    removed at start without recursion; the agent then serves as before."""
    roots = serving.ws.state / "roots"
    for name, depth in (("a" * 64 + ".tmp", 1500), (".trash-" + "b" * 64 + "-0000", 300)):
        fd = os.open(roots, os.O_RDONLY)
        os.mkdir(name, dir_fd=fd)
        top = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = top
        for _ in range(depth):
            os.mkdir("x", dir_fd=fd)
            sub = os.open("x", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.symlink("/etc", "etc", dir_fd=fd)
        os.close(fd)
    os.chmod(roots / ("a" * 64 + ".tmp"), 0)
    restart(serving)
    assert [p.name for p in roots.iterdir() if p.name.startswith(("a" * 64, ".trash-"))] == []
    assert Path("/etc/passwd").exists()  # nothing followed the links
    assert serving.agent.reconcile_once().outcome == "current"
    assert http_get("127.0.0.1", serving.port)[0] == 200


def test_100000_entries_at_depth_500_exhaust_the_work_budget(serving: Serving) -> None:
    """Inside the entry cap (1,000,000) and, here, the depth cap; the work budget (entries x depth)
    refuses it after a few hundred entries instead of opening 50 million directories."""

    def write(sink: _Sink) -> None:
        with _stream_tar(sink) as tar:
            where = _dirs(tar, 500, part="x")
            empty = io.BytesIO(b"")
            for i in range(100_000):
                info = tarfile.TarInfo(f"{where}/f{i}")
                info.mode = 0o644
                tar.addfile(info, empty)

    image = _zstd_image(serving, "wide500", write)
    with_limits(serving, unpack_path_depth=1000, unpack_work=300_000)
    _publish_release(serving, image)
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.reason) == ("refused", "unpack"), result
    assert "unpack work budget (300000 path components" in result.detail
    serving.still_serving("unpack")
    config = serving.agent.config
    restart(serving)
    serving.agent.config = config
    serving.refused("unpack")


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_compression_bomb_past_the_free_space_margin(serving: Serving) -> None:
    """~100 KiB of zstd expanding to 2 GiB of files; the state filesystem may only lose 96 MiB
    more (a margin set from its free space), so the unpack stops at the second file."""
    mib = 1 << 20
    chunk = bytes(mib)

    def write(sink: _Sink) -> None:
        for i in range(32):
            info = tarfile.TarInfo(f"bomb{i:02}")
            info.size, info.mode = 64 * mib, 0o644
            sink.write(info.tobuf(tarfile.PAX_FORMAT))
            for _ in range(64):
                sink.write(chunk)
        sink.write(bytes(1024))

    image = _zstd_image(serving, "bomb", write)
    blob = Path(image.location[4:]) / "blobs" / "sha256"
    assert max(p.stat().st_size for p in blob.iterdir()) < 1 * mib
    margin = _free_bytes(serving.ws.state) - 96 * mib
    with_limits(serving, free_space_margin=margin)
    _publish_release(serving, image)
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.reason) == ("refused", "unpack"), result
    assert "free-space margin" in result.detail
    serving.still_serving("unpack")
    roots = serving.ws.state / "roots"
    assert not [p for p in roots.iterdir() if p.name.endswith(".tmp")]
    config = serving.agent.config
    restart(serving)
    serving.agent.config = replace(
        config, limits=AgentLimits(free_space_margin=_free_bytes(roots) - 96 * mib)
    )
    serving.refused("unpack")
