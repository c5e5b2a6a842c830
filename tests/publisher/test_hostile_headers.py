"""Hostile registry answers: any header value on any status is a ``KilnError``, never an httpx one.

Attacks (httpx.MockTransport; a real registry does not send these):
- ``location-not-a-url``: a 3xx whose ``Location`` httpx cannot parse (``javascript:alert(1)``)
  raised ``httpx.InvalidURL`` out of every request (ping, manifests, blobs, tags, referrers,
  pushes): httpx parses ``Location`` for ``next_request`` even when it does not follow redirects.
- ``realm-not-a-url``: ``WWW-Authenticate: Bearer realm="http://[::1"`` raised ``InvalidURL``.
- ``link-not-a-url``: a tag list's ``Link: <\\x00>; rel="next"`` raised ``InvalidURL``.
Each is now a ``RegistryError``/``AuthError`` naming the request. A fuzz test sends arbitrary
values of every header the client reads, on every status it handles.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from manifests.errors import KilnError
from publisher.client import RegistryClient
from publisher.errors import AuthError, RegistryError
from publisher.retry import RetryPolicy

RETRY = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, max_retry_after=0.0)
DIGEST = Digest.of(b"x")

OPS: dict[str, Callable[[RegistryClient], object]] = {
    "ping": lambda c: c.ping(),
    "get_manifest": lambda c: c.get_manifest("r/app", "latest"),
    "get_manifest_by_digest": lambda c: c.get_manifest("r/app", DIGEST),
    "head_manifest": lambda c: c.head_manifest("r/app", "latest"),
    "blob_exists": lambda c: c.blob_exists("r/app", DIGEST),
    "pull_blob": lambda c: c.pull_blob("r/app", DIGEST, Path(tempfile.mkdtemp()) / "b"),
    "list_tags": lambda c: c.list_tags("r/app"),
    "referrers": lambda c: c.referrers("r/app", DIGEST),
    "push_manifest": lambda c: c.push_manifest(
        "r/app", "t", b"{}", "application/vnd.oci.image.manifest.v1+json"
    ),
}


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> RegistryClient:
    return RegistryClient(
        "127.0.0.1:5000",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        insecure=True,
        sleep=lambda _s: None,
        retry=RETRY,
    )


def _answer(status: int, headers: list[tuple[bytes, bytes]]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b'{"tags": []}' if request.url.path.endswith("/tags/list") else b"x"
        return httpx.Response(status, headers=headers, content=body)

    return handler


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_location_not_a_url_is_a_registry_error(op: str, status: int) -> None:
    client = _client(_answer(status, [(b"location", b"javascript:alert(1)")]))
    with pytest.raises(RegistryError):
        OPS[op](client)


@pytest.mark.parametrize("op", list(OPS))
def test_realm_not_a_url_is_an_auth_error(op: str) -> None:
    client = _client(_answer(401, [(b"www-authenticate", b'Bearer realm="http://[::1"')]))
    with pytest.raises(AuthError, match="is not a valid URL"):
        OPS[op](client)


def test_link_not_a_url_is_a_registry_error() -> None:
    client = _client(_answer(200, [(b"link", b'<\x00>; rel="next"')]))
    with pytest.raises(RegistryError, match="invalid URL"):
        client.list_tags("r/app")


_HEADERS = [
    "location",
    "www-authenticate",
    "link",
    "content-length",
    "docker-content-digest",
    "content-type",
    "range",
    "retry-after",
    "docker-distribution-api-version",
    "oci-subject",
]
_value = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.sampled_from(
        [
            b"javascript:alert(1)",
            b"http://[::1",
            b'Bearer realm="http://[::1"',
            b'Bearer realm="file:///etc/passwd"',
            b"Bearer " + b"a=b," * 2000,
            b'<\x00>; rel="next"',
            b'<http://evil.example/v2/x>; rel="next"',
            b"9" * 5000,
            b"-1",
            b"1e400",
            b"sha256:" + b"A" * 64,
            b"//evil.example/x",
        ]
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(list(OPS)),
    status=st.sampled_from([200, 201, 202, 204, 206, 301, 302, 307, 400, 401, 403, 404, 416, 429, 500, 503]),
    headers=st.lists(st.tuples(st.sampled_from(_HEADERS), _value), max_size=3),
)
def test_fuzz_any_header_on_any_status(op: str, status: int, headers: list[tuple[str, bytes]]) -> None:
    client = _client(_answer(status, [(k.encode(), v) for k, v in headers]))
    with contextlib.suppress(KilnError):
        OPS[op](client)
