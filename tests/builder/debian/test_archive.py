"""The trust chain, resolution and the lock against a local archive signed with the tests' own key
and served on loopback: every tampered stage is refused with the stage named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.cli import main
from manifests.debianlock import DebianLock
from manifests.layout import OCILayout
from manifests.oci import OCIManifest
from tests.builder.debian.debkit import F, LocalArchive, manifest_yaml, serve
from tests.builder.debian.records import sbom_of

HELLO = b"#!/bin/sh\necho hello\n"


@dataclass
class Env:
    archive: LocalArchive
    url: str
    manifest: Path
    cache: Path

    def write(self, packages: list[str], **kw: object) -> Path:
        self.manifest.write_text(manifest_yaml(self.url, self.archive.suite, packages, **kw))  # type: ignore[arg-type]
        return self.manifest

    def lock(self, *extra: str, keyring: Path | None = None) -> int:
        return main(["lock", str(self.manifest), "--keyring", str(keyring or self.archive.keyring), *extra])

    def build(self, out: Path, *extra: str) -> int:
        return main(
            [
                "build",
                str(self.manifest),
                "-o",
                str(out),
                "--force",
                "--no-cache",
                "--keyring",
                str(self.archive.keyring),
                *extra,
            ]
        )

    @property
    def lockfile(self) -> Path:
        return self.manifest.with_suffix(".lock")


def _populate(a: LocalArchive) -> None:
    a.add(
        "app",
        "1.0",
        files=[F("./bin/", kind="dir"), F("./bin/hello", HELLO, mode=0o755)],
        Pre_Depends="pre (>= 1)",
        Depends="libfoo (>= 2), mta | fallback-mta, virt-thing, shared-all",
    )
    a.add("pre", "1.5")
    a.add("libfoo", "1.0", files=[F("./usr/lib/libfoo.txt", b"one\n")])
    a.add("libfoo", "2.0", files=[F("./usr/lib/libfoo.txt", b"two\n")])
    a.add("fallback-mta", "3.0")
    a.add("prov-b", "1.0", Provides="virt-thing")
    a.add("prov-a", "1.0", Provides="virt-thing (= 1.0)")
    a.add("shared-all", "0.1", "all", files=[F("./usr/share/shared/data", b"all\n")])
    a.add("unused", "9.9")
    a.add(
        "ca-certificates",
        "1.0",
        "all",
        files=[
            F("./usr/share/ca-certificates/b/two.crt", b"B\n"),
            F("./usr/share/ca-certificates/a/one.crt", b"A"),
        ],
    )
    a.add("mawk", "1.3", files=[F("./usr/bin/mawk", b"\0", mode=0o4755)])
    a.add("debconf", "1.5", "all")
    a.add("needs-debconf", "1.0", Depends="debconf | debconf-2.0")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    archive = LocalArchive(tmp_path / "archive")
    _populate(archive)
    archive.publish()
    cache = tmp_path / "cache"
    monkeypatch.setenv("KILN_CACHE", str(cache))
    with serve(archive.root) as url:
        yield Env(archive=archive, url=url, manifest=tmp_path / "m" / "img.yaml", cache=cache)


def _mk(env: Env, packages: list[str], **kw: object) -> Path:
    env.manifest.parent.mkdir(exist_ok=True)
    return env.write(packages, **kw)


def test_lock_resolves_versions_alternatives_virtuals_and_all(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    lock = DebianLock.from_bytes(env.lockfile.read_bytes())
    got = {p.name: p.version for p in lock.packages["amd64"]}
    assert got == {
        "app": "1.0",
        "pre": "1.5",
        "libfoo": "2.0",
        "fallback-mta": "3.0",
        "prov-a": "1.0",
        "shared-all": "0.1",
    }
    assert lock.release_date == "Thu, 01 Jan 2026 00:00:00 UTC"
    assert lock.distro == "debian-99"
    pkg = next(p for p in lock.packages["amd64"] if p.name == "shared-all")
    assert pkg.architecture == "all"
    assert pkg.filename == "pool/main/s/shared-all/shared-all_0.1_all.deb"
    assert len(pkg.sha256) == 64
    assert pkg.size > 0
    # Deterministic: the same archive gives the same lock bytes.
    first = env.lockfile.read_bytes()
    assert env.lock() == 0
    assert env.lockfile.read_bytes() == first
    capsys.readouterr()
    assert main(["lock", str(env.manifest), "--why", "prov-a"]) == 0
    out = capsys.readouterr().out
    assert "prov-a 1.0: app Depends: virt-thing" in out
    assert "app 1.0: requested" in out


def test_exclude_drops_the_dependency_group(env: Env) -> None:
    _mk(env, ["needs-debconf"], exclude=["debconf"])
    assert env.lock() == 0
    lock = DebianLock.from_bytes(env.lockfile.read_bytes())
    assert [p.name for p in lock.packages["amd64"]] == ["needs-debconf"]


def test_unknown_package_is_a_clear_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _mk(env, ["nonexistent"])
    assert env.lock() == 1
    assert "package nonexistent is not in the archive" in capsys.readouterr().err
    assert not env.lockfile.exists()


def test_tampered_inrelease_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    inrelease = env.archive.root / "dists" / env.archive.suite / "InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"Version: 99.1", b"Version: 99.2"))
    _mk(env, ["app"])
    assert env.lock() == 3
    err = capsys.readouterr().err
    assert "InRelease: the signature does not verify" in err
    assert not env.lockfile.exists()


def test_inrelease_signed_by_an_untrusted_key_is_refused(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = LocalArchive(tmp_path / "other")
    _mk(env, ["app"])
    assert env.lock(keyring=other.keyring) == 3
    assert "InRelease: the signature does not verify" in capsys.readouterr().err


def test_tampered_packages_index_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import lzma

    xz = env.archive.root / "dists" / env.archive.suite / "main" / "binary-amd64" / "Packages.xz"
    evil = lzma.decompress(xz.read_bytes()).replace(b"Version: 2.0", b"Version: 2.1")
    xz.write_bytes(lzma.compress(evil))
    _mk(env, ["app"])
    assert env.lock() == 3
    err = capsys.readouterr().err
    assert "Packages index main/binary-amd64/Packages.xz: sha256" in err
    assert "does not match the signed Release" in err


def test_tampered_deb_is_refused_and_nothing_is_cached(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    deb = env.archive.root / "pool/main/l/libfoo/libfoo_2.0_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[-5] ^= 0xFF
    deb.write_bytes(bytes(data))
    assert env.build(tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert ".deb libfoo 2.0 (pool/main/l/libfoo/libfoo_2.0_amd64.deb): sha256" in err
    assert "the lock pins" in err
    assert not (tmp_path / "out").exists()
    lock = DebianLock.from_bytes(env.lockfile.read_bytes())
    libfoo = next(p for p in lock.packages["amd64"] if p.name == "libfoo")
    assert not (env.cache / "sha256" / libfoo.sha256).exists()


def test_a_longer_deb_is_refused(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    deb = env.archive.root / "pool/main/p/pre/pre_1.5_amd64.deb"
    deb.write_bytes(deb.read_bytes() + b"trailing")
    assert env.build(tmp_path / "out") == 3
    assert ".deb pre 1.5" in capsys.readouterr().err


def test_stale_lock_is_refused_then_updated(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    _mk(env, ["app", "unused"])
    assert env.build(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "the lock is stale" in err
    assert "packages added: unused" in err
    assert "--update-lock" in err
    assert not (tmp_path / "out").exists()
    assert env.build(tmp_path / "out", "--update-lock") == 0
    lock = DebianLock.from_bytes(env.lockfile.read_bytes())
    assert "unused" in {p.name for p in lock.packages["amd64"]}


def test_missing_lock_names_the_command(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _mk(env, ["app"])
    assert env.build(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no lockfile" in err
    assert "kiln lock" in err


def _files(layout_dir: Path) -> dict[str, dict[str, object]]:
    from builder.inspect import inspect_image

    info = inspect_image(layout_dir)
    return {f["path"]: f for f in info["files"]}


def test_build_from_the_lock_and_offline_rebuild_is_identical(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app", "ca-certificates", "mawk"])
    assert env.lock() == 0
    capsys.readouterr()
    assert main(["build", str(env.manifest), "-o", str(tmp_path / "a"), "--no-cache", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["digest"]
    files = _files(tmp_path / "a")
    # merged /usr: ./bin/hello is /usr/bin/hello, /bin a link
    assert files["/usr/bin/hello"]["mode"] == "0755"
    assert "/bin/hello" not in files
    assert (files["/bin"]["type"], files["/bin"]["target"]) == ("symlink", "usr/bin")
    assert files["/var/lib/dpkg/status.d/app"]["type"] == "file"
    assert files["/etc/ssl/certs/ca-certificates.crt"]["size"] == 4  # "A\n" + "B\n", in path order
    assert (files["/usr/bin/awk"]["type"], files["/usr/bin/awk"]["target"]) == ("symlink", "/usr/bin/mawk")
    assert files["/usr/bin/mawk"]["mode"] == "0755"  # setuid dropped

    # Offline, after wiping everything but the download cache: the same digest.
    shutil.rmtree(env.cache / "roots")
    shutil.rmtree(tmp_path / "a")
    assert (
        main(["build", str(env.manifest), "-o", str(tmp_path / "b"), "--no-cache", "--offline", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["digest"] == first

    # Offline with an empty cache: refused, naming what is missing.
    shutil.rmtree(env.cache)
    assert main(["build", str(env.manifest), "-o", str(tmp_path / "c"), "--no-cache", "--offline"]) == 1
    err = capsys.readouterr().err
    assert "offline, and the download cache" in err
    assert "app 1.0" in err


def test_sbom_lists_every_package_with_purl_and_owns_its_files(env: Env, tmp_path: Path) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    assert env.build(tmp_path / "out") == 0
    sbom = sbom_of(tmp_path / "out")
    debs = {
        p["name"]: p
        for p in sbom["packages"]
        if any(r["referenceLocator"].startswith("pkg:deb/") for r in p.get("externalRefs", ()))
    }
    assert set(debs) == {"app", "pre", "libfoo", "fallback-mta", "prov-a", "shared-all"}
    ref = debs["libfoo"]["externalRefs"][0]
    assert ref["referenceType"] == "purl"
    assert ref["referenceLocator"] == "pkg:deb/debian/libfoo@2.0?arch=amd64&distro=debian-99"
    assert debs["libfoo"]["supplier"] == "Organization: Kiln Tests (tests@kiln.invalid)"
    owned = {
        r["relatedSpdxElement"]
        for r in sbom["relationships"]
        if r["spdxElementId"] == debs["app"]["SPDXID"] and r["relationshipType"] == "CONTAINS"
    }
    hello = next(f for f in sbom["files"] if f["fileName"] == "./usr/bin/hello")
    assert hello["SPDXID"] in owned


def test_layers_follow_packages_within_max(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    for out, limit in ((tmp_path / "eight", None), (tmp_path / "two", 2)):
        if limit is None:
            env.write(["app"])
        else:
            env.manifest.write_text(env.manifest.read_text() + f"layers: {{max: {limit}}}\n")
        assert env.build(out) == 0
        layout = OCILayout.open(out)
        man = OCIManifest.from_bytes(layout.read_blob(layout.resolve("1.0.0").digest))
        config = json.loads(layout.read_blob(man.config.digest))
        labels = [h["created_by"] for h in config["history"]]
        if limit is None:
            # system (accounts, status.d), then one layer per package that ships files, by name
            assert labels == [
                "kiln: system layer",
                "kiln: deb:app layer",
                "kiln: deb:libfoo layer",
                "kiln: deb:shared-all layer",
            ]
        else:
            assert len(labels) == 2
            assert all("deb:" in label or "system" in label for label in labels)


def test_an_expired_release_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.archive.publish(extra=["Valid-Until: Fri, 02 Jan 2026 00:00:00 UTC"])
    _mk(env, ["app"])
    assert env.lock() == 3
    assert "InRelease: expired (Valid-Until Fri, 02 Jan 2026 00:00:00 UTC)" in capsys.readouterr().err


def test_an_older_release_than_the_lock_is_refused_as_a_rollback(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    first = env.lockfile.read_bytes()
    env.archive.publish(date="Mon, 01 Dec 2025 00:00:00 UTC")
    assert env.lock() == 3
    err = capsys.readouterr().err
    assert (
        "InRelease: dated Mon, 01 Dec 2025 00:00:00 UTC, older than the Release the lock was made from" in err
    )
    assert env.lockfile.read_bytes() == first
    # A newer one (with Acquire-By-Hash, which this mirror does not serve: the plain path is used).
    env.archive.publish(date="Fri, 02 Jan 2026 00:00:00 UTC", extra=["Acquire-By-Hash: yes"])
    assert env.lock() == 0
    assert DebianLock.from_bytes(env.lockfile.read_bytes()).release_date == "Fri, 02 Jan 2026 00:00:00 UTC"


def test_a_pinned_deb_the_mirror_dropped_is_named(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mk(env, ["app"])
    assert env.lock() == 0
    (env.archive.root / "pool/main/p/pre/pre_1.5_amd64.deb").unlink()
    assert env.build(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert ".deb pre 1.5: the mirror no longer has pool/main/p/pre/pre_1.5_amd64.deb" in err
    assert "run kiln lock" in err
