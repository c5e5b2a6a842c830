"""Live progress on a terminal (acceptance 8): a build and a push under a pseudo-terminal (tmux)
draw rich bars with byte counts and rates; the test reads tmux's screen. In a pipe the same
commands print plain lines only; ``NO_COLOR`` drops the colours."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing import private_registry
from tests.support import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "python-web" / "python-web.yaml"
DONE = "KILN-TEST-DONE"


class Screen:
    """A private tmux server (its own socket name) running one shell command in a 120x40 window."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"kiln-test-{uuid.uuid4().hex[:10]}"
        self.tmp = tmp

    def run(self, command: str, env: dict[str, str], *, timeout: float = 300) -> tuple[str, str]:
        """Run ``command`` in a fresh window; the plain screen and the screen with escapes."""
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = self.tmp / f"run-{uuid.uuid4().hex[:6]}.sh"
        script.write_text(
            f"cd {shlex.quote(str(REPO))}\nexport {exports}\n{command}\necho {DONE} $?\nsleep 600\n"
        )
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30, check=False
        )
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40",
             f"sh {shlex.quote(str(script))}"],
            check=False, capture_output=True, text=True, timeout=30,
            env={k: v for k, v in os.environ.items() if k != "TMUX"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if DONE in screen:
                return screen, self.capture(escapes=True)
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not finish; the screen:\n{screen}")
            time.sleep(0.2)

    def capture(self, *, escapes: bool = False) -> str:
        args = ["tmux", "-L", self.socket, "capture-pane", "-p", "-J"] + (["-e"] if escapes else [])
        return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30, check=False
        )


@pytest.fixture
def screen(tmp_path: Path) -> Iterator[Screen]:
    require_tool("tmux", "tmux")
    s = Screen(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PYTHONPATH": str(REPO),
        "KILN_CACHE_DIR": str(tmp_path / "cache"),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    env.update(extra)
    return env


def test_build_and_push_show_live_progress(screen: Screen, tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    kiln = f"{shlex.quote(sys.executable)} -m kiln"
    out = tmp_path / "web"
    text, _ = screen.run(f"{kiln} build {EXAMPLE} -o {out} --no-cache", _env(tmp_path))
    assert f"{DONE} 0" in text, text
    # One bar per layer: its files, bytes done of bytes in all, and the rate.
    assert "layer runtime:" in text, text
    assert "files" in text
    assert "━" in text  # rich's bar
    assert " MB" in text, text
    assert "/s" in text, text
    with private_registry(tmp_path / "registry") as host:
        text, _ = screen.run(f"{kiln} publish {out} {host}/live/web --insecure", _env(tmp_path))
    assert f"{DONE} 0" in text, text
    assert "blob " in text, text  # one bar per blob, with bytes and rate
    assert "━" in text
    assert "MB/s" in text or "kB/s" in text, text


def test_no_color_drops_the_colours(screen: Screen, tmp_path: Path) -> None:
    kiln = f"{shlex.quote(sys.executable)} -m kiln"
    command = f"{kiln} build {EXAMPLE} -o {tmp_path / 'web'} --no-cache"
    text, coloured = screen.run(command, _env(tmp_path))
    assert f"{DONE} 0" in text
    assert "\x1b[38;" in coloured or "\x1b[3" in coloured  # rich colours the bars by default
    text, plain = screen.run(command + " --force", _env(tmp_path, NO_COLOR="1"))
    assert f"{DONE} 0" in text
    assert "━" in text
    assert "\x1b[38;" not in plain
    assert not any(f"\x1b[{c}m" in plain for c in range(30, 38))


def test_a_pipe_gets_plain_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "build", str(EXAMPLE), "-o", str(tmp_path / "web"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **_env(tmp_path)},
        check=True,
    )
    assert "layer 2/3 runtime:" in proc.stderr
    assert "━" not in proc.stderr
    assert "\x1b[" not in proc.stderr
