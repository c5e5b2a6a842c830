"""The shared vocabularies: refusal reasons and reconcile outcomes, with their behaviour."""

from __future__ import annotations

import json

import pytest

from manifests.errors import ParseError, VerificationError
from manifests.vocabulary import Outcome, Reason

# What the agent records (events, journal, metrics, --json): these strings are an interface.
RECORDED = {
    "signature",
    "threshold",
    "expired",
    "rollback",
    "digest",
    "identity",
    "policy",
    "unpack",
    "parse",
    "internal",
}


def test_every_reason_is_recorded_as_one_of_the_agents_ten() -> None:
    assert {str(r.recorded) for r in Reason} == RECORDED
    assert {r.value: str(r.recorded) for r in Reason if r.value not in RECORDED} == {
        "size": "digest",
        "manifest": "parse",
        "payload": "signature",
        "key": "signature",
        "attestation": "policy",
    }


def test_only_an_internal_fault_is_retried() -> None:
    assert [r for r in Reason if r.retryable] == [Reason.INTERNAL]


def test_a_reason_is_its_string_in_json_and_comparisons() -> None:
    exc = VerificationError("bad", reason="size")
    assert exc.reason is Reason.SIZE
    assert exc.reason == "size"
    assert json.dumps({"reason": exc.reason.recorded}) == '{"reason": "digest"}'
    assert f"{exc.reason}" == "size"
    assert ParseError("x").reason is Reason.PARSE


def test_a_reason_outside_the_vocabulary_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="'sizes' is not a valid Reason"):
        VerificationError("bad", reason="sizes")


def test_outcomes_know_their_exit_codes() -> None:
    assert {o.value: o.exit_code for o in Outcome} == {
        "current": 0,
        "rolled-out": 0,
        "failed": 1,
        "skipped": 1,
        "waiting": 1,
        "refused": VerificationError.exit_code,
        "unavailable": 4,
    }
