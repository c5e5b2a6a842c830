"""The state directory: its lock, and removing trees an instance wrote (any depth, no symlink followed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.statedir import AgentBusy, StateLock, remove_tree


def test_one_lock_holder_per_state_directory(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path / "state"), StateLock(tmp_path / "state")
    first.acquire()
    with pytest.raises(AgentBusy, match="another kiln agent is running"):
        second.acquire()
    first.release()
    second.acquire()
    assert second.held
    second.release()


def test_remove_tree_removes_a_tree_deeper_than_recursion_and_path_max_and_follows_no_symlink(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    top = tmp_path / "volume"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(2500):  # 2500 levels: past Python's recursion limit and past PATH_MAX
        os.mkdir("sub-directory", dir_fd=fd)
        os.symlink(str(outside), "link", dir_fd=fd)
        os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        os.mkdir("empty", dir_fd=fd)
        nxt = os.open("sub-directory", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    remove_tree(top)
    assert not top.exists()
    assert (outside / "keep").read_text() == "keep"
    remove_tree(top)  # gone already: fine
