"""``oci:DIR:NAME`` with the name a build writes (``hello-static:1.0.0``, its index's ref.name):
every verb that takes a layout reference finds the image by it, as skopeo's ``oci:`` transport
does, and a missing or ambiguous name is one clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import main
from manifests.errors import DocumentError
from manifests.layout import REF_NAME, OCILayout
from manifests.layoutref import parse_layout_reference
from tests.publisher.conftest import Target, _registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-static" / "hello.yaml"
NAME = "hello-static:1.0.0"
IDENTITY = ("--identity", "example.org/hello")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _registry(tmp_path_factory.mktemp("names-reg"), "plain")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("names")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_PASSWORD", "test-pass")
    try:
        assert main(["build", str(EXAMPLE), "-o", str(base / "img"), "--no-cache", "-q"]) == 0
        assert main(["key", "generate", "--out", str(base / "k"), "-q"]) == 0
    finally:
        mp.undo()
    index = json.loads((base / "img" / "index.json").read_bytes())
    assert NAME in {m.get("annotations", {}).get(REF_NAME) for m in index["manifests"]}
    return base


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sign_and_verify_by_the_build_s_name(
    built: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_PASSWORD", "test-pass")
    ref = f"oci:{built / 'img'}:{NAME}"
    code, _, err = run(capsys, "sign", "--key", str(built / "k.key"), *IDENTITY, "-q", ref)
    assert code == 0, err
    code, _, err = run(capsys, "verify", "--key", str(built / "k.pub"), *IDENTITY, ref)
    assert code == 0, err


def test_inspect_by_the_build_s_name(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", f"oci:{built / 'img'}:{NAME}", "--no-files", "--json")
    assert code == 0, err
    assert json.loads(out)


def test_publish_pull_and_copy_by_the_build_s_name(
    built: Path, registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"oci:{built / 'img'}:{NAME}"
    digest = OCILayout.open(built / "img").tags()[NAME].digest
    code, out, err = run(capsys, "publish", src, f"oci:{tmp_path / 'pub'}")
    assert code == 0, err
    assert out.splitlines()[0].endswith(f"@{digest}")
    host = registry.registry.host
    code, out, err = run(capsys, "publish", src, f"{host}/names/pub", "--insecure")
    assert code == 0, err
    assert out.splitlines()[0] == f"{host}/names/pub@{digest}"

    code, _, err = run(capsys, "pull", src, str(tmp_path / "pulled"))
    assert code == 0, err
    assert OCILayout.open(tmp_path / "pulled").tags()[NAME].digest == digest

    # Into a layout the name is kept whole; into a registry repository its tag part names it.
    code, _, err = run(capsys, "copy", src, f"oci:{tmp_path / 'copied'}")
    assert code == 0, err
    assert OCILayout.open(tmp_path / "copied").tags()[NAME].digest == digest
    code, _, err = run(capsys, "copy", src, f"{host}/names/copied", "--insecure")
    assert code == 0, err
    code, _, err = run(capsys, "pull", f"{host}/names/copied:1.0.0", str(tmp_path / "back"), "--insecure")
    assert code == 0, err
    assert OCILayout.open(tmp_path / "back").tags()["1.0.0"].digest == digest

    # A new layout named the way skopeo names one: the first colon ends the directory.
    code, _, err = run(capsys, "copy", src, f"oci:{tmp_path / 'fresh'}:other:2")
    assert code == 0, err
    assert OCILayout.open(tmp_path / "fresh").tags()["other:2"].digest == digest
    # An existing layout ends the directory, so a name may hold a slash too.
    code, _, err = run(capsys, "copy", src, f"oci:{tmp_path / 'fresh'}:example.com/other:3")
    assert code == 0, err
    assert OCILayout.open(tmp_path / "fresh").tags()["example.com/other:3"].digest == digest


@pytest.mark.parametrize("verb", ["verify", "inspect", "publish", "pull", "copy"])
def test_a_missing_name_is_one_clear_error(
    verb: str, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"oci:{built / 'img'}:hello-static:9.9.9"
    argv = {
        "verify": ["verify", "--key", str(built / "k.pub"), *IDENTITY, ref],
        "inspect": ["inspect", ref],
        "publish": ["publish", ref, f"oci:{tmp_path / 'out'}"],
        "pull": ["pull", ref, str(tmp_path / "out")],
        "copy": ["copy", ref, f"oci:{tmp_path / 'out'}"],
    }[verb]
    code, _, err = run(capsys, *argv)
    assert code == 1, err
    assert "hello-static:9.9.9" in err
    assert "Traceback" not in err


def test_a_tag_shared_by_two_names_is_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(EXAMPLE), "-o", str(tmp_path / "img"), "--no-cache", "-q"]) == 0
    layout = OCILayout.open(tmp_path / "img")
    untagged = next(d for d in layout.index().manifests if REF_NAME not in d.annotations)
    layout.tag(untagged, "other:1.0.0")  # another manifest whose name ends in the same tag
    capsys.readouterr()
    code, _, err = run(capsys, "inspect", f"oci:{tmp_path / 'img'}:1.0.0")
    assert code == 1
    assert "ambiguous" in err
    assert "hello-static:1.0.0" in err
    assert "other:1.0.0" in err
    code, _, err = run(capsys, "inspect", f"oci:{tmp_path / 'img'}:{NAME}", "--no-files")
    assert code == 0, err


def test_two_layouts_a_reference_could_name_are_refused(tmp_path: Path) -> None:
    for d in ("x", "x:y"):
        OCILayout.create(tmp_path / d)
    with pytest.raises(DocumentError, match="ambiguous"):
        parse_layout_reference(f"oci:{tmp_path}/x:y:z")
    ref = parse_layout_reference(f"oci:{tmp_path}/x:y")  # an existing directory is itself
    assert ref.directory == tmp_path / "x:y"
    assert ref.name is None


def test_names_outside_the_ref_name_grammar_are_refused(tmp_path: Path) -> None:
    OCILayout.create(tmp_path / "none")
    with pytest.raises(DocumentError, match="invalid image name"):
        parse_layout_reference(f"oci:{tmp_path}/none:bad name")
    ref = parse_layout_reference(f"oci:{tmp_path}/none:example.com/app:1.0+b.2")
    assert ref.directory == tmp_path / "none"
    assert ref.name == "example.com/app:1.0+b.2"
