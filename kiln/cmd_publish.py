"""Verbs that move images: ``publish``, ``pull``, ``copy``.

Locations are ``oci:DIR[:TAG|@sha256:HEX]`` (an OCI layout: the embedded default) or
``HOST[:PORT]/REPO[:TAG][@sha256:HEX]`` (a registry, named explicitly). ``--insecure`` allows plain
http, and only to a registry on loopback. Credentials come from ``KILN_REGISTRY_USERNAME`` /
``KILN_REGISTRY_PASSWORD`` or the Docker config (``docker login``, credential helpers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.output import Output, UsageError
from kiln.progress import LiveProgress, live_progress
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.layoutref import tag_of
from manifests.oci import Descriptor, OCIManifest
from publisher.copy import BlobCounts, CopyResult, collect_closure, copy_closure, copy_image
from publisher.endpoint import Endpoint, LayoutLocation, Location, parse_location
from publisher.errors import InvalidReference, PublishError
from publisher.layoutstore import LayoutRepository
from publisher.publish import (
    VERSION_ANNOTATION,
    PublishResult,
    TagAction,
    built_image,
    check_channels,
    image_version,
    publish,
    version_tag,
)
from publisher.reference import Reference
from publisher.transfer import Manifest

if TYPE_CHECKING:
    from kiln.buildrecord import InputRecorder

__all__ = ["register", "open_endpoint", "Opened"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="push a built image with its signatures; tag its version")
    p.add_argument("src", metavar="SRC", help="the built OCI layout: DIR or oci:DIR[:TAG]")
    p.add_argument("dest", metavar="DEST", help="HOST[:PORT]/REPO, or oci:DIR (the embedded default)")
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME",
        help="a channel tag to move to this image (repeatable)",
    )
    _transfer_args(p)
    p.set_defaults(handler=cmd_publish)

    p = sub.add_parser("pull", help="fetch an image by digest or tag into a new OCI layout")
    p.add_argument("ref", metavar="REF", help="HOST/REPO:TAG, HOST/REPO@sha256:..., or oci:DIR[:TAG]")
    p.add_argument("out", type=Path, metavar="OUT", help="the OCI layout directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _transfer_args(p)
    p.set_defaults(handler=cmd_pull)

    p = sub.add_parser("copy", help="copy an image with its signatures, digests unchanged")
    p.add_argument("src", metavar="SRC", help="HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG|@DIGEST]")
    p.add_argument("dest", metavar="DEST", help="HOST/REPO[:TAG] or oci:DIR[:TAG]")
    p.add_argument("--force", action="store_true", help="move DEST's tag if it names another image")
    _transfer_args(p)
    p.set_defaults(handler=cmd_copy)


def _transfer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=_jobs, default=4, metavar="N", help="blobs in flight at once (default 4)")
    p.add_argument(
        "--insecure", action="store_true", help="plain http to a registry on loopback (never elsewhere)"
    )


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("--jobs must be between 1 and 64")
    return n


# -- endpoints --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    endpoint: Endpoint
    location: Location

    @property
    def registry_name(self) -> tuple[str, str] | None:
        """(registry, repository) for a registry endpoint."""
        from publisher.registrystore import RegistryRepository

        if isinstance(self.endpoint, RegistryRepository):
            return self.endpoint.registry, self.endpoint.repository
        return None


@contextlib.contextmanager
def open_endpoint(location: Location, *, insecure: bool, jobs: int, create: bool = False) -> Iterator[Opened]:
    """An endpoint for ``location``; a registry client is closed on exit. A layout directory that
    ``create`` made is removed again if the block fails (:meth:`LayoutRepository.discard_created`)."""
    if isinstance(location, LayoutLocation):
        with LayoutRepository(location.directory, create=create).discarded_on_failure() as layout:
            yield Opened(layout, location)
        return
    with _collector_paused():
        # Not at the top: httpx (~0.1 s of imports) is for registries only, not for oci:DIR.
        from publisher.auth import resolve_credentials
        from publisher.client import RegistryClient
        from publisher.registrystore import RegistryRepository

        client = RegistryClient(  # its transport loads httpcore
            location.api_host,
            insecure=insecure,
            credentials=resolve_credentials(location.registry),
            jobs=jobs,
        )
    with client:
        yield Opened(RegistryRepository(client, location.repository), location)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block. Loading httpx and httpcore makes tens of
    thousands of objects that live as long as the process; the collector's passes over them while
    they load took ~8 ms and freed nothing."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _selector(location: Location) -> str | Digest | None:
    if location.digest is not None:
        return location.digest
    return location.tag


def _mount_from(src: Opened, dest: Opened) -> str | None:
    a, b = src.registry_name, dest.registry_name
    if a is not None and b is not None and a[0] == b[0] and a[1] != b[1]:
        return a[1]
    return None


def _blobs_line(counts: BlobCounts) -> str:
    return f"blobs: {counts.uploaded} uploaded, {counts.existed} existed, {counts.mounted} mounted"


# -- publish ----------------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace, out: Output) -> int:
    from kiln.publishrecord import recorder_for

    # Watching from the start: reading the layout is reading the inputs (kiln.publishrecord).
    recorder = recorder_for(getattr(args, "argv", None))
    with recorder if recorder is not None else contextlib.nullcontext():
        return _publish(args, out, recorder)


def _publish(args: argparse.Namespace, out: Output, recorder: InputRecorder | None) -> int:
    try:
        src_loc = parse_location(args.src, bare_directory=True)
    except InvalidReference:
        if args.src.startswith("oci:"):
            raise
        src_loc = LayoutLocation(directory=Path(args.src))  # a missing directory: say so below
    if not isinstance(src_loc, LayoutLocation):
        raise UsageError(
            f"publish takes a built OCI layout, not {args.src}",
            hint="use kiln copy to move an image between registries",
        )
    dest_loc = parse_location(args.dest)
    if dest_loc.tag is not None or dest_loc.digest is not None:
        raise UsageError(
            f"publish names the repository only, not a tag or digest: {args.dest}",
            hint="the version tag comes from the image; add moving names with --channel",
        )
    src = LayoutRepository(src_loc.directory)
    if src_loc.digest is not None:
        found = src.get_manifest(src_loc.digest)
        if found is None:
            raise PublishError(f"{src.display}: no manifest {src_loc.digest}")
        root, layout_tag = found, None
    else:
        root, layout_tag = built_image(src, src_loc.tag)
    version = image_version(src, root, layout_tag=layout_tag)
    check_channels(args.channel, version_tag(version))  # refuse before creating anything at DEST
    with (
        open_endpoint(dest_loc, insecure=args.insecure, jobs=args.jobs, create=True) as dest,
        live_progress(out) as live,
    ):
        result = publish(
            src,
            root,
            dest.endpoint,
            version=version,
            channels=args.channel,
            jobs=args.jobs,
            progress=out.progress,
            watch=_blob_bars(live),
        )
        if recorder is not None and isinstance(dest_loc, Reference):
            _record(args.argv, recorder, src=src, root=root, dest=dest, result=result, out=out)
    # Printed once DEST is complete: a failure to print does not undo a publish that succeeded.
    human, data = _publish_output(result)
    out.result(human, data)
    return 0


def _publish_output(result: PublishResult) -> tuple[str, dict[str, Any]]:
    lines = [result.reference]
    for change in result.tags:
        kind = "channel" if change.channel else "version"
        moved = f" (was {change.previous})" if change.previous is not None else ""
        lines.append(f"  {change.tag:<20} {kind:<8} {change.action}{moved}")
    lines.append("  " + _blobs_line(result.blobs))
    if not result.changed:
        lines.append("  already published: nothing changed")
    return "\n".join(lines), result.to_dict()


def _record(
    argv: Sequence[str],
    recorder: InputRecorder,
    *,
    src: LayoutRepository,
    root: Manifest,
    dest: Opened,
    result: PublishResult,
    out: Output,
) -> None:
    """Record what a no-change publish of the same layout would find and print (kiln.publishrecord):
    each tag the image is reached by at the registry, with the digest it names now."""
    from kiln.publishrecord import record_publish
    from publisher.registrystore import RegistryRepository
    from publisher.session import is_loopback_host

    endpoint = dest.endpoint
    if (
        not isinstance(endpoint, RegistryRepository)
        or not endpoint.client.session.base_url.startswith("http:")
        or not is_loopback_host(endpoint.client.registry)
    ):
        return  # TLS, or plain http to another machine: the fast path is for loopback only
    tags = [(t.tag, str(result.digest)) for t in result.tags]
    names = list(result.signatures)
    if src.referrers(root.digest):
        if endpoint.client.referrers_api(endpoint.repository) is not False:
            return  # the referrers API: no tag shows a referrer gone
        names.append(root.digest.tag_form)
    for name in names:
        # The tags this run wrote or read are known without another round trip (the referrers
        # index was just written or found complete); the replay checks every one of them anyway.
        found = endpoint.client.known_tag(endpoint.repository, name) or endpoint.tag_target(name)
        if found is None:
            return
        tags.append((name, str(found.digest)))
    unchanged = dataclasses.replace(
        result,
        tags=tuple(dataclasses.replace(t, action=TagAction.UNCHANGED, previous=None) for t in result.tags),
        blobs=BlobCounts(existed=result.blobs.uploaded + result.blobs.existed + result.blobs.mounted),
        manifests_written=0,
    )
    human, data = _publish_output(unchanged)
    with contextlib.suppress(OSError):
        record_publish(
            argv,
            recorder,
            host=endpoint.client.registry,
            repo=endpoint.repository,
            tags=tags,
            human=human,
            doc=data,
            warn=out.progress,
        )


# -- pull -------------------------------------------------------------------------------------------


def _out_tag(location: Location, root: Manifest) -> str | None:
    """The tag the pulled image gets in OUT: the one pulled, else its version, else none."""
    if location.tag is not None:
        return location.tag
    try:
        version = OCIManifest.from_bytes(root.data).annotations.get(VERSION_ANNOTATION)
    except KilnError:
        return None
    if not version:
        return None
    try:
        return version_tag(version)
    except PublishError:
        return None


@contextlib.contextmanager
def _staged_output(out_dir: Path, *, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out_dir`` that replaces it only if the block succeeds."""
    out_dir = Path(out_dir)
    if (out_dir.exists() or out_dir.is_symlink()) and not force:
        raise KilnError(f"{out_dir} already exists", hint="pass --force to replace it")
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.kiln-pull-"))
    try:
        yield stage / "layout"
        old = None
        if out_dir.exists() or out_dir.is_symlink():
            old = stage / "previous"
            os.replace(out_dir, old)
        os.replace(stage / "layout", out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    loc = parse_location(args.ref)
    if isinstance(loc, Reference) and loc.tag is None and loc.digest is None:
        loc = Reference(registry=loc.registry, repository=loc.repository, tag="latest")
    ref = _selector(loc)
    with (
        open_endpoint(loc, insecure=args.insecure, jobs=args.jobs) as src,
        _staged_output(args.out, force=args.force) as stage,
    ):
        if ref is None:
            layout_src = src.endpoint
            assert isinstance(layout_src, LayoutRepository)  # noqa: S101 - a layout without a selector
            ref = built_image(layout_src, None)[0].digest
        dest = LayoutRepository(stage, create=True)
        with live_progress(out) as live:
            closure, copied = copy_image(
                src.endpoint, dest, ref, jobs=args.jobs, progress=out.progress, watch=_blob_bars(live)
            )
        tag = _out_tag(loc, closure.root)
        if tag is not None:
            dest.set_tag(tag, closure.root)
        else:
            with dest.locked():
                dest.layout.add(closure.root.descriptor)
    out_dir = Path(args.out)
    pinned = f"oci:{out_dir}@{closure.digest}"
    data = _copy_data(pinned, copied, [tag] if tag else [])
    data["source"] = str(loc)
    out.result(f"{pinned}\n  pulled from {loc}\n  " + _blobs_line(copied.blobs), data)
    return 0


def _blob_bars(live: LiveProgress | None) -> Callable[[Digest, int, int], None] | None:
    """One live bar per blob (bytes and rate), keyed by digest."""
    if live is None:
        return None

    def watch(digest: Digest, done: int, size: int) -> None:
        live.update(str(digest), f"blob {digest.hex[:12]}", done, size)

    return watch


def fetch_image(
    text: str, out_dir: Path, *, insecure: bool, progress: Callable[[str], None] | None = None
) -> Digest:
    """Pull the image ``text`` names (a registry reference; ``:latest`` when it names none) into a
    new layout ``out_dir``; returns its digest (``kiln inspect`` of a registry image)."""
    loc = parse_location(text)
    if isinstance(loc, Reference) and loc.tag is None and loc.digest is None:
        loc = Reference(registry=loc.registry, repository=loc.repository, tag="latest")
    ref = _selector(loc)
    if ref is None:
        raise UsageError(f"{text}: name a tag or a digest")
    with open_endpoint(loc, insecure=insecure, jobs=4) as src:
        dest = LayoutRepository(out_dir, create=True)
        closure, _ = copy_image(src.endpoint, dest, ref, jobs=4, progress=progress)
        with dest.locked():
            dest.layout.add(closure.root.descriptor)
    return closure.digest


def _copy_data(reference: str, copied: CopyResult, tags: list[str]) -> dict[str, object]:
    return {
        "reference": reference,
        "digest": str(copied.digest),
        "tags": tags,
        "blobs": copied.blobs.to_dict(),
        "signatures": list(copied.cosign_tags),
        "referrers": copied.referrers,
    }


# -- copy -------------------------------------------------------------------------------------------


def _check_tag_free(dest: Endpoint, tag: str, digest: Digest, *, force: bool) -> Descriptor | None:
    current = dest.tag_target(tag)
    if current is not None and current.digest != digest and not force:
        raise PublishError(
            f"{dest.display}:{tag} already names {current.digest}, not {digest}",
            hint="pass --force to move the tag (version tags should never move: use kiln publish)",
        )
    return current


def _tag_for(dest: Location, name: str | None) -> str | None:
    """The source's name as DEST takes it: a layout keeps a build's full ref.name
    (``python-web:1.0.0``); a registry repository gets its tag part (``1.0.0``)."""
    if name is None or isinstance(dest, LayoutLocation):
        return name
    return tag_of(name)


def cmd_copy(args: argparse.Namespace, out: Output) -> int:
    src_loc = parse_location(args.src)
    dest_loc = parse_location(args.dest)
    if dest_loc.digest is not None:
        raise UsageError(
            f"DEST names a digest: {args.dest}", hint="the digest is the source's; name a tag or nothing"
        )
    tag = dest_loc.tag or _tag_for(dest_loc, src_loc.tag)
    with open_endpoint(src_loc, insecure=args.insecure, jobs=args.jobs) as src:
        ref = _selector(src_loc)
        if ref is None:
            if isinstance(src.endpoint, LayoutRepository):
                root, found = built_image(src.endpoint, None)
                ref, tag = root.digest, tag or found
            else:
                ref = tag = "latest"
        root_man = src.endpoint.get_manifest(ref)
        if root_man is None:
            raise PublishError(f"{src.endpoint.display}: no image {ref}", hint="check the tag or digest")
        closure = collect_closure(src.endpoint, root_man)  # the source's manifests, before DEST exists
        with open_endpoint(dest_loc, insecure=args.insecure, jobs=args.jobs, create=True) as dest:
            if tag is not None:
                _check_tag_free(dest.endpoint, tag, root_man.digest, force=args.force)
            with live_progress(out) as live:
                copied = copy_closure(
                    src.endpoint,
                    dest.endpoint,
                    closure,
                    jobs=args.jobs,
                    mount_from=_mount_from(src, dest),
                    progress=out.progress,
                    watch=_blob_bars(live),
                )
            with dest.endpoint.locked():
                if tag is not None:
                    current = _check_tag_free(dest.endpoint, tag, closure.digest, force=args.force)
                    if current is None or current.digest != closure.digest:
                        dest.endpoint.set_tag(tag, closure.root)
                elif isinstance(dest.endpoint, LayoutRepository):
                    dest.endpoint.add_untagged(closure.root.descriptor)
            pinned = dest.endpoint.pinned(closure.digest)
    data = _copy_data(pinned, copied, [tag] if tag else [])
    data["source"] = str(src_loc)
    out.result(f"{pinned}\n  copied from {src_loc}\n  " + _blobs_line(copied.blobs), data)
    return 0
