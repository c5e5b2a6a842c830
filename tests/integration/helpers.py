"""Run the real ``kiln`` command in a subprocess with a controlled environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXAMPLE_MANIFESTS = {
    "hello-static": Path("hello-static/hello.yaml"),
    "python-web": Path("python-web/python-web.yaml"),
    "hello-vm": Path("hello-vm/hello-vm.yaml"),
}


def kiln(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    umask: int | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO)

    def _pre() -> None:
        if umask is not None:
            os.umask(umask)

    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_pre if umask is not None else None,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def build_json(manifest: Path, output: Path, *extra: str, **kw: Any) -> dict[str, Any]:
    proc = kiln("build", str(manifest), "-o", str(output), "--json", *extra, **kw)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def copy_example(name: str, dest: Path, *, umask: int = 0o022) -> Path:
    """Copy an example directory (as a fresh checkout would have it) under ``umask``."""
    old = os.umask(umask)
    try:
        shutil.copytree(EXAMPLES / name, dest / name, copy_function=shutil.copyfile)
    finally:
        os.umask(old)
    # copyfile drops modes; restore the executable bits git would have checked out.
    for src in (EXAMPLES / name).rglob("*"):
        if src.is_file() and os.access(src, os.X_OK):
            target = dest / name / src.relative_to(EXAMPLES / name)
            target.chmod(0o777 & ~umask)
    return dest / EXAMPLE_MANIFESTS[name]
