"""Assemble python-web.yaml's files into a directory and run the service there, without kiln's builder.

Run as root (chroot and mounts need it)::

    sudo .venv/bin/python examples/python-web/smoke.py [--keep DIR]

It reads the manifest with kiln's parser, resolves the closure with ``builder.elf``, copies the
tree, app and links like the builder would, then starts ``/usr/bin/python3 /app/server.py`` in a
private mount namespace with the directory as a read-only root, a tmpfs on ``/tmp`` and uid/gid
65532 without supplementary groups, and checks ``/healthz`` and ``/`` with curl. It prints the
uncompressed size of the assembled root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from builder.elf import resolve_closure
from manifests.image import ClosureSource, FilesSource, ImageManifest, SymlinkSource, TreeSource
from manifests.image_parse import load_image_manifest

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "python-web.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Assembled:
    root: Path
    files: int
    size: int  # bytes of regular files


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses ``/``; ``*``, ``?`` and ``[...]`` do not (the manifest's tree glob rules)."""
    out = []
    for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern.strip("/")):
        if part == "**/":
            out.append("(?:.*/)?")
        elif part == "**":
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        elif part.startswith("[") and part.endswith("]") and len(part) > 2:
            out.append("[" + ("^" + part[2:-1] if part[1] in "!^" else part[1:-1]) + "]")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


def _place(root: Path, image_path: str) -> Path:
    dest = root / image_path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _copy_tree(src: Path, dst: Path, excludes: list[re.Pattern[str]]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        kept = []
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if any(p.match(rel) for p in excludes):
                continue
            if (Path(dirpath) / name).is_symlink():
                (dst / rel).symlink_to(os.readlink(Path(dirpath) / name))
                continue
            (dst / rel).mkdir()
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if any(p.match(rel) for p in excludes):
                continue
            host = Path(dirpath) / name
            if host.is_symlink():
                (dst / rel).symlink_to(os.readlink(host))
            else:
                shutil.copy2(host, dst / rel)


def assemble(manifest: ImageManifest, root: Path) -> Assembled:
    for item in manifest.contents:
        if isinstance(item, ClosureSource):
            closure = resolve_closure(item.paths, Path(item.sysroot))
            for f in closure.files:
                shutil.copy2(f.host_path, _place(root, f.image_path))
            for link in closure.symlinks:
                dest = _place(root, link.image_path)
                if not dest.is_symlink():
                    dest.symlink_to(link.target)
        elif isinstance(item, TreeSource):
            src = Path(item.src) if Path(item.src).is_absolute() else manifest.base_dir / item.src
            _copy_tree(src, root / item.dst.lstrip("/"), [_glob_regex(p) for p in item.exclude])
        elif isinstance(item, SymlinkSource):
            _place(root, item.path).symlink_to(item.target)
        elif isinstance(item, FilesSource):
            for spec in item.files:
                src = manifest.base_dir / spec.src
                if spec.src.endswith("/"):
                    shutil.copytree(src, root / spec.dst.lstrip("/"), dirs_exist_ok=True)
                else:
                    shutil.copy2(src, _place(root, spec.dst))
        else:
            raise SystemExit(f"smoke.py does not handle {type(item).__name__}")
    accounts = manifest.accounts
    if accounts is not None:
        etc = root / "etc"
        etc.mkdir(exist_ok=True)
        group = accounts.group or accounts.user
        (etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/sbin/nologin\n"
            f"{accounts.user}:x:{accounts.uid}:{accounts.gid}::{accounts.home}:/sbin/nologin\n"
        )
        (etc / "group").write_text(f"root:x:0:\n{group}:x:{accounts.gid}:\n")
    for path in manifest.writable:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if not p.is_symlink():
                files += 1
                size += p.stat().st_size
    return Assembled(root=root, files=files, size=size)


def _listing(root: Path) -> set[tuple[str, int, int]]:
    return {(str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _curl(url: str) -> str:
    result = subprocess.run(
        ["curl", "-fsS", "--max-time", "2", url], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl {url}: {result.stderr.strip()}")
    return result.stdout


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def run_service(manifest: ImageManifest, root: Path) -> dict[str, object]:
    """Start the service confined to ``root``; check it; stop it with SIGTERM. Returns observations."""
    if manifest.accounts is None:
        raise SystemExit("python-web.yaml has no accounts")
    port = _free_port()
    env = dict(manifest.env)
    env["PORT"] = str(port)
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    script = (
        'set -e; mount --make-rprivate /; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; '
        'mount -t tmpfs -o mode=1777,size=16m tmpfs "$1/tmp"; '
        'exec unshare --root="$1" --wd="$2" --setgid "$3" --setuid "$4" -- "$5" "$6"'
    )
    argv = [
        "unshare", "--mount", "--", "sh", "-c", script, "sh", str(root), manifest.workdir or "/",
        str(manifest.accounts.gid), str(manifest.accounts.uid), *manifest.entrypoint,
    ]  # fmt: skip
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    health = _curl(f"http://127.0.0.1:{port}/healthz")
                    break
                except RuntimeError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            hello = json.loads(_curl(f"http://127.0.0.1:{port}/"))
            status = _status(proc.pid)
            # An idle client keeps a handler thread blocked in recv() while the service stops.
            with socket.create_connection(("127.0.0.1", port)) as idle:
                idle.sendall(b"GET /healthz HTTP/1.1\r\n")
                time.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
                _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {
        "healthz": health,
        "hello": hello,
        "uid": status["Uid"].split(),
        "gid": status["Gid"].split(),
        "groups": status["Groups"],
        "exit_code": proc.returncode,
        "stderr": stderr,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="assemble into this (new) directory and keep it")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("smoke.py: needs root (chroot and mounts)", file=sys.stderr)
        return 2
    manifest = load_image_manifest(MANIFEST)
    with tempfile.TemporaryDirectory(prefix="python-web-") as tmp:
        root = args.keep or Path(tmp) / "root"
        root.mkdir(parents=True)
        assembled = assemble(manifest, root)
        print(f"assembled {assembled.files} files, {assembled.size / 1e6:.1f} MB uncompressed, in {root}")
        before = _listing(root)
        seen = run_service(manifest, root)
        changed = sorted(before ^ _listing(root))
        for key, value in seen.items():
            print(f"{key}: {value}")
        print(f"changed under the root: {changed}")
        ok = seen["healthz"] == "ok\n" and seen["exit_code"] == 0 and not changed
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
