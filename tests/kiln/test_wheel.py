"""The wheel ships kiln's packages and nothing of its test infrastructure.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``; setuptools and wheel come
from the dev extra) from a copy of the sources in a temporary directory, so the checkout stays clean.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the packages the wheel is built from, as pyproject.toml names them (one list, not two)
PACKAGES = tuple(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_the_wheel_does_not_ship_the_test_kit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = out.glob("kiln-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kiln/cli.py" in names
    assert "signing/image.py" in names
    assert "fleet/dashboard/index.html" in names, "the dashboard ships as package data"
    assert "kiln/testing.py" not in names
    assert not [n for n in names if n.startswith("tests/")]

    # Importing from the wheel alone (no site-packages, no checkout on the path): kiln is there,
    # kiln.testing is not.
    probe = (
        "import importlib.util, sys\n"
        f"sys.path[:] = [{str(wheel)!r}, *[p for p in sys.path if 'site-packages' not in p and p]]\n"
        "import kiln\n"
        "assert kiln.__file__.startswith(sys.path[0]), kiln.__file__\n"
        "try:\n"
        "    import kiln.testing\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('refused:', exc.name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", probe],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused: kiln.testing"
