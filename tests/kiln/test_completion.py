"""`kiln completion bash|zsh`: the script completes verbs, actions and options in a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.cli import VERBS, main


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``kiln`` first)."""
    array = " ".join(f"'{w}'" for w in words)
    command = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _kiln; "
        "printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run(
        [bash, "--norc", "-c", command], capture_output=True, text=True, timeout=60, check=True
    )
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_verbs_actions_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "kiln.bash"
    script.write_text(_script("bash", capsys))
    assert sorted(_complete(script, "kiln", "")) == sorted(VERBS)
    assert _complete(script, "kiln", "ve") == ["verify", "verify-attestation"]
    assert _complete(script, "kiln", "key", "") == ["generate"]
    assert "--format" in _complete(script, "kiln", "build", "--f")
    assert "--source-date-epoch" in _complete(script, "kiln", "build", "x.yaml", "--s")
    assert _complete(script, "kiln", "completion", "") == ["bash", "zsh"]
    assert "--once" in _complete(script, "kiln", "agent", "reconcile", "--")
    (tmp_path / "image.yaml").write_text("x")
    assert _complete(script, "kiln", "build", str(tmp_path / "ima")) == [str(tmp_path / "image.yaml")]


def test_zsh_script(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = _script("zsh", capsys)
    assert text.startswith("#compdef kiln\n")
    assert "bashcompinit" in text
    zsh = shutil.which("zsh")
    if zsh is not None:  # not a Debian test dependency: checked when present
        script = tmp_path / "_kiln"
        script.write_text(text)
        subprocess.run([zsh, "-n", str(script)], check=True, timeout=60)
