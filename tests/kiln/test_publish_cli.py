"""``kiln publish`` at the front door: the pinned reference on stdout, ``--json``, exit codes, and one
clean error line for every refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from manifests.layout import OCILayout
from tests.publisher.conftest import Target, _registry
from tests.publisher.test_publish_kit import make_image

JSON_KEYS = {
    "version",
    "reference",
    "digest",
    "tags",
    "blobs",
    "changed",
    "tag_changes",
    "signatures",
    "image_version",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_publish_to_oci_dir_twice_second_is_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = make_image(tmp_path / "src", version="1.2.0", attest=True)
    dest = f"oci:{tmp_path / 'registry'}"
    code, out, err = run(capsys, "publish", str(tmp_path / "src"), dest, "--channel", "stable")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{dest}@{desc.digest}"
    assert "1.2.0" in lines[1]
    assert "created" in lines[1]
    assert "stable" in lines[2]
    assert "already published" not in out
    code, out, err = run(capsys, "publish", f"oci:{tmp_path / 'src'}:1.2.0", dest, "--channel", "stable")
    assert code == 0, err
    assert out.splitlines()[0] == f"{dest}@{desc.digest}"
    assert out.splitlines()[-1] == "  already published: nothing changed"


def test_publish_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = make_image(tmp_path / "src", version="1.2.0+build.3", tag="1.2.0_build.3")
    dest = f"oci:{tmp_path / 'registry'}"
    code, out, err = run(capsys, "publish", str(tmp_path / "src"), dest, "--channel", "edge", "--json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    assert set(data) == JSON_KEYS
    assert data["version"] == 1
    assert data["reference"] == f"{dest}@{desc.digest}"
    assert data["digest"] == str(desc.digest)
    assert data["tags"] == ["1.2.0_build.3", "edge"]
    assert data["image_version"] == "1.2.0+build.3"
    assert data["blobs"] == {"uploaded": 0, "existed": 0, "mounted": 4}  # hard links: same filesystem
    assert data["changed"] is True
    assert [c["action"] for c in data["tag_changes"]] == ["created", "created"]
    assert OCILayout.open(tmp_path / "registry").tags()["edge"].digest == desc.digest


def test_conflicting_version_exits_1_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_image(tmp_path / "a", version="2.0.0", layer=b"a")
    second = make_image(tmp_path / "b", version="2.0.0", layer=b"b")
    dest = f"oci:{tmp_path / 'registry'}"
    assert run(capsys, "publish", str(tmp_path / "a"), dest)[0] == 0
    code, out, err = run(capsys, "publish", str(tmp_path / "b"), dest, "--json")
    assert code == 1
    assert json.loads(out)["error"]["exit_code"] == 1  # --json: one error object on stdout
    assert "already holds" in json.loads(out)["error"]["message"]
    errors = [line for line in err.splitlines() if line.startswith("kiln: error:")]
    assert errors == [
        f"kiln: error: {dest}:2.0.0 already holds {first.digest}; refusing to point it at {second.digest}"
    ]
    assert "kiln: hint: a version tag is immutable" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["publish", "SRC", "oci:DEST:1.0"], "kiln: error: publish names the repository only"),
        (["publish", "SRC", "registry/app"], "kiln: error: 'registry/app' names no registry"),
        (["publish", "example.test/app:1", "oci:DEST"], "kiln: error: publish takes a built OCI layout"),
        (["publish", "SRC", "oci:DEST", "--channel", "bad tag"], "kiln: error: invalid tag 'bad tag'"),
        (
            ["publish", "SRC", "oci:DEST", "--channel", "1.0.0"],
            "kiln: error: channel '1.0.0' is the version tag",
        ),
        (["publish", "SRC:nope", "oci:DEST"], "kiln: error: oci:SRC: no tag 'nope'"),
        (["publish", "MISSING", "oci:DEST"], "kiln: error: MISSING: not an OCI image layout"),
    ],
)
def test_refusals_are_one_clean_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "src", version="1.0.0")
    subst = {
        "SRC": str(tmp_path / "src"),
        "DEST": str(tmp_path / "dest"),
        "MISSING": str(tmp_path / "missing"),
    }

    def fill(arg: str) -> str:
        for key, value in subst.items():
            arg = arg.replace(key, value)
        return arg

    argv = [fill(a) for a in argv]
    if argv[1].endswith(":nope"):
        argv[1] = "oci:" + argv[1]
    code, out, err = run(capsys, *argv)
    usage = ("publish names the repository only", "publish takes a built OCI layout")
    assert code == (2 if any(u in message for u in usage) else 1)  # 2: the command line is wrong
    assert out == ""
    assert err.splitlines()[0].startswith(fill(message)), err
    assert "Traceback" not in err
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("jobs", ["0", "65", "x"])
def test_bad_jobs_is_a_usage_error(jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["publish", str(tmp_path), f"oci:{tmp_path / 'd'}", "--jobs", jobs])
    assert exc.value.code == 2
    assert "--jobs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _registry(tmp_path_factory.mktemp("cli-reg"), "plain")


@pytest.mark.integration
def test_publish_to_a_registry_prints_the_pinned_reference(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = make_image(tmp_path / "src", version="7.0.0", attest=True)
    dest = f"{registry.registry.host}/cli/app"
    code, out, err = run(
        capsys, "publish", str(tmp_path / "src"), dest, "--insecure", "--json", "--jobs", "2"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["reference"] == f"{dest}@{desc.digest}"
    assert data["blobs"] == {"uploaded": 6, "existed": 0, "mounted": 0}
    code, out, err = run(capsys, "publish", str(tmp_path / "src"), dest, "--insecure", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["changed"] is False
    assert again["blobs"] == {"uploaded": 0, "existed": 6, "mounted": 0}
