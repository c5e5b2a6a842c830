"""Backoff, Retry-After, and the translation of registry error bodies."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.errors import AuthError, ErrorCode, RegistryError, registry_error
from publisher.retry import RetryPolicy, parse_retry_after


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4.0)
    rng = random.Random(7)
    for n in range(10):
        ceiling = min(4.0, 0.5 * 2**n)
        delays = [policy.delay(n, rng=rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert policy.delay(1000, rng=rng) <= 4.0


def test_retry_after_overrides_and_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=10.0)
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=3600.0) == 10.0
    assert policy.delay(0, retry_after=-1.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"attempts": 0}, "attempts must be at least 1"), ({"base_delay": -1.0}, "must not be negative")],
)
def test_bad_policy(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("status", "body", "cls", "code", "message"),
    [
        (
            404,
            b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v1"}}]}',
            RegistryError,
            ErrorCode.MANIFEST_UNKNOWN,
            "x: registry answered 404 MANIFEST_UNKNOWN: manifest unknown",
        ),
        (
            401,
            b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            AuthError,
            ErrorCode.UNAUTHORIZED,
            "x: registry answered 401 UNAUTHORIZED: authentication required",
        ),
        (403, b"", AuthError, ErrorCode.DENIED, "x: registry answered 403 DENIED: no message"),
        (
            400,
            b'{"errors":[{"code":"DIGEST_INVALID","message":"a"},{"code":"SIZE_INVALID","message":"b"}]}',
            RegistryError,
            ErrorCode.DIGEST_INVALID,
            "x: registry answered 400 DIGEST_INVALID: a; b",
        ),
        (
            404,
            b"404 page not found\n",
            RegistryError,
            ErrorCode.UNKNOWN,
            "x: registry answered 404 UNKNOWN: 404 page not found",
        ),
        (
            429,
            b"slow down",
            RegistryError,
            ErrorCode.TOOMANYREQUESTS,
            "x: registry answered 429 TOOMANYREQUESTS: slow down",
        ),
        (
            400,
            b'{"errors":"nope"}',
            RegistryError,
            ErrorCode.UNKNOWN,
            'x: registry answered 400 UNKNOWN: {"errors":"nope"}',
        ),
        (
            400,
            b"\xff\xfe",
            RegistryError,
            ErrorCode.UNKNOWN,
            "x: registry answered 400 UNKNOWN: \ufffd\ufffd",
        ),
    ],
)
def test_registry_error(status: int, body: bytes, cls: type[RegistryError], code: str, message: str) -> None:
    err = registry_error(status, body, what="x")
    assert type(err) is cls
    assert (err.code, err.status, err.message) == (code, status, message)


def test_registry_error_has_a_hint_and_clips_long_messages() -> None:
    err = registry_error(
        404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"' + b"m" * 1000 + b'"}]}', what="x"
    )
    assert err.hint == "check the repository name; nothing has been pushed to it yet"
    assert len(err.message) < 400
    assert str(err).endswith("(hint: check the repository name; nothing has been pushed to it yet)")
    assert ErrorCode.BLOB_UNKNOWN.is_not_found
    assert not ErrorCode.DENIED.is_not_found


@settings(max_examples=200)
@given(
    st.integers(min_value=400, max_value=599),
    st.binary(max_size=300)
    | st.builds(
        lambda code, msg: json.dumps({"errors": [{"code": code, "message": msg}]}).encode(),
        st.text(max_size=20),
        st.text(max_size=50),
    ),
)
def test_registry_error_accepts_any_body(status: int, body: bytes) -> None:
    err = registry_error(status, body, what="fuzz")
    assert err.status == status
    assert err.message.startswith(f"fuzz: registry answered {status} ")
    assert len(err.message) < 1200
