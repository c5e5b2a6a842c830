"""`kiln inspect` opens what kiln writes and a registry image; `kiln verify` on a channel tag
(acceptance 6), and a refusal that says no signature matched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from kiln.testing import private_registry
from tests.support import require_tool

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-static" / "hello.yaml"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    data = json.loads(captured.out) if "--json" in argv and captured.out.strip() else captured.out
    return code, data, captured.err


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("inspect")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_PASSWORD", "inspect-test")
    mp.setenv("KILN_CACHE_DIR", str(base / "cache"))
    try:
        assert main(["build", str(EXAMPLE), "-o", str(base / "img"), "-q"]) == 0
        assert (
            main(["build", str(EXAMPLE), "-o", str(base / "img.tar"), "--format", "oci-archive", "-q"]) == 0
        )
        for name in ("a", "b", "c"):
            assert main(["key", "generate", "--out", str(base / name), "-q"]) == 0
    finally:
        mp.undo()
    return {"base": base}


def test_inspect_opens_every_form(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    require_tool("docker-registry", "docker-registry")
    base: Path = built["base"]
    code, first, _ = _run(capsys, "inspect", "--no-files", "--json", str(base / "img"))
    assert code == 0
    digest = first["digest"]
    with private_registry(tmp_path / "registry") as host:
        assert main(["publish", str(base / "img"), f"{host}/demo/hello", "--insecure", "-q"]) == 0
        forms = [
            f"oci:{base / 'img'}:hello-static:1.0.0",  # the full reference, as skopeo names it
            f"oci:{base / 'img'}:1.0.0",  # the version alone
            f"{base / 'img'}@{digest}",
            str(base / "img.tar"),
            f"{host}/demo/hello:1.0.0",
            f"{host}/demo/hello@{digest}",
        ]
        for form in forms:
            extra = ["--insecure"] if form.startswith(host) else []
            code, data, err = _run(capsys, "inspect", "--no-files", "--json", *extra, form)
            assert code == 0, (form, err)
            assert data["digest"] == digest, form
            code, text, err = _run(capsys, "inspect", "--no-files", *extra, form)
            assert code == 0, (form, err)
            assert 'entrypoint ["/bin/busybox", "echo", "hello from kiln"]' in text, text
            assert "['" not in text  # no Python reprs


def test_verify_accepts_a_channel_tag(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("docker-registry", "docker-registry")
    base: Path = built["base"]
    monkeypatch.setenv("KILN_PASSWORD", "inspect-test")
    image = tmp_path / "img"
    assert main(["build", str(EXAMPLE), "-o", str(image), "-q", "--no-cache"]) == 0
    with private_registry(tmp_path / "registry") as host:
        repo = f"{host}/demo/hello"
        assert main(["sign", "--key", str(base / "a.key"), "--identity", repo, "-q", f"oci:{image}"]) == 0
        assert main(["publish", str(image), repo, "--channel", "stable", "--insecure", "-q"]) == 0
        assert main(["publish", str(image), f"oci:{tmp_path / 'reg'}", "--channel", "stable", "-q"]) == 0
        code, _, err = _run(capsys, "verify", "--key", str(base / "a.pub"), f"{repo}:stable", "--insecure")
        assert code == 0, err
        code, _, err = _run(
            capsys,
            "verify",
            "--key",
            str(base / "a.pub"),
            "--identity",
            repo,
            f"oci:{tmp_path / 'reg'}:stable",
        )
        assert code == 0, err
        # Another repository is still refused: the repository is compared, only the tag is not.
        code, _, err = _run(
            capsys, "verify", "--key", str(base / "a.pub"), "--identity", f"{host}/demo/other",
            f"oci:{tmp_path / 'reg'}:stable",
        )  # fmt: skip
        assert code == 3
        assert "expected" in err


def test_no_matching_signature_says_none_matched(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base: Path = built["base"]
    monkeypatch.setenv("KILN_PASSWORD", "inspect-test")
    image = tmp_path / "img"
    assert main(["build", str(EXAMPLE), "-o", str(image), "-q", "--no-cache"]) == 0
    for key in ("a", "b"):
        assert main(["sign", "--key", str(base / f"{key}.key"), "--identity", "reg.example/hello", "-q",
                     f"oci:{image}"]) == 0  # fmt: skip
    code, data, err = _run(
        capsys,
        "verify",
        "--key",
        str(base / "c.pub"),
        "--identity",
        "reg.example/hello",
        f"oci:{image}",
        "--json",
    )
    assert code == 3
    message = data["error"]["message"]
    assert message.startswith("none of the 2 signatures on sha256:")
    assert "signature layer 0:" in message
    assert "signature layer 1:" in message
    assert "kiln: error: none of the 2 signatures" in err
