"""docs/architecture.md stays true: every module and directory it names exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
# A repository path the page names: `agent/rollout.py`, `builder/debian/`, `.ci/code-health`.
NAMED = re.compile(r"(?<![\w./-])((?:\.ci|[a-z]+)/[\w./-]*[\w/])")
COMING = ("fleet/",)  # named before it lands; checked once the directory exists


def _coming(path: str) -> bool:
    return path.startswith(COMING) and not (REPO / path.split("/", maxsplit=1)[0]).exists()


def test_every_named_path_exists() -> None:
    text = DOC.read_text()
    named = sorted(set(NAMED.findall(text)))
    assert len(named) > 60  # the page names modules, not just packages
    missing = [p for p in named if not (REPO / p).exists() and not _coming(p)]
    assert missing == []


def test_every_package_has_a_section() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    headings = [line for line in DOC.read_text().splitlines() if line.startswith("### ")]
    for package in packages:
        if package == "kiln":
            assert "`kiln/cli.py`" in DOC.read_text()
            continue
        assert any(f"`{package}/`" in h for h in headings), package
