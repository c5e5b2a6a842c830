"""What keeps pushes and pulls fast, checked without timing anything.

- Requests reuse their connection: a whole push, a no-change republish and the pulls after them
  travel over one TCP connection per worker (a counting forwarder sits in front of the registry).
- A plain-http session never builds a TLS context, so it works without a CA bundle; an https one
  without a usable CA bundle fails with a kiln error, not a traceback.
- Upload bodies stream from the file in ``IO_BLOCK`` pieces: never the whole blob in memory, never
  a flood of small writes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from manifests.canonical import canonical_json
from manifests.digest import Digest, sha256_file
from manifests.mediatypes import MediaType
from publisher.client import BlobAction, BlobSource, RegistryClient
from publisher.errors import PublishError
from publisher.transfer import IO_BLOCK
from tests.publisher.conftest import FAST_RETRY, Target
from tests.publisher.fake import FakeRegistry

MakeBlob = Callable[..., Path]
MIB = 1024 * 1024


class CountingForwarder:
    """A TCP forwarder on a free loopback port that counts the connections opened through it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CountingForwarder:
        self._start(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream)
            self._start(self._pump, upstream, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def forwarder(plain_registry: Target) -> Iterator[CountingForwarder]:
    with CountingForwarder(plain_registry.registry.host) as fwd:
        yield fwd


def _source(path: Path) -> BlobSource:
    digest, size = sha256_file(path)
    return BlobSource(digest=digest, size=size, path=path)


def _manifest(config: BlobSource, layers: list[BlobSource]) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {"mediaType": MediaType.OCI_CONFIG, "digest": str(config.digest), "size": config.size},
            "layers": [
                {"mediaType": MediaType.OCI_LAYER_GZIP, "digest": str(b.digest), "size": b.size}
                for b in layers
            ],
        }
    )


# ------------------------------------------------------------------------------ connection reuse


@pytest.mark.integration
def test_push_republish_and_pulls_share_one_connection(
    forwarder: CountingForwarder, make_blob: MakeBlob, tmp_path: Path
) -> None:
    config = _source(make_blob(300, 1))
    # One layer above the monolithic threshold, so PATCH answers are released for reuse too.
    layers = [_source(make_blob(size, 2 + i)) for i, size in enumerate((40_000, 150_000, 7, 90_000))]
    manifest = _manifest(config, layers)
    blobs = [config, *layers]
    with RegistryClient(
        forwarder.host,
        insecure=True,
        jobs=1,
        retry=FAST_RETRY,
        chunk_size=64 * 1024,
        monolithic_threshold=100_000,
    ) as client:
        assert client.ping() == "registry/2.0"
        digest = client.push_image("reuse/app", blobs, manifest, MediaType.OCI_MANIFEST, tags=["1.0.0"])
        results = client.push_blobs("reuse/app", blobs)  # the no-change republish: HEADs only
        assert {r.action for r in results} == {BlobAction.EXISTED}
        client.push_image("reuse/app", blobs, manifest, MediaType.OCI_MANIFEST, tags=["1.0.0"])
        assert client.head_manifest("reuse/app", "1.0.0") is not None
        assert client.head_manifest("reuse/app", "missing") is None  # a 404 answer, released
        assert client.get_manifest("reuse/app", digest).data == manifest
        for n, b in enumerate(blobs):
            assert client.pull_blob("reuse/app", b.digest, tmp_path / f"pulled-{n}") == b.size
        assert client.list_tags("reuse/app") == ("1.0.0",)
    assert forwarder.connections == 1


@pytest.mark.integration
def test_parallel_push_opens_no_more_connections_than_jobs(
    forwarder: CountingForwarder, make_blob: MakeBlob
) -> None:
    blobs = [_source(make_blob(20_000 + i, 10 + i)) for i in range(9)]
    manifest = _manifest(blobs[0], blobs[1:])
    with RegistryClient(forwarder.host, insecure=True, jobs=3, retry=FAST_RETRY) as client:
        for repo in ("par/one", "par/two", "par/one"):
            client.push_image(repo, blobs, manifest, MediaType.OCI_MANIFEST, tags=["v1"])
    assert 1 <= forwarder.connections <= 3


# ---------------------------------------------------------------------------------------- TLS


@pytest.mark.integration
def test_plain_http_needs_no_ca_bundle(
    plain_registry: Target, make_blob: MakeBlob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    src = _source(make_blob(5000, 3))
    with plain_registry.client() as client:
        assert client.push_source("notls/app", src).action is BlobAction.UPLOADED
        assert client.pull_blob("notls/app", src.digest, tmp_path / "out") == src.size


def test_https_without_a_ca_bundle_is_a_kiln_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    slept: list[float] = []
    client = RegistryClient("registry.invalid:5000", retry=FAST_RETRY, sleep=slept.append)
    with client, pytest.raises(PublishError) as err:
        client.ping()
    assert err.value.message == "cannot load the CA certificates for TLS: [Errno 2] No such file or directory"
    assert err.value.hint == "check SSL_CERT_FILE and SSL_CERT_DIR, or install ca-certificates"
    assert slept == []  # not mistaken for a flaky network


# ------------------------------------------------------------------------------ body streaming


class _Recording(httpx.BaseTransport):
    """Notes how each upload body arrives (its pieces' sizes), then lets ``fake`` answer. Not a
    MockTransport: that one reads the whole body before its handler sees it."""

    def __init__(self, fake: FakeRegistry) -> None:
        self.fake = fake
        self.pieces: list[list[int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in ("PUT", "PATCH") or "/blobs/uploads/" not in request.url.path:
            return self.fake.handle(request)
        sizes: list[int] = []
        data = bytearray()
        for piece in request.stream:  # type: ignore[union-attr]
            if piece:
                sizes.append(len(piece))
            data += piece
        self.pieces.append(sizes)
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=bytes(data))
        return self.fake.handle(copy)


@pytest.mark.parametrize(
    ("size", "chunk_size", "threshold", "expected"),
    [
        # monolithic: one PUT, its body in whole blocks and the rest
        (2 * MIB + 5, 4 * MIB, 4 * MIB, [[MIB, MIB, 5]]),
        # chunked: each PATCH streams its own range in blocks; the closing PUT has no body
        (3 * MIB + MIB // 2, 3 * MIB // 2, 0, [[MIB, MIB // 2], [MIB, MIB // 2], [MIB // 2], []]),
    ],
)
def test_upload_bodies_stream_in_io_blocks(
    tmp_path: Path, size: int, chunk_size: int, threshold: int, expected: list[list[int]]
) -> None:
    assert IO_BLOCK == MIB
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    path = tmp_path / "blob"
    path.write_bytes(data)
    src = BlobSource(digest=Digest.of(data), size=size, path=path)
    fake = FakeRegistry()
    recording = _Recording(fake)
    client = RegistryClient(
        "127.0.0.1:5000",
        client=httpx.Client(transport=recording),
        insecure=True,
        chunk_size=chunk_size,
        monolithic_threshold=threshold,
    )
    assert client.push_source("r/app", src).action is BlobAction.UPLOADED
    assert recording.pieces == expected
    assert fake.blobs[str(src.digest)] == data
