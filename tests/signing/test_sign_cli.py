"""The signing verbs through ``kiln.cli.main`` (no subprocess): exit codes and messages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from builder.attestations import slsa_provenance, spdx_document
from builder.build import PROVENANCE_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE, record_artifact
from kiln import cli
from kiln.cmd_sign import parse_image_ref
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.oci import Descriptor
from tests.signing.conftest import flip, write_image


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("KILN_PASSWORD", "pw")
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def layout(env: Path) -> OCILayout:
    lay = OCILayout.create(env / "img")
    desc = write_image(lay)
    sbom = canonical_json(
        spdx_document("img", "1", desc.digest, [("a", "11" * 32, 1)], [], "1970-01-01T00:00:00Z")
    )
    prov = canonical_json(slsa_provenance("img", desc.digest, Digest("bb" * 32), [], "0.1.0"))
    image = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
    for data, kind in ((sbom, SBOM_ARTIFACT_TYPE), (prov, PROVENANCE_ARTIFACT_TYPE)):
        lay.add(record_artifact(lay, image, data, kind, created="1970-01-01T00:00:00Z"))
    lay.tag(image, "v1")
    return lay


@pytest.mark.parametrize(
    ("text", "directory", "tag", "digest"),
    [
        ("oci:out/img", "out/img", None, None),
        ("oci:out/img:v1", "out/img", "v1", None),
        ("out/img:v1", "out/img", "v1", None),
        ("oci:/a:b/img", "/a:b/img", None, None),
        ("oci:img@sha256:" + "ab" * 32, "img", None, "sha256:" + "ab" * 32),
    ],
)
def test_parse_image_ref(text: str, directory: str, tag: str | None, digest: str | None) -> None:
    ref = parse_image_ref(text)
    assert (str(ref.directory), ref.tag, str(ref.digest) if ref.digest else None) == (directory, tag, digest)


def test_key_generate_sign_verify(layout: OCILayout, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["key", "generate", "--out", "k"], capsys)
    assert code == 0, err
    assert "BEGIN ENCRYPTED COSIGN PRIVATE KEY" in Path("k.key").read_text()
    assert Path("k.key").stat().st_mode & 0o777 == 0o600
    assert run(["key", "generate", "--out", "k"], capsys)[0] == 1  # no overwrite without --force

    code, out, err = run(["sign", "--key", "k.key", "--identity", "reg.example/img", "oci:img:v1"], capsys)
    assert code == 0, err
    code, out, err = run(
        ["verify", "--key", "k.pub", "--identity", "reg.example/img", "oci:img:v1", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["version"] == 1

    code, out, err = run(
        ["verify", "--key", "k.pub", "--identity", "reg.example/other", "oci:img:v1"], capsys
    )
    assert code == 3
    assert "expected 'reg.example/other'" in err


def test_wrong_passphrase_exit_1(
    layout: OCILayout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["key", "generate", "--out", "k"], capsys)[0] == 0
    monkeypatch.setenv("KILN_PASSWORD", "nope")
    code, _, err = run(["sign", "--key", "k.key", "--identity", "r", "oci:img:v1"], capsys)
    assert code == 1
    assert "wrong passphrase" in err
    assert "Traceback" not in err


def test_tampered_key_file_exit_1(layout: OCILayout, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["key", "generate", "--out", "k"], capsys)[0] == 0
    Path("k.key").write_bytes(Path("k.key").read_bytes()[:-40])
    code, _, err = run(["sign", "--key", "k.key", "--identity", "r", "oci:img:v1"], capsys)
    assert code == 1
    assert "kiln: error: key file 'k.key': PEM block" in err
    assert "Traceback" not in err


def test_no_passphrase_without_terminal(
    layout: OCILayout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KILN_PASSWORD")
    code, _, err = run(["key", "generate", "--out", "k"], capsys)
    assert code == 1
    assert "no passphrase" in err
    assert "KILN_PASSWORD" in err


def test_passphrase_file_and_cosign_password(
    layout: OCILayout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("pw.txt").write_text("secret\n")
    assert run(["key", "generate", "--out", "k", "--passphrase-file", "pw.txt"], capsys)[0] == 0
    monkeypatch.delenv("KILN_PASSWORD")
    monkeypatch.setenv("COSIGN_PASSWORD", "secret")
    code, _, err = run(["sign", "--key", "k.key", "--identity", "r", "oci:img:v1"], capsys)
    assert code == 0, err


def test_verify_refuses_a_flipped_layer(layout: OCILayout, capsys: pytest.CaptureFixture[str]) -> None:
    run(["key", "generate", "--out", "k"], capsys)
    run(["sign", "--key", "k.key", "--identity", "r", "oci:img:v1"], capsys)
    from manifests.oci import OCIManifest

    root = layout.resolve("v1")
    blob = layout.blob_path(OCIManifest.from_bytes(layout.read_blob(root.digest)).layers[0].digest)
    blob.write_bytes(flip(blob.read_bytes(), 1))
    code, _, err = run(["verify", "--key", "k.pub", "--identity", "r", "oci:img:v1"], capsys)
    assert code == 3
    assert "digest mismatch" in err


def test_attest_and_verify_attestation(layout: OCILayout, capsys: pytest.CaptureFixture[str]) -> None:
    run(["key", "generate", "--out", "k", "--algorithm", "ed25519"], capsys)
    code, _, err = run(["attest", "--key", "k.key", "oci:img:v1"], capsys)
    assert code == 0, err
    code, out, err = run(["verify-attestation", "--key", "k.pub", "--type", "spdx", "oci:img:v1"], capsys)
    assert code == 0, err
    assert json.loads(out)["spdxVersion"] == "SPDX-2.3"
    code, out, err = run(
        ["verify-attestation", "--key", "k.pub", "--type", "slsaprovenance", "oci:img:v1", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["predicate"]["runDetails"]["builder"]["version"] == {"kiln": "0.1.0"}
    run(["key", "generate", "--out", "other"], capsys)
    code, _, err = run(["verify-attestation", "--key", "other.pub", "--type", "spdx", "oci:img:v1"], capsys)
    assert code == 3


def test_verify_with_policy(layout: OCILayout, capsys: pytest.CaptureFixture[str]) -> None:
    run(["key", "generate", "--out", "k"], capsys)
    run(["sign", "--key", "k.key", "--identity", "reg.example/img", "oci:img:v1"], capsys)
    pem = "".join("      " + line + "\n" for line in Path("k.pub").read_text().splitlines())
    Path("policy.yaml").write_text(
        f"version: 1\nkeys:\n  k:\n    public_key: |\n{pem}"
        "rules:\n  - repositories: ['reg.example/*']\n    keys: [k]\n"
    )
    code, _, err = run(
        ["verify", "--policy", "policy.yaml", "--identity", "reg.example/img", "oci:img:v1"], capsys
    )
    assert code == 0, err
    Path("policy.yaml").write_text("")
    code, _, err = run(
        ["verify", "--policy", "policy.yaml", "--identity", "reg.example/img", "oci:img:v1"], capsys
    )
    assert code == 3
    assert "trust policy is empty" in err
