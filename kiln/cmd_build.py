"""Verbs that read image manifests and build: ``validate``, ``build``, ``inspect``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kiln.output import Output, UsageError
from manifests.errors import KilnError

__all__ = ["register", "source_date_epoch", "default_cache_dir"]

FORMATS = ("oci", "oci-archive", "docker-archive", "vm")
# 2^33 seconds is past the year 2242 and still fits a ustar mtime field.
_MAX_EPOCH = 2**33 - 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate", help="check an image manifest without building")
    p.add_argument("manifest", type=Path, help="image manifest (.yaml, .yml or .toml)")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("build", help="build an image manifest into an OCI layout or archive")
    p.add_argument("manifest", type=Path, help="image manifest (.yaml, .yml or .toml)")
    p.add_argument("-o", "--output", type=Path, help="output path (default: out/NAME[.tar|.vm])")
    p.add_argument("--format", choices=FORMATS, default="oci", help="output format (default: oci)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--name",
        metavar="NAME:TAG",
        help="the image's name in the output (default: the manifest's name:version), "
        "e.g. registry.example/team/app:1.2.0",
    )
    p.add_argument("--cache-dir", type=Path, help="build cache (default: $KILN_CACHE_DIR or ~/.cache/kiln)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the build cache")
    p.add_argument(
        "--source-date-epoch",
        type=str,
        default=None,
        help="timestamp for every file and the image (default: $SOURCE_DATE_EPOCH or 0)",
    )
    from kiln.cmd_debian import add_build_flags

    add_build_flags(p)
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("inspect", help="show an image's config, layers and files")
    p.add_argument(
        "image",
        help="a layout (DIR, oci:DIR[:TAG], DIR@sha256:HEX), an oci-archive or docker-archive, "
        "or a registry image HOST[:PORT]/REPO[:TAG|@DIGEST]",
    )
    p.add_argument("--no-files", action="store_true", help="omit the file listing")
    p.add_argument("--insecure", action="store_true", help="plain http to the registry (warned about)")
    p.set_defaults(handler=cmd_inspect)


def source_date_epoch(value: str | None) -> int:
    """The build timestamp: the flag, else ``$SOURCE_DATE_EPOCH``, else 0; validated."""
    origin = "--source-date-epoch"
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
        origin = "SOURCE_DATE_EPOCH"
    if value is None or value == "":
        return 0
    if not value.isascii() or not value.isdigit():
        # A bad flag is a usage error (2); a bad environment variable a failure (1).
        error = UsageError if origin.startswith("--") else KilnError
        raise error(
            f"{origin}={value!r} is not a non-negative integer",
            hint="use seconds since 1970-01-01T00:00:00Z, e.g. $(git log -1 --format=%ct)",
        )
    epoch = int(value)
    if epoch > _MAX_EPOCH:
        raise (UsageError if origin.startswith("--") else KilnError)(
            f"{origin}={value} is too large (max {_MAX_EPOCH})"
        )
    return epoch


def default_cache_dir() -> Path:
    """``$KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``."""
    from kiln.buildrecord import default_cache_dir as where

    return Path(where())


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    from builder.sources import assemble
    from manifests.image_parse import load_image_manifest

    m = load_image_manifest(args.manifest)
    # The inputs too: every src exists, every closure path is an ELF file whose libraries resolve
    # (host metadata only; no file is read whole, nothing is written).
    assembly = assemble(m)
    out.result(
        f"{args.manifest}: valid ({m.name} {m.version}, {len(m.contents)} contents items, "
        f"{len(assembly.tree)} paths)",
        {
            "manifest": str(args.manifest),
            "valid": True,
            "name": m.name,
            "image_version": m.version,
        },
    )
    return 0


def cmd_build(args: argparse.Namespace, out: Output) -> int:
    import contextlib

    from kiln.buildrecord import InputRecorder, machine_caches, parse_request, record_build

    argv = getattr(args, "argv", None)
    recorder = None
    if argv is not None and not args.no_cache and parse_request(argv) is not None:
        recorder = InputRecorder(
            skip=[str(args.cache_dir or default_cache_dir()), *machine_caches(), str(args.output)],
            skip_prefixes=[str(args.output.parent / f".{args.output.name}.kiln-")],
        )
    with recorder if recorder is not None else contextlib.nullcontext():
        human, doc, result_output = _build(args, out)
    out.result(human, doc)
    if recorder is not None and argv is not None:
        # A cache that cannot be written only costs time, as for the build cache itself.
        with contextlib.suppress(OSError):
            record_build(
                argv,
                recorder,
                manifest_bytes=Path(args.manifest).read_bytes(),
                output=str(result_output),
                human=human,
                doc=doc,
                warn=out.progress,
            )
    return 0


def _build(args: argparse.Namespace, out: Output) -> tuple[str, dict[str, Any], Path]:
    """Build; the result as text, as a JSON document, and where it was written."""
    from builder.build import build_image
    from builder.cache import BuildCache
    from manifests.image_parse import load_image_manifest

    epoch = source_date_epoch(args.source_date_epoch)
    manifest = load_image_manifest(args.manifest)
    output = args.output
    if output is None:
        suffix = "" if args.format == "oci" else ".tar"
        output = Path("out") / f"{manifest.name.replace('/', '_')}{suffix}"
    if args.format == "vm":
        return _build_vm(args, out, manifest, epoch)
    cache = None if args.no_cache else BuildCache(args.cache_dir or default_cache_dir())
    from kiln.cmd_debian import prepare_debian
    from kiln.progress import live_progress

    debian = prepare_debian(args, manifest, out)
    with live_progress(out) as live:
        if len(manifest.platforms) > 1:
            from builder.platforms import build_platforms

            result = build_platforms(
                manifest,
                output=output,
                fmt=args.format,
                cache=cache,
                source_date_epoch=epoch,
                force=args.force,
                progress=out.progress,
                debian=debian,
            )
        else:
            result = build_image(
                manifest,
                output=output,
                fmt=args.format,
                cache=cache,
                source_date_epoch=epoch,
                force=args.force,
                progress=out.progress,
                debian=debian,
                name=args.name,
                meter=live.update if live is not None else None,
            )
    layers: list[dict[str, Any]] = [
        {
            "digest": str(layer.digest),
            "diff_id": str(layer.diff_id),
            "size": layer.size,
            "media_type": str(layer.media_type),
            "files": layer.files,
            "category": layer.category,
        }
        for layer in result.layers
    ]
    human = "\n".join(
        [
            f"built {result.name} {result.image_version}",
            f"  digest  {result.digest}",
            f"  size    {_human_size(result.size)} ({len(result.layers)} layers)",
            f"  output  {result.output}",
        ]
    )
    doc = {
        "name": result.name,
        "image_version": result.image_version,
        "digest": str(result.digest),
        "size": result.size,
        "layers": layers,
        "output": str(result.output),
        "format": args.format,
    }
    return human, doc, result.output


def _inspect_target(text: str) -> tuple[Path, str | None] | None:
    """(path, tag or digest) for a layout or archive on disk; ``None`` for a registry reference.

    ``oci:DIR:TAG`` and ``DIR:TAG`` split at the first colon after which an existing path ends
    (a tag may be a full ``name:version`` reference); ``DIR@sha256:HEX`` names a digest.
    """
    body = text.removeprefix("oci:")
    if Path(body).exists():
        return Path(body), None
    head, at, digest = body.rpartition("@")
    if at and digest.startswith("sha256:") and Path(head).exists():
        return Path(head), digest
    for i, char in enumerate(body):
        if char == ":" and i and body[i + 1 :] and Path(body[:i]).exists():
            return Path(body[:i]), body[i + 1 :]
    if text.startswith("oci:") or "/" not in text:
        return Path(body), None  # missing: the open below says so, naming it
    return None


def _readable(value: Any) -> str:
    """A config value as a person reads it: strings bare, lists and objects as JSON."""
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _build_vm(
    args: argparse.Namespace, out: Output, manifest: Any, epoch: int
) -> tuple[str, dict[str, Any], Path]:
    from builder.vm.image import build_vm

    output = args.output or Path("out") / f"{manifest.name.replace('/', '_')}.vm"
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir()) / "bytecode"
    result = build_vm(
        manifest,
        output=output,
        source_date_epoch=epoch,
        force=args.force,
        progress=out.progress,
        bytecode_cache=cache,
    )
    cfg = result.config
    human = [
        f"built {cfg.name} {cfg.version} (VM, {cfg.profile})",
        f"  digest  {result.digest}",
        f"  tree    {cfg.tree_digest}",
    ]
    if cfg.verity is not None:
        human.append(f"  root    {cfg.verity.root_hash}")
    human += [f"  size    {_human_size(result.size)} ({len(cfg.parts)} parts)", f"  output  {result.output}"]
    doc = {
        "name": cfg.name,
        "image_version": cfg.version,
        "digest": str(result.digest),
        "size": result.size,
        "output": str(result.output),
        "format": "vm",
        "vm": cfg.to_dict(),
    }
    return "\n".join(human), doc, result.output


def _inspect_vm(args: argparse.Namespace, out: Output, info: dict[str, Any]) -> int:
    vm = info["vm"]
    lines = [f"{args.image}  (VM image, {vm['profile']}, every part verified)"]
    if info.get("digest"):
        lines.append(f"  digest  {info['digest']}")
    lines += [
        f"  name    {vm['name']} {vm['version']}",
        f"  kernel  {vm['kernelRelease']}, {vm['memoryMiB']} MiB, {vm['cpus']} cpu",
        f"  tree    {vm['treeDigest']}",
    ]
    if "verity" in vm:
        lines.append(f"  root    {vm['verity']['rootHash']} ({vm.get('layout')})")
    cfg = vm["config"]
    lines.append(f"  run     {cfg['uid']}:{cfg['gid']} {' '.join(cfg['entrypoint'] + cfg['cmd'])}")
    if vm["ports"]:
        lines.append(f"  ports   {', '.join(vm['ports'])}")
    lines.append(f"  parts   {len(info['parts'])}")
    for part in info["parts"]:
        lines.append(f"    {part['file']:<14}{part['digest']}  {_human_size(part['size'])}")
    out.result("\n".join(lines), info)
    return 0


def cmd_inspect(args: argparse.Namespace, out: Output) -> int:
    import contextlib
    import tempfile

    from builder.inspect import format_tree, inspect_image

    with contextlib.ExitStack() as stack:
        target = _inspect_target(args.image)
        if target is None:
            from kiln.cmd_publish import fetch_image

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-inspect-")))
            digest = fetch_image(args.image, tmp / "image", insecure=args.insecure, progress=out.progress)
            target = (tmp / "image", str(digest))
        path, ref = target
        info = inspect_image(path, ref=ref)
    if info.get("kind") == "vm":
        return _inspect_vm(args, out, info)
    if args.no_files:
        info.pop("files", None)
    lines = [f"{args.image}", f"  digest  {info['digest']}"]
    cfg = info.get("config", {})
    for key in ("user", "entrypoint", "cmd", "workdir", "env", "ports"):
        if cfg.get(key):
            lines.append(f"  {key:<10} {_readable(cfg[key])}")
    lines.append(f"  layers  {len(info['layers'])}")
    for layer in info["layers"]:
        lines.append(f"    {layer['digest']}  {_human_size(layer['size'])}  {layer.get('files', '?')} files")
    if "files" in info:
        lines.append(format_tree(info["files"]))
    out.result("\n".join(lines), info)
    return 0
