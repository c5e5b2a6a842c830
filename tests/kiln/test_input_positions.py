"""Input errors keep their place in the manifest (acceptance 7): a missing ``src`` and a non-ELF
``closure`` path are ``FILE:LINE:COL: path: message``, from `kiln validate` and from `kiln build`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: positions
version: 1.0.0
contents:
  - files:
      - {src: app/server.py, dst: /app/server.py}
      - {src: app/missing.py, dst: /app/missing.py}
  - closure:
      paths: [/bin/true, /etc/hostname]
entrypoint: [/bin/true]
"""

TOML = """\
apiVersion = "kiln.dev/v1"
kind = "Image"
name = "positions"
version = "1.0.0"
entrypoint = ["/bin/true"]

[[contents]]
closure = { paths = ["/bin/true", "/etc/hostname"] }
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text("print('hi')\n")
    return tmp_path


@pytest.mark.parametrize("verb", ["validate", "build"])
def test_missing_src_is_reported_at_its_place(
    verb: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project / "image.yaml"
    manifest.write_text(MANIFEST)
    extra = ["-o", str(project / "out")] if verb == "build" else []
    assert main([verb, str(manifest), *extra]) == 1
    err = capsys.readouterr().err
    assert f"kiln: error: {manifest}:8:10: contents[0].files[1].src: " in err
    assert "app/missing.py: no such file or directory" in err
    assert not (project / "out").exists()


@pytest.mark.parametrize("verb", ["validate", "build"])
def test_non_elf_closure_path_is_reported_at_its_place(
    verb: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project / "image.yaml"
    manifest.write_text(MANIFEST.replace("      - {src: app/missing.py, dst: /app/missing.py}\n", ""))
    extra = ["-o", str(project / "out")] if verb == "build" else []
    assert main([verb, str(manifest), *extra, "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["message"].startswith(
        f"{manifest}:9:26: contents[1].closure.paths[1]: /etc/hostname: not an ELF file"
    )
    assert error["problems"] == [
        {
            "file": str(manifest),
            "line": 9,
            "column": 26,
            "path": "contents[1].closure.paths[1]",
            "message": "/etc/hostname: not an ELF file "
            "(closure takes ELF executables and libraries; copy other files with files)",
        }
    ]


def test_toml_positions_too(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = project / "image.toml"
    manifest.write_text(TOML)
    assert main(["validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert f"kiln: error: {manifest}:8:" in err
    assert "contents[0].closure.paths[1]: /etc/hostname: not an ELF file" in err


def test_validate_passes_when_the_inputs_exist(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = project / "image.yaml"
    manifest.write_text(MANIFEST.replace("      - {src: app/missing.py, dst: /app/missing.py}\n", "")
                        .replace(", /etc/hostname", ""))  # fmt: skip
    assert main(["validate", str(manifest)]) == 0
    assert "valid" in capsys.readouterr().out
