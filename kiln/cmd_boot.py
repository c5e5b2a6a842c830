"""``kiln boot DIR|REF``: boot a VM image locally under qemu, verified first; exit with the guest's status.

``DIR`` is a VM image directory (``kiln build --format vm``); ``REF`` is ``oci:DIR[:TAG|@DIGEST]``
or ``HOST/REPO[:TAG|@DIGEST]``, pulled first (every blob hashed against the manifest) into a
temporary directory that is removed afterwards. Before qemu starts, every part's digest and the
root hash are checked against ``vm.json`` as the part is copied into a sealed memfd that qemu then
boots (:func:`agent.vmimage.sealed_parts`; exit 3 when refused) — unless ``--unsafe-skip-verify``,
which warns every time and exists to show what dm-verity does with a tampered disk (the guest
panics, the boot fails).

The serial console is printed as it comes (stdout; stderr with ``--json``). The exit status is the
guest entrypoint's, or 1 when the guest did not exit cleanly (a kernel panic, a crash, qemu
failing). ``--publish 127.0.0.1:HOST:GUEST`` forwards a loopback port to the guest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent.qemu import Forward, GuestExit, Machine, boot_plan, guest_exit, pick_accel, plan_on_fds, qemu_argv
from agent.vmimage import VM_FILE, sealed_parts
from kiln.output import Output
from manifests.errors import DocumentError, KilnError
from manifests.mediatypes import MediaType
from manifests.oci import OCIManifest
from manifests.vm import PartName, VMConfig

__all__ = ["register", "cmd_boot"]

_TAIL = 64 << 10


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("boot", help="boot a VM image locally under qemu, verified first")
    p.add_argument("src", metavar="DIR|REF", help="a VM image directory, oci:DIR[:TAG] or HOST/REPO[:TAG]")
    p.add_argument(
        "--publish",
        "-p",
        action="append",
        default=[],
        metavar="127.0.0.1:HOST:GUEST",
        help="forward a loopback port to a guest port (repeatable)",
    )
    p.add_argument(
        "--unsafe-skip-verify",
        action="store_true",
        help="boot WITHOUT checking the parts' digests and root hash (for demonstrating tampering)",
    )
    p.add_argument("--machine", choices=[m.value for m in Machine], default="microvm", help="qemu machine")
    p.add_argument(
        "--accel", choices=("auto", "kvm", "tcg"), default=None, help="KVM when it works (auto), or force one"
    )
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the guest after this")
    p.add_argument(
        "--insecure", action="store_true", help="plain http to a registry on loopback (never elsewhere)"
    )
    p.set_defaults(handler=cmd_boot)


@contextlib.contextmanager
def _vm_dir(src: str, *, insecure: bool, out: Output) -> Iterator[Path]:
    """The VM image directory to boot: ``src`` itself, or a REF pulled into a temporary one."""
    path = Path(src)
    if (path / VM_FILE).is_file():
        yield path
        return
    from kiln.cmd_publish import open_endpoint
    from publisher.copy import copy_image
    from publisher.endpoint import LayoutLocation, parse_location
    from publisher.layoutstore import LayoutRepository
    from publisher.publish import built_image

    if path.is_dir() and not src.startswith("oci:"):
        src = f"oci:{src}"
    elif src.startswith(("/", "./", "../")) and not path.exists():
        hint = "kiln build M --format vm -o DIR writes one"
        raise KilnError(f"{src}: no such VM image directory", hint=hint)
    loc = parse_location(src)
    work = Path(tempfile.mkdtemp(prefix="kiln-boot-"))
    try:
        with open_endpoint(loc, insecure=insecure, jobs=4) as opened:
            ref = loc.digest or loc.tag
            if ref is None:
                if not isinstance(loc, LayoutLocation):
                    ref = "latest"
                else:
                    endpoint = opened.endpoint
                    assert isinstance(endpoint, LayoutRepository)  # noqa: S101 - a layout location
                    ref = built_image(endpoint, None)[0].digest
            dest = LayoutRepository(work / "layout", create=True)
            closure, _ = copy_image(opened.endpoint, dest, ref, progress=out.progress)
        manifest = OCIManifest.from_bytes(closure.root.data)
        if MediaType.KILN_VM not in (manifest.artifact_type, manifest.config.media_type):
            raise DocumentError(
                f"{src} is not a VM image (artifactType {manifest.artifact_type or 'none'})",
                hint="kiln boot takes images built with --format vm",
            )
        blobs = work / "layout" / "blobs" / "sha256"
        vm = work / "vm"
        vm.mkdir()
        raw = (blobs / manifest.config.digest.hex).read_bytes()
        (vm / VM_FILE).write_bytes(raw)
        for part in VMConfig.from_bytes(raw).parts:
            os.link(blobs / part.digest.hex, vm / part.file)
        yield vm
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cmd_boot(args: argparse.Namespace, out: Output) -> int:
    forwards = [Forward.parse(text) for text in args.publish]
    with _vm_dir(args.src, insecure=args.insecure, out=out) as directory:
        config = VMConfig.from_bytes((directory / VM_FILE).read_bytes())
        if args.unsafe_skip_verify:
            out.warn(
                "--unsafe-skip-verify: booting WITHOUT checking the parts' digests and root hash; "
                "only dm-verity in the guest stands between a tampered disk and this boot"
            )
        fds: dict[PartName, int] = {}
        try:  # the sealed fds are closed whatever fails after they are opened (the plan, the accel)
            if not args.unsafe_skip_verify:
                # The checked bytes are the booted bytes: sealed copies that qemu inherits.
                fds = sealed_parts(directory, config)
                out.progress(
                    f"verified {len(config.parts)} parts of {config.name} {config.version} against vm.json"
                )
            plan = boot_plan(
                directory,
                config,
                name="kiln-boot",
                forwards=forwards,
                serial=None,
                machine=Machine(args.machine),
                accel=pick_accel(args.accel),
            )
            if fds:
                plan = plan_on_fds(plan, config, fds)
            result = _run(qemu_argv(plan), out=out, timeout=args.timeout, fds=tuple(fds.values()))
        finally:
            for fd in fds.values():
                os.close(fd)
    if out.json_mode:
        out.result(result.detail, {"name": config.name, "status": result.status, "detail": result.detail})
    else:
        out.progress(f"kiln: {result.detail}")
    return result.code


def _run(argv: list[str], *, out: Output, timeout: float | None, fds: tuple[int, ...] = ()) -> GuestExit:
    console = out.stderr if out.json_mode else out.stdout
    tail = bytearray()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds
        )
    except OSError as exc:
        raise KilnError(
            f"cannot run {argv[0]}: {exc.strerror or exc}", hint="install qemu-system-x86"
        ) from exc
    assert proc.stdout is not None  # noqa: S101 - a pipe was asked for
    assert proc.stderr is not None  # noqa: S101 - a pipe was asked for
    timer = None
    expired: list[bool] = []
    if timeout is not None:
        import threading

        def expire() -> None:
            expired.append(True)
            proc.terminate()

        timer = threading.Timer(timeout, expire)
        timer.start()
    try:
        for line in iter(proc.stdout.readline, b""):
            tail += line
            del tail[:-_TAIL]
            console.write(line.decode("utf-8", "replace"))
            console.flush()
        errors = proc.stderr.read()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    if expired:
        return GuestExit(status=None, detail=f"stopped after --timeout {timeout:g}s")
    result = guest_exit(rc, tail.decode("utf-8", "replace"))
    if result.status is None and errors.strip():
        out.warn(errors.decode("utf-8", "replace").strip()[-1500:])
    return result
