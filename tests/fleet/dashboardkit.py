"""Read the fleet dashboard as a person would: headless Chromium runs its JavaScript, then we read the DOM."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: `make test` installs it")
    pytest.skip("chromium is not installed (Debian package chromium; `make test` installs it)")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="kiln-chromium-") as profile:
        base = [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root; the page is our own, served on loopback
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
        ]
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=True)


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom)."""
    return _run(["--dump-dom", url]).stdout


def screenshot(url: str, out: Path, *, size: str = "1280,900") -> None:
    _run([f"--window-size={size}", f"--screenshot={out}", url])


class Elements(HTMLParser):
    """Every element's attributes and text, for data-* lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.found.append(({k: v or "" for k, v in attrs}, text))
        if tag not in ("br", "img", "meta", "link", "input"):
            self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("br", "img", "meta", "link", "input"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for text in self._open:
            text.append(data)

    def with_attr(self, name: str) -> list[tuple[dict[str, str], str]]:
        return [(a, "".join(t).strip()) for a, t in self.found if name in a]


def elements(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser
