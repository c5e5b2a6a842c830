"""Every field of ``STATE/journal.json`` is type-checked, and a bad one is named with its file.

A tester's damaged journals gave ``not a kiln agent journal (KeyError('seq'))``, an
``AttributeError`` repr for ``"instances": [5]``, ``journal format None is not 1`` with no file
name, and ``"format": true`` passed the format check (``True == 1``). Now each is a
:class:`JournalDamaged` (set aside on recovery, as before) saying ``<file>: <field>: <problem>``;
only an integer ``format`` other than 1 is a journal of another format (never set aside).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.journal import (
    JOURNAL_FILE,
    InstanceRecord,
    Journal,
    JournalDamaged,
    JournalError,
    JournalState,
    ReleaseRef,
)
from agent.standby import STANDBY_KEY, standby_of

REF = {"version": 3, "payload_digest": "sha256:" + "a" * 64}
INSTANCE: dict[str, Any] = {
    "id": "web-1",
    "service": "web",
    "release": 3,
    "image": "sha256:" + "b" * 64,
    "manifest": "sha256:" + "c" * 64,
    "fingerprint": "f" * 64,
    "config": "sha256:" + "d" * 64,
    "port": 8080,
    "started_at": 1.5,
    "bundle": None,
}
FAILURE = {"version": 3, "attempts": 1, "reason": "health"}
REFUSAL = {"reason": "signature", "detail": "bad", "version": 4, "at": 2.0}


def _doc(**fields: Any) -> dict[str, Any]:
    return {"format": 1, "seq": 1, **fields}


def _inst(**fields: Any) -> dict[str, Any]:
    out = {**INSTANCE, **fields}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()

# (journal document, the field named, what is said about it)
CASES: dict[str, tuple[Any, str]] = {
    # the tester's four
    "seq-missing": ({"format": 1}, "seq: missing"),
    "instance-a-number": (_doc(instances=[5]), "instances[0]: expected an object, got a number"),
    "format-missing": ({"version": "x"}, "format: missing"),
    "format-true": ({"format": True, "seq": 1}, "format: expected an integer, got a boolean"),
    # top-level fields of the wrong type
    "format-text": ({"format": "1", "seq": 1}, "format: expected an integer, got a string"),
    "format-float": ({"format": 1.0, "seq": 1}, "format: expected an integer, got a number"),
    "seq-text": (_doc(seq="1"), "seq: expected an integer, got a string"),
    "seq-bool": (_doc(seq=True), "seq: expected an integer, got a boolean"),
    "seq-float": (_doc(seq=1.5), "seq: expected an integer, got a number"),
    "seq-negative": (_doc(seq=-1), "seq: -1 is negative"),
    "root-version-text": (_doc(root_version="2"), "root_version: expected an integer, got a string"),
    "highest-a-list": (_doc(highest=[1]), "highest: expected an object, got a list"),
    "good-a-string": (_doc(good="v3"), "good: expected an object, got a string"),
    "previous-a-number": (_doc(previous=3), "previous: expected an object, got a number"),
    "rollout-a-bool": (_doc(rollout=True), "rollout: expected an object, got a boolean"),
    "instances-an-object": (_doc(instances={}), "instances: expected a list, got an object"),
    "instances-null": (_doc(instances=None), "instances: expected a list, got null"),
    "known-a-string": (_doc(known="web-1"), "known: expected a list, got a string"),
    "failures-a-number": (_doc(failures=0), "failures: expected a list, got a number"),
    "last-refusal-a-list": (_doc(last_refusal=[]), "last_refusal: expected an object, got a list"),
    "extra-a-string": (_doc(extra="x"), "extra: expected an object, got a string"),
    # nested
    "highest-version-missing": (
        _doc(highest={"payload_digest": "x"}),
        "highest.version: missing",
    ),
    "good-digest-a-number": (
        _doc(good={"version": 1, "payload_digest": 5}),
        "good.payload_digest: expected a string, got a number",
    ),
    "rollout-to-version-bool": (
        _doc(rollout={"to": {"version": True, "payload_digest": "x"}, "from": None}),
        "rollout.to.version: expected an integer, got a boolean",
    ),
    "rollout-from-a-string": (
        _doc(rollout={"to": REF, "from": "x"}),
        "rollout.from: expected an object, got a string",
    ),
    "instance-id-missing": (_doc(instances=[_inst(id=_DROP)]), "instances[0].id: missing"),
    "instance-port-text": (
        _doc(instances=[INSTANCE, _inst(port="80")]),
        "instances[1].port: expected an integer, got a string",
    ),
    "instance-started-at-text": (
        _doc(instances=[_inst(started_at="now")]),
        "instances[0].started_at: expected a number, got a string",
    ),
    "instance-release-bool": (
        _doc(instances=[_inst(release=False)]),
        "instances[0].release: expected an integer, got a boolean",
    ),
    "instance-health-a-list": (
        _doc(instances=[_inst(health=[1])]),
        "instances[0].health: expected an object, got a list",
    ),
    "instance-root-a-number": (
        _doc(instances=[_inst(root=1)]),
        "instances[0].root: expected a string, got a number",
    ),
    "known-holds-a-number": (_doc(known=["a", 3]), "known[1]: expected a string, got a number"),
    "failure-attempts-text": (
        _doc(failures=[{**FAILURE, "attempts": "2"}]),
        "failures[0].attempts: expected an integer, got a string",
    ),
    "failure-a-null": (_doc(failures=[None]), "failures[0]: expected an object, got null"),
    "refusal-at-missing": (
        _doc(last_refusal={k: v for k, v in REFUSAL.items() if k != "at"}),
        "last_refusal.at: missing",
    ),
    "refusal-version-text": (
        _doc(last_refusal={**REFUSAL, "version": "4"}),
        "last_refusal.version: expected an integer, got a string",
    ),
}


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(json.dumps(doc).encode())
    return path


@pytest.mark.parametrize(("doc", "said"), list(CASES.values()), ids=list(CASES))
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, doc: Any, said: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(JournalDamaged) as info:
        Journal(tmp_path)
    assert info.value.message == f"{path}: {said}"
    assert info.value.hint is not None
    assert not re.search(r"[A-Za-z]+Error\(", info.value.message), info.value.message


@pytest.mark.parametrize(("doc", "said"), list(CASES.values()), ids=list(CASES))
def test_a_bad_field_is_still_set_aside_when_recovering(tmp_path: Path, doc: Any, said: str) -> None:
    path = _write(tmp_path, doc)
    data = path.read_bytes()
    j = Journal(tmp_path, recover=True)
    assert j.state == JournalState()
    assert j.damaged is not None
    aside, why = j.damaged
    assert aside.read_bytes() == data
    assert why == f"{path}: {said}"
    assert not path.exists()


def test_another_integer_format_names_the_file_and_is_never_set_aside(tmp_path: Path) -> None:
    path = _write(tmp_path, {"format": 2, "seq": 1})
    for recover in (False, True):
        with pytest.raises(JournalError) as info:
            Journal(tmp_path, recover=recover)
        assert not isinstance(info.value, JournalDamaged)
        assert info.value.message.startswith(f"{path}: format: ")
        assert "journal format 2 is not 1" in info.value.message
        assert path.exists()


def test_a_complete_journal_reads_back_every_field(tmp_path: Path) -> None:
    doc = _doc(
        root_version=2,
        highest=REF,
        good=REF,
        previous=None,
        rollout={"to": REF, "from": None},
        instances=[_inst(health={"kind": "http"}, root="/r")],
        known=["web-1"],
        failures=[FAILURE],
        last_refusal=REFUSAL,
        extra={"k": [1]},
    )
    _write(tmp_path, doc)
    st = Journal(tmp_path).state
    assert st.good == ReleaseRef(version=3, payload_digest=REF["payload_digest"])
    assert st.rollout_to == st.good
    assert st.rollout_from is None
    assert st.instances[0].started_at == 1.5
    assert st.instances[0].root == "/r"
    assert JournalState.from_dict(st.to_dict()) == st


def test_optional_fields_may_be_null_or_absent(tmp_path: Path) -> None:
    _write(tmp_path, _doc(extra=None, rollout=None, last_refusal=None, highest=None, root_version=None))
    assert Journal(tmp_path).state == JournalState(seq=1)
    _write(tmp_path, _doc(instances=[_inst(port=None, bundle=_DROP, started_at=7)]))
    rec = Journal(tmp_path).state.instances[0]
    assert (rec.port, rec.bundle, rec.started_at) == (None, None, 7.0)


def test_a_huge_number_or_deep_nesting_is_refused_by_the_reader_caps(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(b'{"format":1,"seq":1,"instances":[{"port":' + b"9" * 100 + b"}]}")
    with pytest.raises(JournalDamaged, match="exceeds the 64-character cap"):
        Journal(tmp_path)
    path.write_bytes(b'{"format":1,"seq":1,"extra":{"a":' + b"[" * 20 + b"]" * 20 + b"}}")
    with pytest.raises(JournalDamaged, match="levels deep exceeds the 16-level cap"):
        Journal(tmp_path)


def test_a_standby_entry_with_a_bad_record_is_dropped_not_raised() -> None:
    good = {"until": 5.0, "instance": INSTANCE}
    st = JournalState(extra={STANDBY_KEY: [{"until": 1.0, "instance": _inst(port="x")}, 3, good]})
    assert [s.record for s in standby_of(st)] == [InstanceRecord.from_dict(INSTANCE)]
