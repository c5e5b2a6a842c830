"""One exit-code table (0 ok, 1 failure, 2 usage, 3 refused), and one JSON object for every failure.

Every verb appears in the table below with at least one failing command line; a failure run with
``--json`` prints exactly one object on stdout::

    {"version": 1, "error": {"message", "hint", "exit_code", "problems": [{"file", "line",
     "column", "path", "message"}]}}

whose ``exit_code`` is the process's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import VERBS, main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-static" / "hello.yaml"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A built hello-static layout signed with one key, and another key that did not sign it."""
    base = tmp_path_factory.mktemp("exitcodes")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_PASSWORD", "test-pass")
    try:
        assert main(["build", str(EXAMPLE), "-o", str(base / "img"), "--no-cache", "-q"]) == 0
        assert main(["key", "generate", "--out", str(base / "good"), "-q"]) == 0
        assert main(["key", "generate", "--out", str(base / "other"), "-q"]) == 0
        assert main(["sign", "--key", str(base / "good.key"), "--identity", "example.org/hello", "-q",
                     f"oci:{base / 'img'}"]) == 0  # fmt: skip
    finally:
        mp.undo()
    (base / "bad.yaml").write_text("apiVersion: kiln.dev/v1\nkind: Image\nname: x\nversion: 1\nbogus: 1\n")
    return {"base": base, "img": base / "img", "bad": base / "bad.yaml"}


Case = Callable[[dict[str, Path]], list[str]]

# verb -> [(failing command line, expected exit code)]; 1 failure, 2 usage, 3 refused.
TABLE: dict[str, list[tuple[Case, int]]] = {
    "validate": [(lambda p: ["validate", str(p["bad"])], 1), (lambda p: ["validate"], 2)],
    "build": [
        (lambda p: ["build", str(p["base"] / "missing.yaml")], 1),
        (lambda p: ["build", str(EXAMPLE), "--source-date-epoch", "yesterday"], 2),
        (lambda p: ["build", str(EXAMPLE), "--name", "Not A Name"], 1),
    ],
    "inspect": [(lambda p: ["inspect", str(p["base"] / "nothing")], 1), (lambda p: ["inspect"], 2)],
    "key": [(lambda p: ["key", "generate", "--out", str(p["base"] / "good")], 1), (lambda p: ["key"], 2)],
    "sign": [(lambda p: ["sign", "--key", str(p["base"] / "good.key"), f"oci:{p['img']}"], 2)],
    "verify": [
        (lambda p: ["verify", f"oci:{p['img']}"], 2),  # no --key: a usage error, not a failure
        (lambda p: ["verify", "--key", str(p["base"] / "good.pub"), f"oci:{p['img']}"], 2),  # no --identity
        (
            lambda p: [
                "verify",
                "--key",
                str(p["base"] / "other.pub"),
                "--identity",
                "example.org/hello",
                f"oci:{p['img']}",
            ],
            3,
        ),
    ],
    "attest": [(lambda p: ["attest", "--key", str(p["base"] / "good.key"), f"oci:{p['base'] / 'none'}"], 1)],
    "verify-attestation": [
        (lambda p: ["verify-attestation", "--type", "spdx", f"oci:{p['img']}"], 2),
        (
            lambda p: [
                "verify-attestation",
                "--key",
                str(p["base"] / "good.pub"),
                "--type",
                "spdx",
                f"oci:{p['img']}",
            ],
            3,  # never attested: nothing verifies
        ),
    ],
    "publish": [(lambda p: ["publish", str(p["img"]), f"oci:{p['base'] / 'reg'}:1.0"], 2)],
    "pull": [(lambda p: ["pull", f"oci:{p['base'] / 'none'}:1.0", str(p["base"] / "pulled")], 1)],
    "copy": [(lambda p: ["copy", f"oci:{p['img']}", f"oci:{p['base'] / 'c'}@sha256:{'0' * 64}"], 2)],
    "release": [(lambda p: ["release", "sign", "--key", str(p["base"] / "good.key")], 2)],
    "root": [
        (
            lambda p: [
                "root",
                "init",
                "--root-key",
                str(p["base"] / "good.pub"),
                "--release-key",
                str(p["base"] / "good.pub"),
                "--image-key",
                str(p["base"] / "good.pub"),
                "--version",
                "0",
                "-o",
                str(p["base"] / "root.yaml"),
            ],
            2,
        )
    ],
    "completion": [(lambda p: ["completion", "fish"], 2)],
    "boot": [(lambda p: ["boot", str(p["base"] / "nothing")], 1), (lambda p: ["boot"], 2)],
    "fleet": [
        (lambda p: ["fleet", "status", "--etcd", "http://127.0.0.1:9", "--name", "prod"], 1),
        (lambda p: ["fleet", "status"], 2),
    ],
    "lock": [(lambda p: ["lock", str(p["base"] / "missing.yaml")], 1), (lambda p: ["lock"], 2)],
    "agent": [
        (lambda p: ["agent", "status", "--config", str(p["base"] / "no-agent.yaml")], 1),
        (lambda p: ["agent", "nope"], 2),
    ],
}

CASES = [(verb, i) for verb, cases in TABLE.items() for i in range(len(cases))]


def test_the_table_covers_every_verb() -> None:
    assert set(TABLE) == set(VERBS)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("verb", "index"), CASES)
def test_failure_exit_code_and_json(
    verb: str, index: int, signed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = TABLE[verb][index]
    argv = make(signed)
    code, out, err = _run(argv, capsys)
    assert code == expected, (argv, err)
    assert out == "", "a failure prints nothing on stdout without --json"
    assert "Traceback" not in err, err
    assert "internal error" not in err, err

    code, out, _err = _run([*argv, "--json"], capsys)
    assert code == expected
    doc: Any = json.loads(out)  # exactly one JSON document: json.loads refuses trailing data
    assert set(doc) == {"version", "error"}
    assert doc["version"] == 1
    error = doc["error"]
    assert set(error) == {"message", "hint", "exit_code", "problems"}
    assert error["exit_code"] == expected
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["hint"] is None or isinstance(error["hint"], str)
    for problem in error["problems"]:
        assert set(problem) == {"file", "line", "column", "path", "message"}


def test_manifest_problems_are_listed(signed: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["validate", str(signed["bad"]), "--json"], capsys)
    assert code == 1
    problems = json.loads(out)["error"]["problems"]
    bogus = [p for p in problems if p["path"] == "bogus"]
    assert len(bogus) == 1, problems
    assert {"file": str(signed["bad"]), "line": 5, "column": 1}.items() <= bogus[0].items()
    assert "unknown key" in bogus[0]["message"]
    assert any(p["path"] == "contents" for p in problems)  # every problem, not only the first


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["version"] == 1
    assert isinstance(doc["kiln"], str)
    code, out, _ = _run(["--version"], capsys)
    assert out.startswith("kiln ")


def test_key_generate_refuses_a_directory_as_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_PASSWORD", "pw")
    for out in (f"{tmp_path}/", str(tmp_path)):
        assert main(["key", "generate", "--out", out, "-q"]) == 2
    assert list(tmp_path.iterdir()) == []  # no hidden .key/.pub written into it
