"""Numbers written as text by someone else: ``'²'`` and 5,000 digits are refused, never ValueError.

``str.isdigit`` accepts ``'²'`` (and other Unicode digits) that ``int`` refuses, and ``int``
refuses more than 4,300 digits: three readers trusted ``isdigit`` and raised ``ValueError``:
- a registry's ``Retry-After: ²`` on a 429/503 (``parse_retry_after``);
- a release artifact's version annotation read back from a registry when publishing a release
  (``_version_of``: the version of what the channel tag names now);
- a trust policy's ``threshold: ²`` (a positioned ManifestError now, like every other field).
"""

from __future__ import annotations

import textwrap

import httpx
import pytest

from manifests.errors import ManifestError
from publisher.release_artifact import VERSION_ANNOTATION, _version_of
from publisher.retry import RetryPolicy, parse_retry_after
from publisher.transfer import Manifest
from signing.policy import TrustPolicy
from tests.publisher.test_hostile_headers import OPS, _client
from tests.signing.conftest import p256

ODD = ["²", "9" * 5000, "٣", "1²"]


@pytest.mark.parametrize("value", ODD)
def test_retry_after_odd_digits(value: str) -> None:
    got = parse_retry_after(value)
    assert got is None or got >= 0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_superscript_from_a_registry_is_a_registry_error(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=[(b"retry-after", "²".encode())], content=b"busy")

    client = _client(handler)
    client.session.retry = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, max_retry_after=0.0)
    from publisher.errors import PublishError

    with pytest.raises(PublishError):
        OPS["get_manifest"](client)


class _OneManifest:
    def __init__(self, annotation: str) -> None:
        from manifests.digest import Digest
        from manifests.mediatypes import MediaType
        from manifests.oci import Descriptor, OCIManifest

        man = OCIManifest(
            config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=Digest.of(b"{}"), size=2),
            layers=(),
            annotations={VERSION_ANNOTATION: annotation},
        )
        raw = man.to_bytes()
        self.manifest = Manifest(data=raw, media_type=MediaType.OCI_MANIFEST, digest=Digest.of(raw))

    def get_manifest(self, ref: object) -> Manifest:
        return self.manifest


@pytest.mark.parametrize("value", ODD)
def test_release_version_annotation_odd_digits_is_unknown(value: str) -> None:
    from manifests.oci import Descriptor

    endpoint = _OneManifest(value)
    desc = Descriptor(media_type=endpoint.manifest.media_type, digest=endpoint.manifest.digest, size=1)
    assert _version_of(endpoint, desc) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ODD)
def test_policy_threshold_odd_digits_is_a_positioned_error(value: str) -> None:
    pem = textwrap.indent(p256(5).public_key.to_pem().decode(), "      ")
    text = (
        f"version: 1\nkeys:\n  alice:\n    public_key: |\n{pem}"
        f"rules:\n  - repositories: ['**']\n    keys: [alice]\n    threshold: '{value}'\n"
    )
    with pytest.raises(ManifestError, match=r"rules\[0\]\.threshold: must be a positive integer"):
        TrustPolicy.from_bytes(text.encode(), source="p.yaml")
