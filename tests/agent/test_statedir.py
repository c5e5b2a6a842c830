"""The state directory: its lock, and the removal of per-instance volumes (whatever an instance
wrote into them: any depth, 0000 modes, symlinks out, none of it followed)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.events import EventLog, read_events
from agent.gc import Collector
from agent.statedir import AgentBusy, StateLock


def test_one_lock_holder_per_state_directory(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path / "state"), StateLock(tmp_path / "state")
    first.acquire()
    with pytest.raises(AgentBusy, match="another kiln agent is running"):
        second.acquire()
    first.release()
    second.acquire()
    assert second.held
    second.release()


def _hostile_tree(top: Path, outside: Path, depth: int) -> None:
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):  # past Python's recursion limit and past PATH_MAX
        os.mkdir("sub-directory", dir_fd=fd)
        os.symlink(str(outside), "link", dir_fd=fd)
        os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        if i % 500 == 0:
            os.mkdir("locked", mode=0o000, dir_fd=fd)
        nxt = os.open("sub-directory", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)


def test_volumes_of_gone_instances_are_removed_whatever_they_hold(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    base = state / "volumes" / "web"
    _hostile_tree(base / "kiln-web-00000001" / "var%2Flib%2Fweb", outside, 2500)
    (base / "kiln-web-00000002" / "var%2Flib%2Fweb").mkdir(parents=True)
    (base / "var%2Flib%2Fweb").mkdir()  # the service's own volume (not per instance): kept
    journal = SimpleNamespace(state=SimpleNamespace(known=("kiln-web-00000002",)))
    collector = Collector(
        state_dir=state,
        roots_dir=state / "roots",
        store=None,  # type: ignore[arg-type]
        releases=None,  # type: ignore[arg-type]
        journal=journal,  # type: ignore[arg-type]
        enforcer=None,  # type: ignore[arg-type]
        events=EventLog(tmp_path),
    )
    collector.volumes()
    assert sorted(p.name for p in base.iterdir()) == ["kiln-web-00000002", "var%2Flib%2Fweb"]
    assert (outside / "keep").read_text() == "keep"
    assert [e["instance"] for e in read_events(tmp_path) if e["event"] == "volumes_removed"] == [
        "kiln-web-00000001"
    ]
