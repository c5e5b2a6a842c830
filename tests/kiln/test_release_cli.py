"""The release and root verbs through ``kiln.cli.main`` (no subprocess)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from kiln import cli

DATA = Path(__file__).parent.parent / "data" / "release"
AT = ["--at", "2026-06-01T00:00:00Z"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # a usage error, from argparse, as the real command exits
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    monkeypatch.setenv("KILN_PASSWORD", "pw")
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "c", "d"):
        assert run(["key", "generate", "--out", name], capsys)[0] == 0
    shutil.copy(DATA / "production-42.yaml", "rel.yaml")
    return tmp_path


def test_release_round_trip(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        [
            "root",
            "init",
            "--root-key",
            "d.pub",
            "--release-key",
            "a.pub",
            "--release-key",
            "b.pub",
            "--image-key",
            "c.pub",
            "--image-repository",
            "registry.example/team/*",
            "--release-threshold",
            "2",
            "-o",
            "root.yaml",
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        run(
            [
                "root",
                "init",
                "--root-key",
                "d.pub",
                "--release-key",
                "a.pub",
                "--image-key",
                "c.pub",
                "-o",
                "root.yaml",
            ],
            capsys,
        )[0]
        == 1
    )  # never overwritten without --force

    code, _, err = run(["release", "sign", "--key", "a.key", "rel.yaml", "-o", "rel.dsse.json"], capsys)
    assert code == 0, err
    assert "signing release production v42" in err

    code, _, err = run(["release", "verify", "--root", "root.yaml", "rel.dsse.json", *AT], capsys)
    assert code == 3
    assert (
        "kiln: error: refused (threshold): release is signed by 1 distinct trusted key(s), 2 required" in err
    )

    code, out, err = run(
        ["release", "sign", "--key", "b.key", "--append", "rel.dsse.json", "rel.yaml", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["signatures"] == 2
    assert run(["release", "sign", "--key", "b.key", "rel.dsse.json"], capsys)[0] == 1  # b already signed

    code, out, err = run(
        ["release", "verify", "--root", "root.yaml", "rel.dsse.json", "--channel", "production", *AT], capsys
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("Verified release production v42 (sha256:")
    assert "  web     registry.example/team/hello-web@sha256:" + "1" * 64 in out

    code, out, err = run(["release", "verify", "--root", "root.yaml", "rel.dsse.json", "--json", *AT], capsys)
    result = json.loads(out)
    assert (result["version"], result["channel"], result["release_version"]) == (1, "production", 42)
    assert [s["digest"] for s in result["services"]] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]

    # the agent's memory: a lower version is a rollback, the same payload again is fine
    code, _, err = run(
        ["release", "verify", "--root", "root.yaml", "rel.dsse.json", "--highest-accepted", "43", *AT], capsys
    )
    assert code == 3
    assert "refused (rollback)" in err
    code, _, err = run(
        [
            "release",
            "verify",
            "--root",
            "root.yaml",
            "rel.dsse.json",
            "--highest-accepted",
            "42",
            "--current-digest",
            result["payload_digest"],
            *AT,
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        ["release", "verify", "--root", "root.yaml", "rel.dsse.json", "--at", "2027-01-01T00:00:00Z"], capsys
    )
    assert code == 3
    assert "refused (expired): release v42 expired" in err


def test_append_checks_the_reviewed_release(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["release", "sign", "--key", "a.key", "rel.yaml", "-o", "rel.dsse.json"], capsys)[0] == 0
    Path("rel43.yaml").write_text(Path("rel.yaml").read_text().replace("version: 42", "version: 43"))
    code, _, err = run(
        ["release", "sign", "--key", "b.key", "--append", "rel.dsse.json", "rel43.yaml"], capsys
    )
    assert code == 1
    assert "rel.dsse.json: its payload is not the release in rel43.yaml" in err
    assert run(["release", "sign", "--key", "a.key", "rel43.yaml", "-o", "rel.dsse.json"], capsys)[0] == 1


def test_bad_release_is_one_clean_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("bad.yaml").write_text(Path("rel.yaml").read_text().replace("@sha256:" + "1" * 64, ":latest"))
    code, out, err = run(["release", "sign", "--key", "a.key", "bad.yaml", "-o", "x.json"], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("kiln: error: bad.yaml:8:5: services[0].image: pins a tag, not a digest")
    assert not Path("x.json").exists()


def test_root_rotation(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--release-key", "a.pub", "--release-threshold", "1", "--image-key", "c.pub"]
    base += ["--expires", "2030-01-01T00:00:00Z"]
    assert (
        run(
            [
                "root",
                "init",
                "--root-key",
                "a.pub",
                "--root-key",
                "b.pub",
                "--threshold",
                "2",
                *base,
                "-o",
                "v1.yaml",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            [
                "root",
                "init",
                "--root-key",
                "b.pub",
                "--root-key",
                "d.pub",
                "--threshold",
                "2",
                "--version",
                "2",
                *base,
                "-o",
                "v2.yaml",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(["root", "init", "--root-key", "d.pub", "--version", "3", *base, "-o", "v3.yaml"], capsys)[0] == 0
    )

    assert run(["root", "sign", "--key", "a.key", "v2.yaml", "-o", "v2.dsse.json"], capsys)[0] == 0
    code, _, err = run(["root", "verify", "--old", "v1.yaml", "v2.dsse.json", *AT], capsys)
    assert (code, "refused (threshold)" in err) == (3, True)
    for key in ("b.key", "d.key"):
        code, _, err = run(["root", "sign", "--key", key, "v2.dsse.json"], capsys)
        assert code == 0, err
    code, out, err = run(["root", "verify", "--old", "v1.yaml", "v2.dsse.json", "--json", *AT], capsys)
    assert code == 0, err
    assert (json.loads(out)["root_version"], json.loads(out)["previous_version"]) == (2, 1)

    # v1 -> v3 skips a version, even when signed by everyone
    assert run(["root", "sign", "--key", "a.key", "v3.yaml", "-o", "v3.dsse.json"], capsys)[0] == 0
    for key in ("b.key", "d.key"):
        assert run(["root", "sign", "--key", key, "--append", "v3.dsse.json"], capsys)[0] == 0
    code, _, err = run(["root", "verify", "--old", "v1.yaml", "v3.dsse.json", *AT], capsys)
    assert (code, "refused (policy): trust root v3 skips v2" in err) == (3, True)
    # the signed v2 envelope is a root file too (self-verified), and v3 follows it
    code, _, err = run(["root", "verify", "--old", "v2.dsse.json", "v3.dsse.json", *AT], capsys)
    assert code == 0, err


def test_verify_checks_its_history_flags_before_it_calls_anything_a_rollback(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root_init = ["root", "init", "--root-key", "d.pub", "--release-key", "a.pub", "--release-key", "b.pub"]
    root_init += ["--image-key", "c.pub", "--image-repository", "registry.example/team/*", "-o", "root.yaml"]
    assert run([*root_init, "--release-threshold", "2"], capsys)[0] == 0
    assert run(["release", "sign", "--key", "a.key", "rel.yaml", "-o", "rel.dsse.json"], capsys)[0] == 0
    assert run(["release", "sign", "--key", "b.key", "rel.dsse.json"], capsys)[0] == 0
    verify = ["release", "verify", "--root", "root.yaml", "rel.dsse.json", *AT]
    code, out, err = run([*verify, "--json"], capsys)
    assert code == 0, err
    digest = json.loads(out)["payload_digest"]
    bare = digest.removeprefix("sha256:")  # what sha256sum prints

    code, _, err = run([*verify, "--highest-accepted", "42", "--current-digest", bare], capsys)
    assert code == 2  # the command line is wrong, not the release
    assert "--current-digest: not a digest" in err
    assert "rollback" not in err
    code, _, err = run([*verify, "--highest-accepted", "-1"], capsys)
    assert code == 2
    assert "not negative" in err
    code, _, err = run([*verify, "--current-digest", digest], capsys)
    assert code == 2
    assert "give both" in err
    # The accepted version again, with nothing to compare it with: said as it is, not "differs".
    code, _, err = run([*verify, "--highest-accepted", "42"], capsys)
    assert code == 3
    assert "no digest of the accepted release was given" in err
    assert run([*verify, "--highest-accepted", "42", "--current-digest", digest], capsys)[0] == 0


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--channel", "a b"], "kiln: error: --channel: releases.channels[0]: invalid channel glob 'a b'"),
        (["--image-repository", ""], "kiln: error: --image-repository: images.rules[0].repositories:"),
        (
            ["--expires", "2000-01-01T00:00:00Z"],
            "kiln: error: --expires 2000-01-01T00:00:00Z is already past",
        ),
    ],
)
def test_root_init_names_the_flag_it_refuses_and_writes_nothing(
    env: Path, capsys: pytest.CaptureFixture[str], extra: list[str], said: str
) -> None:
    argv = [
        "root",
        "init",
        "--root-key",
        "a.pub",
        "--release-key",
        "b.pub",
        "--image-key",
        "c.pub",
        "-o",
        "r.yaml",
    ]
    code, _, err = run([*argv, *extra], capsys)
    assert code == 2
    assert err.startswith(said)
    assert "r.yaml:" not in err  # no line of a file that was never written
    assert not Path("r.yaml").exists()
