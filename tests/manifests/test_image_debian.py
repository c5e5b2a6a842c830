"""The ``debian`` contents source, ``sysroot: debian`` and ``platforms``: valid forms and every
invalid one with its positioned message."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.errors import ManifestError
from manifests.image import DEBIAN_SYSROOT, ClosureSource, DebianSource, TreeSource
from manifests.image_parse import parse_image_manifest
from manifests.oci import Platform

HEAD = "apiVersion: kiln.dev/v1\nkind: Image\nname: x\nversion: 1.0.0\ncontents:\n"
TAIL = "entrypoint: [/usr/bin/x]\n"


def _parse(text: str):  # type: ignore[no-untyped-def]
    return parse_image_manifest(text.encode(), source="m.yaml", base_dir=Path("."), fmt="yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        _parse(text)
    return str(info.value).splitlines()


def test_full_form() -> None:
    m = _parse(
        HEAD
        + "  - debian:\n      suite: bookworm\n      mirror: http://mirror.example/debian/\n"
        + "      components: [main, contrib]\n      packages: [nginx-light, libc6]\n"
        + "      exclude: [debconf]\n      as: sysroot\n"
        + "  - closure: {sysroot: debian, paths: [/usr/bin/x]}\n"
        + "  - tree: {sysroot: debian, src: /usr/lib/python3.11, dst: /usr/lib/python3.11}\n"
        + "platforms: [linux/amd64, linux/arm64]\n"
        + TAIL
    )
    assert m.contents[0] == DebianSource(
        suite="bookworm",
        packages=("nginx-light", "libc6"),
        mirror="http://mirror.example/debian",
        components=("main", "contrib"),
        exclude=("debconf",),
        sysroot_only=True,
    )
    assert m.contents[1] == ClosureSource(paths=("/usr/bin/x",), sysroot=DEBIAN_SYSROOT)
    assert isinstance(m.contents[2], TreeSource)
    assert m.contents[2].sysroot == DEBIAN_SYSROOT
    assert m.platforms == (Platform(architecture="amd64"), Platform(architecture="arm64"))
    assert m.platform == Platform(architecture="amd64")


def test_defaults() -> None:
    m = _parse(HEAD + "  - debian: {suite: bookworm, packages: [hello]}\n" + TAIL)
    assert m.contents[0] == DebianSource(suite="bookworm", packages=("hello",))
    assert m.contents[0].mirror == "http://deb.debian.org/debian"
    assert m.contents[0].components == ("main",)
    assert m.platforms == ()


INVALID = [
    (
        "unknown key",
        HEAD + "  - debian: {suite: bookworm, packages: [a], pakages: [b]}\n" + TAIL,
        ["m.yaml:6:46: contents[0].debian.pakages: unknown key (did you mean 'packages'?)"],
    ),
    (
        "missing packages",
        HEAD + "  - debian: {suite: bookworm}\n" + TAIL,
        ["m.yaml:6:5: contents[0].debian.packages: missing required key"],
    ),
    (
        "bad package name",
        HEAD + "  - debian: {suite: bookworm, packages: [Nginx]}\n" + TAIL,
        [
            "m.yaml:6:42: contents[0].debian.packages[0]: invalid package name 'Nginx' "
            "(lowercase letters, digits, '+', '-', '.')"
        ],
    ),
    (
        "duplicate package",
        HEAD + "  - debian: {suite: bookworm, packages: [a, a]}\n" + TAIL,
        [
            "m.yaml:6:45: contents[0].debian.packages[1]: listed twice "
            "(first at contents[0].debian.packages[0]) (remove one of them)"
        ],
    ),
    (
        "empty packages",
        HEAD + "  - debian: {suite: bookworm, packages: []}\n" + TAIL,
        ["m.yaml:6:31: contents[0].debian.packages: must not be empty (list the packages to install)"],
    ),
    (
        "ftp mirror",
        HEAD + "  - debian: {suite: bookworm, packages: [a], mirror: 'ftp://x/debian'}\n" + TAIL,
        [
            "m.yaml:6:46: contents[0].debian.mirror: must be an http:// or https:// URL (e.g. http://deb.debian.org/debian)"
        ],
    ),
    (
        "as what",
        HEAD + "  - debian: {suite: bookworm, packages: [a], as: sysrot}\n" + TAIL,
        ["m.yaml:6:46: contents[0].debian.as: unknown value 'sysrot' (did you mean 'sysroot'?)"],
    ),
    (
        "two debian sources",
        HEAD
        + "  - debian: {suite: bookworm, packages: [a]}\n  - debian: {suite: trixie, packages: [b]}\n"
        + TAIL,
        [
            "m.yaml:7:5: contents[1].debian: a second debian source "
            "(the first is contents[0].debian) (merge them into one)"
        ],
    ),
    (
        "sysroot debian without a debian source",
        HEAD + "  - closure: {sysroot: debian, paths: [/usr/bin/x]}\n" + TAIL,
        [
            "m.yaml:6:15: contents[0].closure.sysroot: no debian source to read from "
            "(add a contents item 'debian: {...}')"
        ],
    ),
    (
        "tree sysroot other",
        HEAD
        + "  - debian: {suite: bookworm, packages: [a]}\n  - tree: {sysroot: host, src: /a, dst: /a}\n"
        + TAIL,
        ["m.yaml:7:12: contents[1].tree.sysroot: unknown value 'host' (expected one of: debian)"],
    ),
    (
        "tree from debian needs an absolute src",
        HEAD
        + "  - debian: {suite: bookworm, packages: [a]}\n  - tree: {sysroot: debian, src: a, dst: /a}\n"
        + TAIL,
        ["m.yaml:7:29: contents[1].tree.src: must be an absolute path (write '/a')"],
    ),
    (
        "platform and platforms",
        HEAD + "  - dir: {path: /x}\nplatform: linux/amd64\nplatforms: [linux/arm64]\n" + TAIL,
        ["m.yaml:8:1: platforms: both platform and platforms are set (keep one of them)"],
    ),
    (
        "platforms twice",
        HEAD + "  - dir: {path: /x}\nplatforms: [linux/arm64, linux/arm64]\n" + TAIL,
        ["m.yaml:7:26: platforms[1]: listed twice (first at platforms[0]) (remove one of them)"],
    ),
    (
        "platforms arch",
        HEAD + "  - dir: {path: /x}\nplatforms: [linux/aarch64]\n" + TAIL,
        ["m.yaml:7:13: platforms[0]: unknown architecture 'aarch64' (did you mean 'arm64'?)"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(text: str, expected: list[str]) -> None:
    assert _problems(text) == expected
