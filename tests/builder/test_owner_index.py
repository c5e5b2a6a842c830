"""The SBOM's Debian owner lookup: dpkg's lists indexed once per machine and dpkg state, a
directory dpkg ships nothing in answered from the directory set alone, and a cache file that is
too large or malformed ignored and rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import builder.dpkg
from builder.dpkg import MAX_INDEX_BYTES, OwnerIndex, OwnerLookup, cache_home


def _sysroot(tmp: Path) -> Path:
    """A tiny dpkg database: /usr/bin/tool from 'tools', merged-/usr /lib -> usr/lib."""
    root = tmp / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/lib/libx.so.1").write_text("elf")
    (root / "var/lib/dpkg/info/tools.list").write_text("/.\n/usr\n/usr/bin\n/usr/bin/tool\n")
    (root / "var/lib/dpkg/info/libx1:amd64.list").write_text("/lib\n/lib/libx.so.1\n")
    (root / "var/lib/dpkg/status").write_text(
        "Package: tools\nStatus: install ok installed\nVersion: 1.2-3\n\n"
        "Package: libx1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.5\n"
    )
    return root


def test_owners_by_real_directory(tmp_path: Path) -> None:
    root = _sysroot(tmp_path)
    owners = OwnerLookup(tmp_path / "cache")
    assert owners.owner(root / "usr/bin/tool", root) == "tools 1.2-3"
    assert owners.owner(root / "lib/libx.so.1", root) == "libx1:amd64 4.5"  # listed via the link
    assert owners.owner(root / "usr/lib/libx.so.1", root) == "libx1:amd64 4.5"
    assert owners.owner(root / "usr/bin/other", root) is None
    assert owners.owner(tmp_path / "elsewhere" / "f", root) is None  # outside the sysroot


def test_a_directory_dpkg_ships_nothing_in_reads_only_the_directory_set(tmp_path: Path) -> None:
    root = _sysroot(tmp_path)
    OwnerLookup(tmp_path / "cache").owner(root / "usr/bin/tool", root)  # builds and stores
    (root / "app").mkdir()
    index = OwnerIndex(os.path.realpath(root), tmp_path / "cache")
    assert index.owners_in("/app") == {}
    assert index._owners is None  # the owners file was never opened
    assert index.owners_in("/usr/bin") == {"tool": "tools 1.2-3"}


def test_the_index_is_built_once_per_dpkg_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _sysroot(tmp_path)
    cache = tmp_path / "cache"
    assert OwnerLookup(cache).owner(root / "usr/bin/tool", root) == "tools 1.2-3"
    files = sorted(p.name for p in (cache / "dpkg-index").iterdir())
    assert len(files) == 2

    def no_dpkg(*_a: object, **_k: object) -> None:
        raise AssertionError("dpkg's lists were read again")

    with monkeypatch.context() as m:
        m.setattr(builder.dpkg.DpkgIndex, "_load", no_dpkg)
        assert OwnerLookup(cache).owner(root / "usr/bin/tool", root) == "tools 1.2-3"
    # dpkg installs something: its status file changes, and so does the index
    status = root / "var/lib/dpkg/status"
    status.write_text(status.read_text() + "\nPackage: new\nStatus: install ok installed\nVersion: 9\n")
    (root / "var/lib/dpkg/info/new.list").write_text("/usr/bin/new\n")
    (root / "usr/bin/new").write_text("")
    assert OwnerLookup(cache).owner(root / "usr/bin/new", root) == "new 9"
    assert len(list((cache / "dpkg-index").iterdir())) == 4


@pytest.mark.parametrize("damage", ["oversized", "malformed", "wrong-types"])
def test_a_damaged_cache_file_is_ignored_and_rebuilt(tmp_path: Path, damage: str) -> None:
    root = _sysroot(tmp_path)
    cache = tmp_path / "cache"
    OwnerLookup(cache).owner(root / "usr/bin/tool", root)
    for path in (cache / "dpkg-index").iterdir():
        if damage == "oversized":
            with open(path, "wb") as fh:
                fh.truncate(MAX_INDEX_BYTES + 1)
        elif damage == "malformed":
            path.write_bytes(b"{not json")
        else:
            path.write_text(json.dumps({"/usr/bin": {"tool": 7}} if "owners" in path.name else [1]))
    assert OwnerLookup(cache).owner(root / "usr/bin/tool", root) == "tools 1.2-3"
    assert OwnerLookup(cache).owner(root / "usr/bin/tool", root) == "tools 1.2-3"  # rewritten


def test_no_writable_cache_only_costs_time(tmp_path: Path) -> None:
    root = _sysroot(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert OwnerLookup(blocker / "cache").owner(root / "usr/bin/tool", root) == "tools 1.2-3"


def test_cache_home_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_home() == tmp_path / "kiln"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "kiln"
