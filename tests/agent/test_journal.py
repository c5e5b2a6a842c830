"""The agent journal: atomic commits, a growing sequence, exact round trips, refusal of garbage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.journal import (
    JOURNAL_FILE,
    InstanceRecord,
    Journal,
    JournalError,
    JournalState,
    Refusal,
    ReleaseRef,
)

REC = InstanceRecord(
    id="kiln-web-0123abcd",
    service="web",
    release=2,
    image="sha256:" + "a" * 64,
    manifest="sha256:" + "b" * 64,
    fingerprint="sha256:" + "c" * 64,
    config="sha256:" + "d" * 64,
    port=8080,
    started_at=1_700_000_000.5,
    bundle=None,
)


def test_commit_is_atomic_and_the_sequence_grows(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    assert j.state == JournalState()
    assert not (tmp_path / JOURNAL_FILE).exists()
    ref = ReleaseRef(version=2, payload_digest="sha256:" + "e" * 64)
    s1 = j.commit(j.state.with_known(REC.id))
    s2 = j.commit(s1.with_service("web", (REC,)))
    s3 = j.commit(s2.__class__(**{**_fields(s2), "good": ref, "highest": ref}))
    assert (s1.seq, s2.seq, s3.seq) == (1, 2, 3)
    assert Journal(tmp_path).state == s3
    assert (tmp_path / JOURNAL_FILE).read_bytes() == s3.to_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [JOURNAL_FILE]  # no temporary file left
    assert os.stat(tmp_path / JOURNAL_FILE).st_mode & 0o777 == 0o600


def _fields(s: JournalState) -> dict[str, object]:
    return {f: getattr(s, f) for f in s.__dataclass_fields__}


def test_failures_count_attempts_per_version(tmp_path: Path) -> None:
    s = JournalState().with_failure(3, "health").with_failure(3, "interrupted").with_failure(4, "x")
    assert s.failure(3) is not None
    assert (s.failure(3).attempts, s.failure(3).reason) == (2, "interrupted")  # type: ignore[union-attr]
    assert s.failure(5) is None
    assert JournalState.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not a kiln agent journal"),
        (b"[]", "not a kiln agent journal (not an object)"),
        (b'{"format": 9, "seq": 1}', "journal format 9 is not 1"),
        (b'{"format": 1}', "journal.json: seq: missing"),
    ],
)
def test_garbage_is_refused_with_a_hint(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(data)
    with pytest.raises(JournalError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        Journal(tmp_path)
    if "format 9" not in message:
        assert info.value.hint is not None


refs = st.builds(ReleaseRef, version=st.integers(1, 2**40), payload_digest=st.just("sha256:" + "f" * 64))


@settings(max_examples=100)
@given(
    highest=st.none() | refs,
    good=st.none() | refs,
    known=st.lists(st.from_regex(r"kiln-web-[0-9a-f]{8}", fullmatch=True), max_size=4),
    refusal=st.none()
    | st.builds(
        Refusal,
        reason=st.sampled_from(["signature", "expired"]),
        detail=st.text(max_size=30),
        version=st.none() | st.integers(1, 99),
        at=st.floats(0, 2e9),
    ),
)
def test_round_trip(
    highest: ReleaseRef | None, good: ReleaseRef | None, known: list[str], refusal: Refusal | None
) -> None:
    s = JournalState(
        seq=7,
        highest=highest,
        good=good,
        rollout_to=good,
        rollout_from=highest if good is not None else None,
        instances=(REC,),
        known=tuple(sorted(set(known))),
        last_refusal=refusal,
    )
    again = JournalState.from_dict(__import__("json").loads(s.to_bytes()))
    assert again == s
    assert again.to_bytes() == s.to_bytes()
