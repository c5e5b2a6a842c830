"""The wrapper `make test` runs pytest in: the host root is read-only, the command really runs, and
its exit status comes back (a wrapper that silently ran nothing would make a green CI meaningless)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import require_root

WRAPPER = Path(__file__).resolve().parent.parent / ".ci" / "sandboxed"


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WRAPPER), "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_command_runs_and_its_exit_status_comes_back() -> None:
    proc = _run("echo ran; exit 7")
    assert proc.stdout.strip() == "ran"
    assert proc.returncode == 7


def test_the_host_root_is_read_only_and_temp_is_writable(tmp_path: Path) -> None:
    require_root("the wrapper only confines root")
    marker = f"/usr/kiln-sandbox-probe-{os.getpid()}"
    proc = _run(f"touch {marker}; echo $?; touch {tmp_path}/ok && echo tmp-ok")
    lines = proc.stdout.split()
    assert lines[0] != "0", "writing under /usr succeeded inside the sandbox"
    assert "Read-only file system" in proc.stderr
    assert lines[1] == "tmp-ok"
    assert not Path(marker).exists()
    assert (tmp_path / "ok").exists()


def test_network_namespaces_are_private_to_the_run() -> None:
    require_root("ip netns needs root")
    name = f"kiln-sandbox-probe-{os.getpid()}"
    proc = _run(f"ip netns add {name} && ip netns list")
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout
    assert not Path("/run/netns", name).exists()  # the host never saw it


@pytest.mark.parametrize("path", ["/etc/passwd", "/usr/bin/env"])
def test_host_files_cannot_be_removed(path: str) -> None:
    require_root("the wrapper only confines root")
    proc = _run(f"rm -f {path}; test -e {path} && echo still-there")
    assert proc.stdout.strip() == "still-there"
    assert Path(path).exists()
