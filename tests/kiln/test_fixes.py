"""Regressions found while documenting: reserved labels caught by `validate`, `inspect` on a signed
layout, a corrupt gzip layer reported cleanly, and `kiln ... | head` ending quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.build import build_image
from builder.inspect import inspect_image
from kiln.cli import main
from manifests.digest import Digest
from manifests.errors import DocumentError
from manifests.image_parse import load_image_manifest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: fixes
version: 0.1.0
contents:
  - dir: {path: /data}
entrypoint: [/bin/true]
"""


def _built(tmp_path: Path) -> Path:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    out = tmp_path / "layout"
    build_image(load_image_manifest(tmp_path / "m.yaml"), output=out)
    return out


def test_validate_refuses_a_reserved_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST + 'labels: {dev.kiln.writable: "[]"}\n')
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f'kiln: error: {path}:8:10: labels["dev.kiln.writable"]: the dev.kiln. prefix is reserved for '
        "the run-time policy kiln records (set writable, volumes, health, ports or accounts instead, or "
        "choose another label name)"
    )


def test_a_signed_layout_still_resolves_to_its_one_image(tmp_path: Path) -> None:
    out = _built(tmp_path)
    layout = OCILayout.open(out)
    image = layout.resolve(None)
    # What `kiln sign` adds beside an image: a manifest under cosign's tag for its digest.
    sig_config = layout.write_blob(b"{}")
    sig = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=sig_config, size=2), layers=()
    ).to_bytes()
    sig_digest = layout.write_blob(sig)
    layout.tag(
        Descriptor(media_type=MediaType.OCI_MANIFEST, digest=sig_digest, size=len(sig)),
        f"{image.digest.tag_form}.sig",
    )
    assert layout.resolve(None).digest == image.digest
    assert inspect_image(out)["digest"] == str(image.digest)


def test_a_corrupt_gzip_layer_is_a_clean_error(tmp_path: Path) -> None:
    out = _built(tmp_path)
    layout = OCILayout.open(out)
    man = OCIManifest.from_bytes(layout.read_blob(layout.resolve(None).digest, limit=1 << 20))
    layer = man.layers[0]
    blob = layout.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[10:-8] = b"\xff" * (len(data) - 18)  # damage the deflate stream, keep header, size, trailer
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(DocumentError, match="cannot decompress"):
        inspect_image(out)
    assert Digest.of(bytes(data)) != layer.digest


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    out = _built(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "inspect", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()  # the reader goes away, like `| head -c 1`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 141)  # 0 when everything fit in the pipe before it closed
    assert b"internal error" not in err
    assert b"Traceback" not in err


def test_a_filesystem_error_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_PASSWORD", "pw")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert main(["key", "generate", "--out", str(blocker / "demo")]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kiln: error:")]
    assert len(lines) == 1
    assert str(blocker) in lines[0]
