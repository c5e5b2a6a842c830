"""Helpers for tests: tool requirements that skip locally but fail under ``CI=true``."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require_tool(name: str, package: str) -> str:
    """Return the tool's path; skip (or fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (Debian package {package}; `make test` installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        msg = f"needs root: {why}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def memfds() -> set[str]:
    """The memfds this process holds (the sealed copies of VM parts are memfds); other fds come and
    go with the test process's own threads."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                held.add(fd)
        except OSError:
            continue
    return held
