"""The agent's own state files, damaged: a typed error or a clean recovery, never a traceback or hang.

Attack (or a bad disk): ``STATE/journal.json`` nested 100,000 deep raised ``RecursionError``; a
journal whose ``instances`` is a string or holds ``null`` raised ``AttributeError``; ``seq: 1e400``
raised ``OverflowError``; a FIFO in its place hung the agent's start. Each is now a
:class:`JournalDamaged`, and ``Journal(recover=True)`` sets the file aside and starts empty. A
journal of another ``format`` (a newer agent's) is never set aside. ``events.jsonl`` with a line
nested 100,000 deep made ``kiln agent status`` fail; a directory or FIFO in its place made every
``emit`` raise (or block): events are best effort and never stop what emits.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.events import EVENTS_FILE, EventLog, read_events
from agent.journal import (
    JOURNAL_FILE,
    InstanceRecord,
    Journal,
    JournalDamaged,
    JournalError,
    JournalState,
    ReleaseRef,
)

_DEEP = b"[" * 100_000 + b"]" * 100_000

DAMAGED: dict[str, bytes] = {
    "deep-array": _DEEP,
    "deep-in-extra": b'{"format":1,"seq":1,"extra":' + _DEEP + b"}",
    "5000-digit-seq": b'{"format":1,"seq":' + b"9" * 5000 + b"}",
    "seq-overflows-a-float": b'{"format":1,"seq":1e400}',
    "seq-nan": b'{"format":1,"seq":NaN}',
    "instances-a-string": b'{"format":1,"seq":1,"instances":"abc"}',
    "instances-hold-null": b'{"format":1,"seq":1,"instances":[null]}',
    "known-a-number": b'{"format":1,"seq":1,"known":5}',
    "extra-a-list": b'{"format":1,"seq":1,"extra":[1,2]}',
    "highest-version-text": b'{"format":1,"seq":1,"highest":{"version":"x","payload_digest":"y"}}',
    "binary": b"\xff\xfe\x00\x01",
    "empty": b"",
    "truncated": b'{"format":1,"seq":',
    "a-list": b"[]",
}


@pytest.mark.parametrize("data", list(DAMAGED.values()), ids=list(DAMAGED))
def test_damaged_journal_is_a_journal_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(data)
    with pytest.raises(JournalDamaged) as info:
        Journal(tmp_path)
    assert str(tmp_path / JOURNAL_FILE) in info.value.message
    assert info.value.hint is not None
    assert (tmp_path / JOURNAL_FILE).read_bytes() == data  # without recover, nothing is moved


@pytest.mark.parametrize("data", list(DAMAGED.values()), ids=list(DAMAGED))
def test_damaged_journal_is_set_aside_when_recovering(tmp_path: Path, data: bytes) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(data)
    j = Journal(tmp_path, recover=True)
    assert j.state == JournalState()
    assert j.damaged is not None
    aside, why = j.damaged
    assert aside.parent == tmp_path
    assert aside.name.startswith(f"{JOURNAL_FILE}.damaged-")
    assert aside.read_bytes() == data
    assert why.startswith(f"{tmp_path / JOURNAL_FILE}: ")
    assert "Error(" not in why  # a field or a parse problem, never an exception's repr
    assert not (tmp_path / JOURNAL_FILE).exists()
    j.commit(j.state)
    assert Journal(tmp_path).state.seq == 1


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_journal_that_is_not_a_file_is_damaged_not_a_hang(tmp_path: Path, kind: str) -> None:
    path = tmp_path / JOURNAL_FILE
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        (tmp_path / "elsewhere.json").write_bytes(JournalState(seq=5).to_bytes())
        path.symlink_to(tmp_path / "elsewhere.json")
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(_try(lambda: Journal(tmp_path))), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading the journal hung"
    assert isinstance(result[0], JournalDamaged), result
    recovered = Journal(tmp_path, recover=True)
    assert recovered.state == JournalState()
    assert recovered.damaged is not None


def test_journal_of_another_format_is_never_set_aside(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b'{"format": 9, "seq": 1}')
    with pytest.raises(JournalError, match="journal format 9 is not 1") as info:
        Journal(tmp_path, recover=True)
    assert not isinstance(info.value, JournalDamaged)
    assert (tmp_path / JOURNAL_FILE).exists()


def _try(fn: Any) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


_GOOD = JournalState(
    seq=3,
    highest=ReleaseRef(version=2, payload_digest="sha256:" + "a" * 64),
    instances=(
        InstanceRecord(
            id="kiln-web-1",
            service="web",
            release=2,
            image="sha256:" + "b" * 64,
            manifest="sha256:" + "c" * 64,
            fingerprint="f",
            config="sha256:" + "d" * 64,
            port=8080,
            started_at=1.0,
        ),
    ),
    known=("kiln-web-1",),
).to_dict()

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(
        [
            "seq",
            "highest",
            "instances",
            "known",
            "failures",
            "last_refusal",
            "rollout",
            "extra",
            "root_version",
            "instances.0",
            "instances.0.port",
            "highest.version",
            "instances.0.started_at",
        ]
    ),
    value=_json,
)
def test_fuzz_journal_fields_of_any_type(tmp_path: Path, path: str, value: object) -> None:
    doc = json.loads(json.dumps(_GOOD))
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    (tmp_path / JOURNAL_FILE).write_text(json.dumps(doc))
    outcome = _try(lambda: Journal(tmp_path))
    assert isinstance(outcome, Journal | JournalDamaged), repr(outcome)


def test_damaged_event_lines_are_skipped(tmp_path: Path) -> None:
    lines = [
        _DEEP,
        b'{"event": "kept", "n": 1}',
        b"\xff\xfe",
        b'{"n": ' + b"9" * 5000 + b"}",
        b'{"event": "cut',
        b"[1, 2]",
        b'{"event": "kept", "n": 2}',
    ]
    (tmp_path / EVENTS_FILE).write_bytes(b"\n".join(lines) + b"\n")
    assert read_events(tmp_path) == [{"event": "kept", "n": 1}, {"event": "kept", "n": 2}]


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_events_file_that_is_not_a_file_never_stops_emit(tmp_path: Path, kind: str) -> None:
    path = tmp_path / EVENTS_FILE
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "elsewhere")
    seen: list[str] = []
    log = EventLog(tmp_path, sink=seen.append)
    t = threading.Thread(target=lambda: log.emit("refused", reason="parse"), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "emit hung"
    assert len(seen) == 1
    assert json.loads(seen[0])["event"] == "refused"
    assert read_events(tmp_path) == []
    assert not (tmp_path / "elsewhere").exists()
