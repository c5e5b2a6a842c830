"""The client against httpx.MockTransport: faults and protocol corners a real 2.8.2 will not produce."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex
from publisher.auth import Credentials
from publisher.client import BlobAction, BlobSource, RegistryClient
from publisher.errors import AuthError, ErrorCode, PublishError, RegistryError, RegistryUnavailable
from publisher.retry import RetryPolicy
from tests.publisher.fake import FakeRegistry

RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.02, max_retry_after=30.0)


def _client(
    fake: FakeRegistry | None = None, *, handler=None, **kw: object
) -> tuple[RegistryClient, list[float]]:  # type: ignore[no-untyped-def]
    slept: list[float] = []
    transport = httpx.MockTransport(handler) if handler is not None else fake.transport()  # type: ignore[union-attr]
    kw.setdefault("retry", RETRY)
    client = RegistryClient(
        "127.0.0.1:5000",
        client=httpx.Client(transport=transport),
        insecure=True,
        sleep=slept.append,
        **kw,  # type: ignore[arg-type]
    )
    return client, slept


def _blob(tmp_path: Path, data: bytes, name: str = "b") -> BlobSource:
    path = tmp_path / name
    path.write_bytes(data)
    return BlobSource(digest=Digest.of(data), size=len(data), path=path)


# ----------------------------------------------------------------------------------------- uploads


def test_chunk_cut_mid_body_resumes_from_the_registry_range(tmp_path: Path) -> None:
    fake = FakeRegistry(cut_patch_after=[100_000, 5])
    data = bytes(range(256)) * 5000  # 1.28 MB
    src = _blob(tmp_path, data)
    client, slept = _client(fake, chunk_size=300_000, monolithic_threshold=1000)
    result = client.push_source("r/app", src)
    assert (result.action, result.resumes, result.restarts) == (BlobAction.UPLOADED, 2, 0)
    assert fake.blobs[str(src.digest)] == data
    assert [m for m, p in fake.log if "/uploads/" in p].count("GET") == 2
    assert len(slept) == 2


def test_upload_status_unknown_starts_a_fresh_upload(tmp_path: Path) -> None:
    fake = FakeRegistry(cut_patch_after=[10])
    src = _blob(tmp_path, b"x" * 5000)

    def forget(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and "/uploads/" in request.url.path:
            fake.uploads.clear()
        return None

    fake.fault = forget
    client, _ = _client(fake, chunk_size=2000, monolithic_threshold=1000)
    result = client.push_source("r/app", src)
    assert (result.resumes, result.restarts) == (0, 1)
    assert str(src.digest) in fake.blobs


def test_existing_blob_is_skipped_and_mount_is_used(tmp_path: Path) -> None:
    fake = FakeRegistry()
    src = _blob(tmp_path, b"layer")
    fake.blobs[str(src.digest)] = b"layer"
    client, _ = _client(fake)
    assert client.push_source("r/app", src).action is BlobAction.EXISTED
    fake.log.clear()
    fake.blobs.clear()
    fake.blobs[str(src.digest)] = b"layer"
    fake.fault = lambda r: httpx.Response(404) if r.method == "HEAD" else None
    mounted = client.push_blob("r/other", src.digest, src.size, src.path, mount_from="r/app")  # type: ignore[arg-type]
    assert mounted.action is BlobAction.MOUNTED
    assert ("POST", "/v2/r/other/blobs/uploads/") in fake.log


def test_wrong_digest_from_the_registry_after_upload_is_refused(tmp_path: Path) -> None:
    fake = FakeRegistry()
    src = _blob(tmp_path, b"content")
    liar = str(Digest.of(b"other"))

    def lie(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT":
            request.read()
            return httpx.Response(201, headers={"Docker-Content-Digest": liar})
        return None

    fake.fault = lie
    client, _ = _client(fake)
    with pytest.raises(VerificationError) as err:
        client.push_source("r/app", src)
    assert err.value.reason == "digest"
    assert liar in err.value.message


def test_push_blobs_runs_jobs_at_once_and_the_manifest_last(tmp_path: Path) -> None:
    fake = FakeRegistry()
    inflight = [0, 0]
    lock = threading.Lock()
    order: list[str] = []

    def slow(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT":
            with lock:
                inflight[0] += 1
                inflight[1] = max(inflight[1], inflight[0])
                order.append("manifest" if "/manifests/" in request.url.path else "blob")
            time.sleep(0.05)
            with lock:
                inflight[0] -= 1
        return None

    fake.fault = slow
    blobs = [_blob(tmp_path, f"blob {i}".encode(), f"b{i}") for i in range(8)]
    manifest = json.dumps({"schemaVersion": 2, "n": 1}).encode()
    client, _ = _client(fake, jobs=3)
    digest = client.push_image("r/app", blobs, manifest, MediaType.OCI_MANIFEST, tags=["v1"])
    assert digest == Digest.of(manifest)
    assert inflight[1] == 3
    assert order[-2:] == ["manifest", "manifest"]
    assert order.count("blob") == 8


def test_push_blobs_raises_the_first_failure(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.fault = lambda r: (
        httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID", "message": "nope"}]})
        if r.method == "PUT"
        else None
    )
    client, _ = _client(fake, jobs=2)
    with pytest.raises(RegistryError) as err:
        client.push_blobs("r/app", [_blob(tmp_path, b"a", "a"), _blob(tmp_path, b"b", "b")])
    assert err.value.code == ErrorCode.DIGEST_INVALID


# ------------------------------------------------------------------------------------------ retries


def test_retry_after_is_honoured_and_capped() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "99999"}),
            httpx.Response(408),
            httpx.Response(200, json={}),
        ]
    )
    client, slept = _client(handler=lambda r: next(answers))
    client.ping()
    assert slept[:2] == [7.0, 30.0]
    assert 0 <= slept[2] <= 0.02


def test_network_errors_are_retried_then_reported() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client, slept = _client(handler=boom)
    with pytest.raises(RegistryUnavailable) as err:
        client.ping()
    assert "gave up after 4 attempts" in err.value.message
    assert "connection refused" in err.value.message
    assert len(slept) == 3
    assert isinstance(err.value, PublishError)


def test_error_bodies_are_capped() -> None:
    huge = b'{"errors":[{"code":"DENIED","message":"' + b"x" * 200_000 + b'"}]}'
    client, _ = _client(handler=lambda r: httpx.Response(403, content=huge))
    with pytest.raises(PublishError) as err:
        client.get_manifest("r/app", "v1")
    assert "cap" in err.value.message


# --------------------------------------------------------------------------------------------- pull


def test_pull_refuses_a_wrong_body_and_leaves_nothing(tmp_path: Path) -> None:
    fake = FakeRegistry()
    digest = Digest.of(b"the real content")
    fake.blobs[str(digest)] = b"other content!!!"
    client, _ = _client(fake)
    dest = tmp_path / "out"
    with pytest.raises(VerificationError) as err:
        client.pull_blob("r/app", digest, dest)
    assert err.value.reason == "digest"
    assert list(tmp_path.iterdir()) == []


def test_pull_size_cap(tmp_path: Path) -> None:
    fake = FakeRegistry()
    data = b"z" * 10_000
    fake.blobs[str(Digest.of(data))] = data
    client, _ = _client(fake)
    with pytest.raises(VerificationError) as err:
        client.pull_blob("r/app", Digest.of(data), tmp_path / "o", size_cap=9_999)
    assert err.value.reason == "size"
    with pytest.raises(VerificationError) as err:
        client.pull_blob("r/app", Digest.of(data), tmp_path / "o", expected_size=5)
    assert err.value.reason == "size"
    assert list(tmp_path.iterdir()) == []
    assert client.pull_blob("r/app", Digest.of(data), tmp_path / "o", expected_size=10_000) == 10_000


def test_pull_restarts_when_the_server_ignores_range(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    digest = Digest.of(data)
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if calls[0] == 1:

            def broken():  # type: ignore[no-untyped-def]
                yield data[:5000]
                raise httpx.ReadError("reset")

            return httpx.Response(200, content=broken(), headers={"Content-Length": str(len(data))})
        return httpx.Response(200, content=data)  # ignores Range

    client, _ = _client(handler=handler)
    assert client.pull_blob("r/app", digest, tmp_path / "o") == len(data)
    assert (tmp_path / "o").read_bytes() == data


def test_pull_follows_a_redirect_without_credentials(tmp_path: Path) -> None:
    data = b"redirected blob"
    digest = Digest.of(data)
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("authorization")))
        if request.url.host == "127.0.0.1":
            if "authorization" not in request.headers:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})
            return httpx.Response(307, headers={"Location": "http://cdn.example/blob?sig=1"})
        return httpx.Response(200, content=data)

    client, _ = _client(handler=handler, credentials=Credentials(username="u", password="p"))
    client.pull_blob("r/app", digest, tmp_path / "o")
    assert seen[-1] == ("cdn.example", None)
    assert str(seen[-2][1]).startswith("Basic ")


# ---------------------------------------------------------------------------------------- manifests


def test_manifest_round_trip_head_delete_and_tags() -> None:
    fake = FakeRegistry()
    client, _ = _client(fake)
    data = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    d = client.push_manifest("r/app", "v2", data, MediaType.OCI_INDEX)
    client.push_manifest("r/app", "v10", data, MediaType.OCI_INDEX)
    client.push_manifest("r/app", "a", data, MediaType.OCI_INDEX)
    got = client.get_manifest("r/app", d)
    assert (got.data, got.media_type, got.digest) == (data, MediaType.OCI_INDEX, d)
    assert client.head_manifest("r/app", "v2") == Descriptor(
        media_type=MediaType.OCI_INDEX, digest=d, size=len(data)
    )
    assert client.list_tags("r/app") == ("a", "v10", "v2")
    with pytest.raises(PublishError, match="by digest only"):
        client.delete_manifest("r/app", "v2")  # type: ignore[arg-type]
    client.delete_manifest("r/app", d)
    assert client.head_manifest("r/app", d) is None


def test_manifest_by_digest_must_hash_to_it() -> None:
    fake = FakeRegistry()
    client, _ = _client(fake)
    wanted = Digest.of(b"{}")
    fake.manifests[("r/app", str(wanted))] = (b'{"evil":1}', MediaType.OCI_MANIFEST)
    with pytest.raises(VerificationError) as err:
        client.get_manifest("r/app", wanted)
    assert err.value.reason == "digest"


def test_manifest_size_cap() -> None:
    fake = FakeRegistry()
    client, _ = _client(fake)
    client.push_manifest("r/app", "big", b"{" + b" " * 5000 + b"}", MediaType.OCI_MANIFEST)
    with pytest.raises(VerificationError) as err:
        client.get_manifest("r/app", "big", size_cap=1000)
    assert err.value.reason == "size"
    with pytest.raises(PublishError, match="cap"):
        client.push_manifest("r/app", "huge", b" " * (4 * 1024 * 1024 + 1), MediaType.OCI_MANIFEST)


def test_tags_follow_link_pages_and_stay_on_the_registry() -> None:
    pages = {
        "/v2/r/app/tags/list": (["z", "b"], '</v2/r/app/tags/list?last=b&n=2>; rel="next"'),
        "/v2/r/app/tags/list?last=b&n=2": (["y", "a"], '</v2/r/app/tags/list?last=a&n=2>; rel="next"'),
        "/v2/r/app/tags/list?last=a&n=2": (["c"], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.url.raw_path.decode()
        tags, link = pages[key]
        return httpx.Response(
            200, json={"name": "r/app", "tags": tags}, headers={"Link": link} if link else {}
        )

    client, _ = _client(handler=handler)
    assert client.list_tags("r/app") == ("a", "b", "c", "y", "z")

    def elsewhere(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"tags": ["a"]}, headers={"Link": '<http://evil.example/v2/x>; rel="next"'}
        )

    client, _ = _client(handler=elsewhere)
    with pytest.raises(RegistryError, match="another host"):
        client.list_tags("r/app")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"tags": "v1"}', "'tags' must be a list of strings"),
        (b'{"tags": [1]}', "'tags' must be a list of strings"),
        (b"[]", "expected a JSON object"),
        (b"not json", "not valid JSON"),
    ],
)
def test_bad_tag_lists(body: bytes, message: str) -> None:
    client, _ = _client(handler=lambda r: httpx.Response(200, content=body))
    with pytest.raises(RegistryError) as err:
        client.list_tags("r/app")
    assert message in err.value.message


# ---------------------------------------------------------------------------------------- referrers


def test_referrers_api_when_the_registry_has_it() -> None:
    subject = Digest.of(b"subject")
    art = Descriptor(
        media_type=MediaType.OCI_MANIFEST, digest=Digest.of(b"sig"), size=3, artifact_type="x/sig"
    )
    index = OCIIndex(manifests=(art,))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v2/r/app/referrers/{subject}":
            return httpx.Response(
                200, content=index.to_bytes(), headers={"Content-Type": MediaType.OCI_INDEX}
            )
        raise AssertionError(f"unexpected {request.method} {request.url}")

    client, _ = _client(handler=handler)
    assert client.referrers("r/app", subject).manifests == (art,)
    assert client.referrers("r/app", subject, artifact_type="x/other").manifests == ()
    assert client.add_referrer("r/app", subject, art) is False


# --------------------------------------------------------------------------------------------- auth


class _TokenRealm:
    """A registry that wants Bearer tokens, and the realm that issues them (both mocked)."""

    def __init__(self, lifetime: int = 300) -> None:
        self.issued: list[tuple[list[str], str | None]] = []
        self.lifetime = lifetime

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            scopes = request.url.params.get_list("scope")
            self.issued.append((scopes, request.headers.get("authorization")))
            return httpx.Response(200, json={"token": f"tok{len(self.issued)}", "expires_in": self.lifetime})
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer tok"):
            scope = 'scope="repository:r/app:pull"' if "/v2/r/" in request.url.path else ""
            challenge = f'Bearer realm="https://auth.example/token",service="reg",{scope}'
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": challenge},
                json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            )
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":  # a successful cross-repository mount
            return httpx.Response(201, headers={"Docker-Content-Digest": request.url.params["mount"]})
        return httpx.Response(200, json={})


def test_bearer_flow_caches_tokens_per_scope_until_they_expire() -> None:
    realm = _TokenRealm(lifetime=60)
    now = [1000.0]
    client, _ = _client(
        handler=realm.handler, credentials=Credentials(username="u", password="p"), clock=lambda: now[0]
    )
    client.ping()
    assert realm.issued[0][0] == []
    assert realm.issued[0][1] == "Basic " + base64.b64encode(b"u:p").decode()
    for _ in range(3):
        assert client.blob_exists("r/app", Digest.of(b"x")) is None
    assert [s for s, _ in realm.issued] == [[], ["repository:r/app:pull"]]
    now[0] += 56  # within the 5 s safety margin of expiry
    client.blob_exists("r/app", Digest.of(b"x"))
    assert len(realm.issued) == 3
    client.push_blob("r/app2", Digest.of(b"x"), 1, Path("/dev/null"), mount_from="r/app")
    assert ["repository:r/app2:pull,push", "repository:r/app:pull"] in [s for s, _ in realm.issued]


def test_refused_token_is_an_auth_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": "bad password"}]})
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t",service="s"'}
        )

    client, _ = _client(handler=handler, credentials=Credentials(username="u", password="bad"))
    with pytest.raises(AuthError) as err:
        client.ping()
    assert "bad password" in err.value.message
    assert err.value.status == 401


def test_credentials_are_not_sent_to_a_plain_http_realm_elsewhere() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            raise AssertionError("credentials must not be sent")
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example/t",service="s"'}
        )

    client, _ = _client(handler=handler, credentials=Credentials(username="u", password="p"))
    with pytest.raises(AuthError, match="plain-http token realm"):
        client.ping()


def test_insecure_for_any_registry_loudly(caplog: pytest.LogCaptureFixture) -> None:
    # As skopeo, crane and docker allow it for a LAN registry: with a warning every time.
    with caplog.at_level("WARNING", logger="kiln.publisher"):
        RegistryClient("registry.example:5000", insecure=True).close()
    assert any(
        "registry.example:5000" in r.getMessage() and "no TLS" in r.getMessage() for r in caplog.records
    )
    for host in ("127.0.0.1:5000", "localhost:5000", "[::1]:5000", "127.8.9.10"):
        RegistryClient(host, insecure=True).close()


def test_identity_token_uses_the_oauth2_refresh_grant() -> None:
    forms: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            assert request.method == "POST"
            forms.append(request.read())
            return httpx.Response(200, json={"access_token": "tok1", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer tok1":
            return httpx.Response(200, json={})
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t",service="s"'}
        )

    creds = Credentials(username="", identity_token="refresh-me")
    client, _ = _client(handler=handler, credentials=creds)
    client.ping()
    assert b"grant_type=refresh_token" in forms[0]
    assert b"refresh_token=refresh-me" in forms[0]


def test_digest_of_the_fake_is_sha256() -> None:
    assert FakeRegistry is not None
    assert hashlib.sha256(b"").hexdigest() == Digest.of(b"").hex


# -------------------------------------------------------------------------------------------- fuzz

_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_bodies = (
    st.binary(max_size=200)
    | _json_like.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda tags, mans: json.dumps({"tags": tags, "schemaVersion": 2, "manifests": mans}).encode(),
        _json_like,
        _json_like,
    )
)


@settings(max_examples=150, deadline=None)
@given(_bodies, st.sampled_from([200, 404, 500]), st.sampled_from(["", "<?n=1>; rel=next", "garbage"]))
def test_untrusted_registry_answers_fail_cleanly(body: bytes, status: int, link: str) -> None:
    """Whatever a registry answers, the client returns a value or raises one of kiln's errors."""
    from manifests.errors import KilnError

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Link": link} if link and "?n=1" not in str(request.url) else {}
        return httpx.Response(status, content=body, headers=headers)

    client, _ = _client(handler=handler, retry=RetryPolicy(attempts=1))
    subject = Digest.of(b"s")
    messages: list[str] = []
    for call in (
        lambda: client.list_tags("r/app"),
        lambda: client.referrers("r/app", subject),
        lambda: client.get_manifest("r/app", "v1"),
        lambda: client.head_manifest("r/app", "v1"),
    ):
        try:
            call()
        except KilnError as exc:
            messages.append(exc.message)
    assert all(messages)
