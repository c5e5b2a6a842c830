"""The Containerfile builds from pinned inputs: its base by digest, Python packages from the
hashed requirements.lock (which covers every dependency pyproject.toml declares, and the build
backend). Checked statically: tests do not pull images or reach PyPI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _locked() -> dict[str, list[str]]:
    """name -> hashes, from requirements.lock."""
    text = (REPO / "requirements.lock").read_text()
    out: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            out[m.group(1).lower().replace("_", "-")] = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
    return out


def test_base_is_pinned_by_digest() -> None:
    froms = [line for line in (REPO / "Containerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert froms
    for line in froms:
        assert re.fullmatch(r"FROM \S+@sha256:[0-9a-f]{64}( AS \S+)?", line), line


def test_pip_installs_only_hashed_requirements() -> None:
    text = (REPO / "Containerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\]*)", text)
    assert installs
    assert any("--require-hashes" in i and "-r /src/requirements.lock" in i for i in installs)
    for i in installs:  # kiln itself: no index, no isolated build env fetched from PyPI
        assert "--require-hashes" in i or ("--no-index" in i and "--no-build-isolation" in i), i


def test_lock_covers_every_declared_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    locked = _locked()
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for requirement in wanted:
        name = _name(requirement)
        assert name in locked, f"{name} is not in requirements.lock: run make lock"
    for name, hashes in locked.items():
        assert hashes, f"{name} has no --hash in requirements.lock"
