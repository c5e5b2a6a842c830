"""SBOM and provenance are OCI 1.1 artifacts about the image (ADR 0018): tools that keep or copy
what a layout references keep them (acceptance 4), and `kiln publish` pushes them as referrers.

- `umoci gc` keeps them (they are listed in index.json): `kiln attest` still finds the records,
  `kiln verify-attestation` the signed statements;
- `skopeo copy` of the image, of its referrers index (``sha256-<hex>``, the referrers tag schema,
  with ``--all``) and of cosign's ``.att`` tag carries them: both verbs work on the copy;
- `kiln publish` to a real registry (Debian's, which lacks the referrers API) pushes them under the
  ``sha256-<hex>`` fallback tag.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from kiln.cli import main
from kiln.testing import private_registry
from tests.integration.helpers import EXAMPLES
from tests.support import require_tool

pytestmark = pytest.mark.integration

MANIFEST = EXAMPLES / "hello-static" / "hello.yaml"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KILN_PASSWORD", "referrers-test")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["key", "generate", "--out", str(tmp_path / "k"), "-q"]) == 0
    return tmp_path


def _kiln_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    code = main([*argv, "--json", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    result: dict[str, object] = json.loads(out)
    return result


def _verify_both(capsys: pytest.CaptureFixture[str], env: Path, image: str) -> None:
    spdx = _kiln_json(capsys, "verify-attestation", "--key", str(env / "k.pub"), "--type", "spdx", image)
    assert spdx["predicate"]["spdxVersion"] == "SPDX-2.3"  # type: ignore[index]
    prov = _kiln_json(
        capsys, "verify-attestation", "--key", str(env / "k.pub"), "--type", "slsaprovenance", image
    )
    assert prov["predicate"]["buildDefinition"]["resolvedDependencies"]  # type: ignore[index]


def test_umoci_gc_keeps_the_records(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("umoci", "umoci")
    layout = env / "img"
    assert main(["build", str(MANIFEST), "-o", str(layout), "-q"]) == 0
    blobs = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    subprocess.run(["umoci", "gc", "--layout", str(layout)], check=True, capture_output=True, timeout=120)
    assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == blobs  # nothing dropped
    _kiln_json(capsys, "attest", "--key", str(env / "k.key"), f"oci:{layout}")
    subprocess.run(["umoci", "gc", "--layout", str(layout)], check=True, capture_output=True, timeout=120)
    _verify_both(capsys, env, f"oci:{layout}")


def test_skopeo_copy_carries_the_records(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("skopeo", "skopeo")
    src = env / "img"
    built = _kiln_json(capsys, "build", str(MANIFEST), "-o", str(src))
    digest = str(built["digest"])
    _kiln_json(capsys, "attest", "--key", str(env / "k.key"), f"oci:{src}")
    dest = env / "copy"
    hex_ = digest.removeprefix("sha256:")
    for tag, extra in (("hello-static:1.0.0", []), (f"sha256-{hex_}", ["--all"]), (f"sha256-{hex_}.att", [])):
        subprocess.run(
            ["skopeo", "copy", *extra, f"oci:{src}:{tag}", f"oci:{dest}:{tag}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    _verify_both(capsys, env, f"oci:{dest}:hello-static:1.0.0")
    # The unsigned records came along too: the copy can be attested again.
    shutil.rmtree(src)
    attested = _kiln_json(capsys, "attest", "--key", str(env / "k.key"), f"oci:{dest}:hello-static:1.0.0")
    assert sorted(attested["types"]) == ["slsaprovenance", "spdx"]  # type: ignore[call-overload]


def test_publish_pushes_the_records_as_referrers(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("docker-registry", "docker-registry")
    layout = env / "img"
    built = _kiln_json(capsys, "build", str(MANIFEST), "-o", str(layout))
    hex_ = str(built["digest"]).removeprefix("sha256:")
    with private_registry(env / "registry") as host:
        _kiln_json(capsys, "publish", str(layout), f"{host}/demo/hello", "--insecure")
        accept = "application/vnd.oci.image.index.v1+json"
        resp = httpx.get(
            f"http://{host}/v2/demo/hello/manifests/sha256-{hex_}", headers={"Accept": accept}, timeout=30
        )
        assert resp.status_code == 200, resp.text
        listed = json.loads(resp.content)["manifests"]
        assert sorted(m["artifactType"] for m in listed) == [
            "application/spdx+json",
            "application/vnd.in-toto+json",
        ]
        for m in listed:
            man = httpx.get(
                f"http://{host}/v2/demo/hello/manifests/{m['digest']}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                timeout=30,
            ).json()
            assert man["subject"]["digest"] == built["digest"]
