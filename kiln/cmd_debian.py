"""The ``lock`` verb (Debian packages of an image manifest), and the part of ``build`` that
prepares them from the lock."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.output import Output

if TYPE_CHECKING:
    from builder.debian.prepare import PreparedDebian
    from manifests.image import ImageManifest

__all__ = ["register", "add_build_flags", "prepare_debian"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("lock", help="resolve an image manifest's Debian packages into its lockfile")
    p.add_argument("manifest", type=Path, help="image manifest with a debian source")
    p.add_argument("--why", metavar="PKG", help="explain why PKG is in the lock (reads the lock only)")
    p.add_argument("--arch", help="architecture for --why (default: the first locked one)")
    p.add_argument("--keyring", type=Path, help="OpenPGP keyring trusted for InRelease (default: Debian's)")
    p.set_defaults(handler=cmd_lock)


def add_build_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true", help="Debian packages from the download cache only")
    p.add_argument("--update-lock", action="store_true", help="re-resolve a stale Debian lock first")
    p.add_argument("--keyring", type=Path, help="OpenPGP keyring trusted for InRelease (default: Debian's)")


def cmd_lock(args: argparse.Namespace, out: Output) -> int:
    from builder.debian.archive import DEFAULT_KEYRING
    from builder.debian.lock import load_lock, lock_path_for, why
    from builder.debian.prepare import lock_manifest
    from manifests.image_parse import load_image_manifest

    if args.why:
        lock = load_lock(lock_path_for(args.manifest))
        lines = why(lock, args.why, args.arch)
        out.result("\n".join(lines), {"package": args.why, "why": lines})
        return 0
    manifest = load_image_manifest(args.manifest)
    path, lock = lock_manifest(
        manifest, args.manifest, keyring=args.keyring or DEFAULT_KEYRING, progress=out.progress
    )
    counts = {arch: len(pkgs) for arch, pkgs in lock.packages.items()}
    human = f"wrote {path}: " + ", ".join(f"{n} packages ({a})" for a, n in counts.items())
    human += f"; Release {lock.release_date}"
    out.result(
        human,
        {
            "lock": str(path),
            "packages": counts,
            "release_date": lock.release_date,
            "inrelease_sha256": lock.inrelease_sha256,
        },
    )
    return 0


def prepare_debian(args: argparse.Namespace, manifest: ImageManifest, out: Output) -> PreparedDebian | None:
    """The manifest's Debian packages from its lock (``None`` without a debian source)."""
    from manifests.image import DebianSource

    if not any(isinstance(c, DebianSource) for c in manifest.contents):
        return None  # before importing the Debian side: its HTTP client alone is ~40 ms a build
    from builder.debian.archive import DEFAULT_KEYRING
    from builder.debian.prepare import prepare

    return prepare(
        manifest,
        args.manifest,
        offline=getattr(args, "offline", False),
        update_lock=getattr(args, "update_lock", False),
        keyring=getattr(args, "keyring", None) or DEFAULT_KEYRING,
        progress=out.progress,
    )
