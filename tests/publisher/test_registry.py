"""The client against a real registry (distribution 2.8.2): without auth, with Basic, with tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from manifests.canonical import canonical_json
from manifests.digest import Digest, sha256_file
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex
from publisher.auth import Credentials
from publisher.client import BlobAction, BlobSource
from publisher.errors import AuthError, ErrorCode, RegistryError
from tests.publisher.conftest import Target

pytestmark = pytest.mark.integration

MakeBlob = Callable[..., Path]


def _source(path: Path, **kw: object) -> BlobSource:
    digest, size = sha256_file(path)
    return BlobSource(digest=digest, size=size, path=path, **kw)  # type: ignore[arg-type]


def _image(config: BlobSource, layers: list[BlobSource], **extra: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": str(config.digest), "size": config.size},
        "layers": [
            {"mediaType": MediaType.OCI_LAYER_GZIP, "digest": str(b.digest), "size": b.size} for b in layers
        ],
        **extra,
    }
    return canonical_json(doc)


def test_ping(target: Target) -> None:
    with target.client() as client:
        assert client.ping() == "registry/2.0"


def test_blob_push_monolithic_then_skip_then_pull(
    target: Target, make_blob: MakeBlob, tmp_path: Path
) -> None:
    src = _source(make_blob(300_000, 1))
    with target.client() as client:
        assert client.blob_exists("mono/app", src.digest) is None
        first = client.push_source("mono/app", src)
        assert first.action is BlobAction.UPLOADED
        assert client.blob_exists("mono/app", src.digest) == src.size
        again = client.push_source("mono/app", src)
        assert again.action is BlobAction.EXISTED
        out = tmp_path / "pulled"
        assert client.pull_blob("mono/app", src.digest, out) == src.size
        assert sha256_file(out) == (src.digest, src.size)
        assert list(tmp_path.glob(".pulled.*")) == []


def test_blob_push_chunked_follows_location(target: Target, make_blob: MakeBlob) -> None:
    src = _source(make_blob(5 * 1024 * 1024 + 17, 2))
    with target.client(chunk_size=1024 * 1024, monolithic_threshold=1024 * 1024) as client:
        result = client.push_source("chunked/app", src)
        assert result.action is BlobAction.UPLOADED
        assert result.resumes == 0
        assert client.blob_exists("chunked/app", src.digest) == src.size
    assert src.digest in target.registry.blob_digests()


def test_cross_repository_mount(target: Target, make_blob: MakeBlob) -> None:
    src = _source(make_blob(200_000, 3))
    with target.client() as client:
        client.push_source("mount/base", src)
        mounted = client.push_source(
            "mount/derived",
            BlobSource(digest=src.digest, size=src.size, path=src.path, mount_from="mount/base"),
        )
        assert mounted.action is BlobAction.MOUNTED
        assert client.blob_exists("mount/derived", src.digest) == src.size
        # A mount from a repository that lacks the blob falls back to an upload (202).
        other = _source(make_blob(1000, 4))
        fallback = client.push_source(
            "mount/derived",
            BlobSource(digest=other.digest, size=other.size, path=other.path, mount_from="mount/base"),
        )
        assert fallback.action is BlobAction.UPLOADED
    if target.tokens is not None:
        scopes = {s for r in target.tokens.granted() for s in r.scopes}
        assert "repository:mount/base:pull" in scopes


def test_manifest_push_get_head_tags_delete(target: Target, make_blob: MakeBlob) -> None:
    repo = "images/app"
    config = _source(make_blob(120, 5))
    layers = [_source(make_blob(50_000 + i, 6 + i)) for i in range(3)]
    manifest = _image(config, layers)
    with target.client(jobs=3) as client:
        digest = client.push_image(
            repo, [config, *layers], manifest, MediaType.OCI_MANIFEST, tags=["v2", "v10", "v1"]
        )
        assert digest == Digest.of(manifest)
        got = client.get_manifest(repo, "v1")
        assert (got.data, got.media_type, got.digest) == (manifest, MediaType.OCI_MANIFEST, digest)
        assert client.get_manifest(repo, digest).data == manifest
        head = client.head_manifest(repo, "v10")
        assert head == Descriptor(media_type=MediaType.OCI_MANIFEST, digest=digest, size=len(manifest))
        assert client.head_manifest(repo, "missing") is None
        assert client.list_tags(repo) == ("v1", "v10", "v2")
        assert client.list_tags(repo, page_size=1) == ("v1", "v10", "v2")
        with pytest.raises(RegistryError) as err:
            client.get_manifest(repo, "nope")
        assert err.value.code == ErrorCode.MANIFEST_UNKNOWN
        assert "manifest unknown" in err.value.message
        client.delete_manifest(repo, digest)
        assert client.head_manifest(repo, digest) is None
        assert client.list_tags(repo) == ()


def test_oci_manifest_needs_accept_header(target: Target, make_blob: MakeBlob) -> None:
    """2.8.2 answers 404 for an OCI manifest asked for without the OCI Accept type."""
    config = _source(make_blob(100, 20))
    manifest = _image(config, [])
    with target.client() as client:
        client.push_image("accept/app", [config], manifest, MediaType.OCI_MANIFEST, tags=["t"])
        with pytest.raises(RegistryError) as err:
            client.get_manifest("accept/app", "t", accept=MediaType.DOCKER_MANIFEST)
        assert err.value.code == ErrorCode.MANIFEST_UNKNOWN
        assert client.get_manifest("accept/app", "t").data == manifest


def test_manifest_referencing_a_missing_blob_is_refused(target: Target) -> None:
    missing = BlobSource(digest=Digest.of(b"never pushed"), size=12, path=Path("/nonexistent"))
    with target.client() as client, pytest.raises(RegistryError) as err:
        client.push_manifest("refuse/app", "t", _image(missing, []), MediaType.OCI_MANIFEST)
    assert err.value.code == ErrorCode.MANIFEST_BLOB_UNKNOWN
    assert err.value.status == 400


def test_manifest_pushed_under_another_digest_is_refused_locally(target: Target) -> None:
    with target.client() as client, pytest.raises(VerificationError) as err:
        client.push_manifest("refuse/app", Digest.of(b"x"), b"{}", MediaType.OCI_MANIFEST)
    assert err.value.reason == "digest"


def test_referrers_fallback_tag_is_read_modify_written_safely(target: Target, make_blob: MakeBlob) -> None:
    repo = "refs/app"
    config = _source(make_blob(100, 30))
    subject_bytes = _image(config, [])
    with target.client(jobs=4) as client:
        subject = client.push_image(repo, [config], subject_bytes, MediaType.OCI_MANIFEST, tags=["v1"])
        assert client.referrers(repo, subject).manifests == ()
        descs = []
        subject_desc = {
            "mediaType": MediaType.OCI_MANIFEST,
            "digest": str(subject),
            "size": len(subject_bytes),
        }
        for i in range(6):
            art = _image(
                config,
                [],
                subject=subject_desc,
                artifactType=f"application/x-kiln-test-{i % 2}",
                annotations={"n": str(i)},
            )
            d = client.push_manifest(repo, Digest.of(art), art, MediaType.OCI_MANIFEST)
            descs.append(
                Descriptor(
                    media_type=MediaType.OCI_MANIFEST,
                    digest=d,
                    size=len(art),
                    artifact_type=f"application/x-kiln-test-{i % 2}",
                )
            )
        errors: list[BaseException] = []

        def add(desc: Descriptor) -> None:
            try:
                assert client.add_referrer(repo, subject, desc) is True  # 2.8.2: no referrers API
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(d,)) for d in descs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        client.add_referrer(repo, subject, descs[0])  # idempotent
        index = client.referrers(repo, subject)
        assert sorted(d.digest for d in index.manifests) == sorted(d.digest for d in descs)
        only = client.referrers(repo, subject, artifact_type="application/x-kiln-test-1")
        assert {d.digest for d in only.manifests} == {descs[i].digest for i in (1, 3, 5)}
        assert subject.tag_form in client.list_tags(repo)
        fallback = client.get_manifest(repo, subject.tag_form)
        assert fallback.media_type == MediaType.OCI_INDEX
        assert OCIIndex.from_bytes(fallback.data).media_type == MediaType.OCI_INDEX


def test_bad_credentials_are_an_auth_error(target: Target) -> None:
    if target.kind == "plain":
        pytest.skip("no auth on this registry")
    bad = Credentials(username=target.credentials.username if target.credentials else "x", password="wrong")
    with target.client(credentials=bad) as client, pytest.raises(AuthError) as err:
        client.ping()
    assert err.value.code == ErrorCode.UNAUTHORIZED
    assert err.value.hint


def test_anonymous_on_an_auth_registry_is_refused(target: Target) -> None:
    if target.kind == "plain":
        pytest.skip("no auth on this registry")
    with target.client(credentials=None) as client, pytest.raises(AuthError) as err:
        client.blob_exists("any/repo", Digest.of(b"x"))
    assert err.value.status == 401
    assert "no credentials" in err.value.message


def test_pull_of_a_missing_blob_leaves_nothing(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "missing"
    with target.client() as client, pytest.raises(RegistryError) as err:
        client.pull_blob("pull/app", Digest.of(b"absent"), out)
    assert err.value.status == 404
    assert list(tmp_path.iterdir()) == []


def test_insecure_says_so(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="kiln.publisher"), target.client():
        pass
    assert any("plain http" in r.getMessage() for r in caplog.records)


def test_tls_is_the_default(target: Target) -> None:
    """Without --insecure the client speaks https, which a plain-http registry cannot answer."""
    from publisher.client import RegistryClient
    from publisher.errors import RegistryUnavailable
    from publisher.retry import RetryPolicy

    with RegistryClient(target.registry.host, retry=RetryPolicy(attempts=1)) as client:
        assert client.session.base_url.startswith("https://")
        with pytest.raises(RegistryUnavailable):
            client.ping()
    assert isinstance(httpx.URL(client.session.base_url), httpx.URL)
