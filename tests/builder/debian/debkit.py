"""A small Debian archive the tests create, sign with their own key (gpg) and serve on loopback.

:func:`make_deb` writes a .deb (ar + control.tar.xz + data.tar.xz, or any members given raw);
:class:`LocalArchive` lays out ``pool/`` and ``dists/SUITE/`` (Packages.xz, Release, InRelease
clear-signed with a fresh ed25519 key) and serves them with ``http.server`` on 127.0.0.1:0.
"""

from __future__ import annotations

import hashlib
import http.server
import lzma
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.agent.imagekit import M, tar_bytes
from tests.support import require_tool


@dataclass(frozen=True)
class F:
    """One data.tar member: ``kind`` file, dir, symlink, hardlink, char, fifo."""

    name: str
    data: bytes = b""
    kind: str = "file"
    mode: int | None = None
    target: str = ""


def tar_xz(members: Sequence[F]) -> bytes:
    """A data.tar.xz or control.tar.xz as dpkg-deb writes them (GNU tar format)."""
    as_members = [M(name=m.name, kind=m.kind, data=m.data, mode=m.mode, target=m.target) for m in members]
    return lzma.compress(tar_bytes(as_members, fmt=tarfile.GNU_FORMAT))


def ar(members: Sequence[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out.append(header)
        out.append(data)
        if len(data) % 2:
            out.append(b"\n")
    return b"".join(out)


def control_text(name: str, version: str, arch: str, **fields: str) -> str:
    lines = [
        f"Package: {name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        "Maintainer: Kiln Tests <tests@kiln.invalid>",
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    lines.append(f"Description: test package {name}")
    return "\n".join(lines) + "\n"


def make_deb(
    name: str,
    version: str = "1.0",
    arch: str = "amd64",
    files: Sequence[F] = (),
    *,
    raw_members: Sequence[tuple[str, bytes]] | None = None,
    **fields: str,
) -> bytes:
    if raw_members is not None:
        return ar(raw_members)
    control = tar_xz([F("./control", control_text(name, version, arch, **fields).encode())])
    data = tar_xz([F("./", kind="dir"), *files])
    return ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control), ("data.tar.xz", data)])


# Every gpg home a test made: gpg starts an agent per home, which outlives the test unless stopped.
GNUPG_HOMES: list[Path] = []


def stop_gpg_agents() -> None:
    while GNUPG_HOMES:
        home = GNUPG_HOMES.pop()
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=30,
            check=False,
        )


@dataclass
class LocalArchive:
    """``root`` holds the archive; ``keyring`` the public key gpgv trusts."""

    root: Path
    suite: str = "testing-kiln"
    stanzas: list[str] = field(default_factory=list)
    debs: dict[str, bytes] = field(default_factory=dict)  # pool path -> bytes
    url: str = ""

    def __post_init__(self) -> None:
        require_tool("gpg", "gpg")
        require_tool("gpgv", "gpgv")
        self.home = self.root.parent / f"{self.root.name}-gnupg"
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        GNUPG_HOMES.append(self.home)  # its gpg-agent is stopped after the test (conftest)
        self.gpg("--quick-gen-key", "kiln tests <archive@kiln.invalid>", "ed25519", "sign", "never")
        self.keyring = self.root.parent / f"{self.root.name}-keyring.gpg"
        self.keyring.write_bytes(self.gpg("--export"))

    def gpg(self, *args: str, stdin: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [
                "gpg",
                "--homedir",
                str(self.home),
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                *args,
            ],
            input=stdin,
            capture_output=True,
            check=True,
            timeout=120,
        )
        return proc.stdout

    def add(
        self,
        name: str,
        version: str = "1.0",
        arch: str = "amd64",
        files: Sequence[F] = (),
        *,
        deb: bytes | None = None,
        **fields: str,
    ) -> bytes:
        data = deb if deb is not None else make_deb(name, version, arch, files, **fields)
        path = f"pool/main/{name[0]}/{name}/{name}_{version}_{arch}.deb"
        self.debs[path] = data
        stanza = control_text(name, version, arch, **fields)
        stanza += f"Filename: {path}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        self.stanzas.append(stanza)
        return data

    def publish(
        self,
        *,
        packages_override: bytes | None = None,
        date: str = "Thu, 01 Jan 2026 00:00:00 UTC",
        extra: Sequence[str] = (),
    ) -> None:
        for path, data in self.debs.items():
            p = self.root / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        dists = self.root / "dists" / self.suite
        bindir = dists / "main" / "binary-amd64"
        bindir.mkdir(parents=True, exist_ok=True)
        packages = "\n".join(self.stanzas).encode()
        xz = lzma.compress(packages)
        (bindir / "Packages").write_bytes(packages)
        (bindir / "Packages.xz").write_bytes(packages_override if packages_override is not None else xz)
        release = [
            "Origin: kiln-tests",
            f"Suite: {self.suite}",
            f"Codename: {self.suite}",
            "Version: 99.1",
            f"Date: {date}",
            *extra,
            "Architectures: amd64",
            "Components: main",
            "SHA256:",
            f" {hashlib.sha256(xz).hexdigest()} {len(xz)} main/binary-amd64/Packages.xz",
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages",
        ]
        text = ("\n".join(release) + "\n").encode()
        (dists / "Release").write_bytes(text)
        (dists / "InRelease").write_bytes(self.gpg("--clearsign", stdin=text))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving ``root`` until the block ends."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def manifest_yaml(
    mirror: str,
    suite: str,
    packages: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    extra: str = "",
    entrypoint: str = '["/usr/bin/hello"]',
    env: Mapping[str, str] | None = None,
) -> str:
    del env
    return (
        "apiVersion: kiln.dev/v1\nkind: Image\nname: debtest\nversion: 1.0.0\n"
        "contents:\n"
        f"  - debian:\n      suite: {suite}\n      mirror: {mirror}\n"
        f"      packages: [{', '.join(packages)}]\n"
        + (f"      exclude: [{', '.join(exclude)}]\n" if exclude else "")
        + extra
        + f"accounts: {{user: app, uid: 65532, gid: 65532}}\nentrypoint: {entrypoint}\n"
    )


__all__ = ["F", "LocalArchive", "ar", "make_deb", "manifest_yaml", "serve", "tar_xz", "os"]
