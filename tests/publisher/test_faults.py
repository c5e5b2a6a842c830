"""Faults against a real registry: a crash mid-push, a proxy that cuts, fails, throttles and stalls,
and a registry that lies about digests or truncates blobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from manifests.digest import Digest, sha256_file
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from publisher.client import BlobAction, BlobSource, RegistryClient
from publisher.errors import RegistryUnavailable
from publisher.retry import RetryPolicy
from publisher.session import Timeouts
from tests.publisher.conftest import Target
from tests.publisher.proxy import FaultProxy
from tests.publisher.test_registry import _image, _source

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
MakeBlob = Callable[..., Path]


class _Tripwire:
    """A file wrapper that calls ``action`` once, when reading passes ``at`` bytes."""

    def __init__(self, path: Path, at: int, action: Callable[[], None], fired: list[bool]) -> None:
        self._fh = path.open("rb")
        self._at = at
        self._action = action
        self._fired = fired

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def read(self, n: int = -1) -> bytes:
        if not self._fired[0] and self._fh.tell() >= self._at:
            self._fired[0] = True
            self._action()
        return self._fh.read(n)

    def __enter__(self) -> _Tripwire:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


@pytest.fixture
def proxy(plain_registry: Target) -> Iterator[FaultProxy]:
    with FaultProxy(plain_registry.registry.port) as p:
        yield p


def _client(host: str, **kw: object) -> RegistryClient:
    kw.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=3.0))
    return RegistryClient(host, insecure=True, **kw)  # type: ignore[arg-type]


def test_registry_killed_mid_push_then_restarted(
    plain_registry: Target, make_blob: MakeBlob, tmp_path: Path
) -> None:
    reg = plain_registry.registry
    big = _source(make_blob(8 * MIB, 40))
    config = _source(make_blob(200, 41))
    fired = [False]

    def opener() -> BinaryIO:
        return _Tripwire(big.path, 3 * MIB, reg.kill, fired)  # type: ignore[arg-type, return-value]

    tripped = BlobSource(digest=big.digest, size=big.size, opener=opener)
    with _client(reg.host, chunk_size=MIB, monolithic_threshold=MIB) as client:
        with pytest.raises(RegistryUnavailable) as err:
            client.push_source("crash/app", tripped)
        assert fired[0]
        assert "gave up" in err.value.message or "failed" in err.value.message
    assert reg.blob_digests() == set()
    reg.start()
    manifest = _image(config, [big])
    with _client(reg.host, chunk_size=MIB, monolithic_threshold=MIB) as client:
        digest = client.push_image("crash/app", [config, big], manifest, MediaType.OCI_MANIFEST, tags=["v1"])
        out = tmp_path / "out"
        client.pull_blob("crash/app", big.digest, out)
    assert sha256_file(out) == (big.digest, big.size)
    assert reg.blob_digests() == {big.digest, config.digest, digest}
    assert reg.layer_links("crash/app") == {big.digest, config.digest}


def test_push_resumes_across_a_registry_restart(plain_registry: Target, make_blob: MakeBlob) -> None:
    """Killed mid-upload and back during the backoff: the upload resumes from the registry's Range."""
    reg = plain_registry.registry
    big = _source(make_blob(6 * MIB, 42))
    fired = [False]
    restarted: list[float] = []

    def sleep(seconds: float) -> None:
        if fired[0] and not restarted:
            reg.start()
            restarted.append(seconds)

    def opener() -> BinaryIO:
        return _Tripwire(big.path, 3 * MIB, reg.kill, fired)  # type: ignore[arg-type, return-value]

    src = BlobSource(digest=big.digest, size=big.size, opener=opener)
    with _client(reg.host, chunk_size=MIB, monolithic_threshold=MIB, sleep=sleep) as client:
        result = client.push_source("resume/app", src)
        assert result.action is BlobAction.UPLOADED
        assert result.resumes >= 1
        assert result.restarts == 0
        assert client.blob_exists("resume/app", big.digest) == big.size
    assert reg.blob_digests() == {big.digest}


def test_chunk_cut_mid_body_starts_the_upload_again(
    proxy: FaultProxy, plain_registry: Target, make_blob: MakeBlob
) -> None:
    """2.8.2 keeps the partial chunk but its upload state no longer matches, so it refuses the status
    request (BLOB_UPLOAD_INVALID); the client asks, then starts a fresh upload."""
    big = _source(make_blob(4 * MIB + 5, 43))
    proxy.add(method="PATCH", drop_request=300_000, times=2)
    start = time.monotonic()
    with _client(proxy.host, chunk_size=MIB, monolithic_threshold=MIB) as client:
        result = client.push_source("drop/app", big)
        assert client.blob_exists("drop/app", big.digest) == big.size
    assert time.monotonic() - start < 20
    assert (result.action, result.resumes, result.restarts) == (BlobAction.UPLOADED, 0, 2)
    assert [f.fault for f in proxy.faults()] == ["drop_request", "drop_request"]
    status_checks = [s for s in proxy.seen if s.method == "GET" and "/blobs/uploads/" in s.target]
    assert len(status_checks) == 2
    assert plain_registry.registry.blob_digests() == {big.digest}


def test_dropped_monolithic_put_starts_again(
    proxy: FaultProxy, plain_registry: Target, make_blob: MakeBlob
) -> None:
    blob = _source(make_blob(500_000, 44))
    proxy.add(method="PUT", path="/blobs/uploads/", drop_request=100_000)
    with _client(proxy.host) as client:
        result = client.push_source("drop/mono", blob)
    assert (result.action, result.restarts) == (BlobAction.UPLOADED, 1)
    assert plain_registry.registry.blob_digests() == {blob.digest}


def test_500_and_429_are_retried_honouring_retry_after(proxy: FaultProxy, make_blob: MakeBlob) -> None:
    blob = _source(make_blob(10_000, 45))
    proxy.add(method="HEAD", status=500, body=b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}')
    proxy.add(method="POST", status=429, headers={"Retry-After": "1"})
    proxy.add(method="PUT", status=503, headers={"Retry-After": "1"})
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    start = time.monotonic()
    with _client(proxy.host, sleep=sleep) as client:
        result = client.push_source("throttle/app", blob)
    elapsed = time.monotonic() - start
    assert result.action is BlobAction.UPLOADED
    assert slept.count(1.0) == 2  # both Retry-After values were honoured
    assert 2.0 <= elapsed < 10
    assert [f.fault for f in proxy.faults()] == ["status", "status", "status"]


def test_persistent_500_gives_up_with_the_registry_message(proxy: FaultProxy) -> None:
    proxy.add(
        method="GET",
        path="/manifests/",
        status=500,
        times=100,
        body=b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}',
    )
    with _client(proxy.host) as client, pytest.raises(RegistryUnavailable) as err:
        client.get_manifest("fail/app", "v1")
    assert "disk on fire" in err.value.message
    assert "gave up after 4 attempts" in err.value.message
    assert len(proxy.faults()) == 4


def test_stall_once_is_retried(proxy: FaultProxy, make_blob: MakeBlob) -> None:
    blob = _source(make_blob(1000, 46))
    proxy.add(method="HEAD", stall=5.0)
    start = time.monotonic()
    with _client(proxy.host, timeouts=Timeouts(connect=2, read=0.5, write=2, pool=2)) as client:
        assert client.push_source("stall/app", blob).action is BlobAction.UPLOADED
    assert time.monotonic() - start < 4


def test_stall_past_the_timeout_fails_cleanly(proxy: FaultProxy) -> None:
    proxy.add(stall=10.0, times=100)
    start = time.monotonic()
    with (
        _client(
            proxy.host,
            timeouts=Timeouts(connect=2, read=0.4, write=2, pool=2),
            retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02),
        ) as client,
        pytest.raises(RegistryUnavailable) as err,
    ):
        client.ping()
    elapsed = time.monotonic() - start
    assert 1.2 <= elapsed < 4
    assert "ReadTimeout" in err.value.message
    assert "gave up after 3 attempts" in err.value.message


def test_dropped_download_resumes_with_range(proxy: FaultProxy, make_blob: MakeBlob, tmp_path: Path) -> None:
    blob = _source(make_blob(3 * MIB, 47))
    with _client(proxy.host) as client:
        client.push_source("pull/app", blob)
        proxy.add(method="GET", path="/blobs/sha256:", drop_response=MIB)
        out = tmp_path / "blob"
        assert client.pull_blob("pull/app", blob.digest, out) == blob.size
    assert sha256_file(out) == (blob.digest, blob.size)
    gets = [s for s in proxy.seen if s.method == "GET" and "/blobs/sha256:" in s.target]
    assert len(gets) == 2


def test_wrong_docker_content_digest_on_pull_is_refused(
    proxy: FaultProxy, make_blob: MakeBlob, tmp_path: Path
) -> None:
    blob = _source(make_blob(50_000, 48))
    liar = str(Digest.of(b"something else"))
    with _client(proxy.host) as client:
        client.push_source("lie/app", blob)
        proxy.add(method="GET", path="/blobs/sha256:", rewrite=("Docker-Content-Digest", liar))
        with pytest.raises(VerificationError) as err:
            client.pull_blob("lie/app", blob.digest, tmp_path / "out")
    assert err.value.reason == "digest"
    assert liar in err.value.message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))] == []


def test_truncated_blob_on_pull_is_refused(proxy: FaultProxy, make_blob: MakeBlob, tmp_path: Path) -> None:
    blob = _source(make_blob(50_000, 49))
    dest = tmp_path / "pulled"
    dest.write_bytes(b"previous verified content")
    with _client(proxy.host) as client:
        client.push_source("short/app", blob)
        proxy.add(method="GET", path="/blobs/sha256:", truncate_to=blob.size - 100, times=100)
        with pytest.raises(VerificationError) as err:
            client.pull_blob("short/app", blob.digest, dest)
    assert err.value.reason == "digest"
    assert dest.read_bytes() == b"previous verified content"
    assert sorted(p.name for p in tmp_path.iterdir() if "pulled" in p.name) == ["pulled"]


def test_wrong_digest_on_manifest_by_tag_is_refused(proxy: FaultProxy, make_blob: MakeBlob) -> None:
    config = _source(make_blob(100, 50))
    manifest = _image(config, [])
    with _client(proxy.host) as client:
        client.push_image("lie/man", [config], manifest, MediaType.OCI_MANIFEST, tags=["v1"])
        proxy.add(method="GET", path="/manifests/v1", rewrite=("Docker-Content-Digest", str(Digest.of(b"x"))))
        with pytest.raises(VerificationError) as err:
            client.get_manifest("lie/man", "v1")
    assert err.value.reason == "digest"
