"""The shared field checkers: plain parsers (exact messages) and the documents that use them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.agentconfig import parse_agent_config
from manifests.errors import ManifestError, VerificationError
from manifests.fields import (
    ListenAddress,
    format_utc_time,
    parse_listen_address,
    parse_utc_time,
    shown,
    time_problem,
)
from manifests.payload import payload_document, require_canonical


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("[0:0::1]:80", "::1", 80), ("0.0.0.0:65535", "0.0.0.0", 65535)],  # noqa: S104 - parsed, never bound
)
def test_listen_addresses(text: str, host: str, port: int) -> None:
    assert parse_listen_address(text) == (ListenAddress(host=host, port=port), "", None)


HINT = "write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("localhost:80", "invalid address 'localhost:80'", HINT + " (a host name is not an address)"),
        ("::1:80", "invalid address '::1:80'", "write an IPv6 address in brackets: [::1]:8080"),
        (
            "[127.0.0.1]:80",
            "invalid address '[127.0.0.1]:80'",
            "write an IPv6 address in brackets: [::1]:8080",
        ),
        ("127.0.0.1:0", "port 0 is out of range (1 to 65535)", None),
        ("127.0.0.1:000080", "invalid address '127.0.0.1:000080'", HINT),
        ("127.0.0.1:\u00b2", "invalid address '127.0.0.1:\u00b2'", HINT),
        ("127.0.0.1", "invalid address '127.0.0.1'", HINT),
        ('a"\n:1', "invalid address 'a\\\"\\n:1'", HINT + " (a host name is not an address)"),
    ],
)
def test_invalid_listen_addresses(text: str, message: str, hint: str | None) -> None:
    assert parse_listen_address(text) == (None, message, hint)


def test_status_listen_with_odd_digits_is_a_clean_error() -> None:
    doc = (
        b"apiVersion: kiln.dev/v1\nkind: AgentConfig\nsource: oci:/r\nchannel: c\ntrust_root: /t\n"
        b"state: /s\nstatus_listen: '127.0.0.1:\xc2\xb2'\n"
    )
    with pytest.raises(ManifestError) as exc:
        parse_agent_config(doc, source="a.yaml", base=Path("/"))
    assert str(exc.value) == (
        "a.yaml:7:1: status_listen: invalid address '127.0.0.1:\u00b2' "
        "(the status endpoint listens on loopback only: 127.0.0.1:PORT)"
    )


@pytest.mark.parametrize(
    ("text", "specific", "expected"),
    [
        (
            "2026-12-31T00:00:00+02:00",
            True,
            (
                "time '2026-12-31T00:00:00+02:00' is not in UTC",
                "write it in UTC with a Z, e.g. 2027-01-01T00:00:00Z",
            ),
        ),
        (
            "2026-12-31T00:00:00.5Z",
            True,
            (
                "time '2026-12-31T00:00:00.5Z' has fractional seconds",
                "write whole seconds, e.g. 2027-01-01T00:00:00Z",
            ),
        ),
        (
            "2026-12-31T00:00:00+02:00",
            False,
            (
                "invalid time '2026-12-31T00:00:00+02:00'",
                "write an RFC 3339 UTC time such as 2027-01-01T00:00:00Z",
            ),
        ),
        (
            "2026-02-30T00:00:00Z",
            True,
            (
                "invalid time '2026-02-30T00:00:00Z'",
                "write an RFC 3339 UTC time such as 2027-01-01T00:00:00Z",
            ),
        ),
    ],
)
def test_time_problems(text: str, specific: bool, expected: tuple[str, str]) -> None:
    assert parse_utc_time(text) is None
    assert time_problem(text, example="2027-01-01T00:00:00Z", specific=specific) == expected


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=250_000_000_000))
def test_utc_times_round_trip(seconds: int) -> None:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    assert parse_utc_time(format_utc_time(when)) == when


def test_shown_escapes_what_would_break_a_message_line() -> None:
    assert shown('a"b\\c\nd\x00é') == 'a\\"b\\\\c\\nd\\u0000é'


def test_payload_documents() -> None:
    doc = payload_document(b'{"a":1}', what="thing payload", limit=100)
    assert (doc.source, doc.data) == ("thing payload", {"a": 1})
    with pytest.raises(VerificationError, match=r"^thing payload: 8 bytes exceeds the 7-byte cap$"):
        payload_document(b'{"a":11}', what="thing payload", limit=7)
    with pytest.raises(VerificationError, match=r"^thing payload: duplicate key 'a' in JSON document$"):
        payload_document(b'{"a":1,"a":2}', what="thing payload", limit=100)
    with pytest.raises(VerificationError, match=r"^duplicate key 'a' in JSON document$"):
        payload_document(b'{"a":1,"a":2}', what="thing payload", limit=100, name_errors=False)
    require_canonical(b"x", b"x", what="thing payload", hint="h")
    with pytest.raises(
        VerificationError, match=r"^thing payload is not in canonical form \(hint: h\)$"
    ) as exc:
        require_canonical(b"x ", b"x", what="thing payload", hint="h")
    assert exc.value.reason == "parse"
