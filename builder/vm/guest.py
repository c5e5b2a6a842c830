"""The guest side of a VM image: the init (PID 1) and what it needs inside the initramfs.

Everything kiln adds lives under ``/kiln`` (the kernel runs ``rdinit=/kiln/init``): a static
busybox (the host's ``busybox-static``), applet links in ``/kiln/bin``, the selected modules in
``/kiln/modules`` with their load order in ``/kiln/modules.order``, and ``/kiln/config.sh`` (the
image config as shell: environment, workdir, user, writable mounts, the command). The ``verity``
profile adds ``dmsetup`` with its ELF closure at its Debian paths (the kernel has no ``DM_INIT``,
so userspace must create the verity target).

The init: mounts proc, sysfs and devtmpfs; loads the modules in order; brings up ``lo`` and
``eth0`` with the user-mode-net address; for ``verity`` it waits for the disk, creates the
dm-verity target from the ``kiln.*`` kernel arguments (``panic_on_corruption``) and mounts the
EROFS root read-only at ``/newroot``; mounts the writable directories as tmpfs owned by the image
user; runs the command with ``nsenter -r ROOT -w WORKDIR -S UID -G GID`` under ``env -i`` (the
image's environment only); prints ``kiln-exit: N`` and reboots (qemu ``-no-reboot`` then exits).
A setup failure makes init exit, and the kernel panics (``panic=-1``): no exit line, a failure.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from builder.elf import resolve_closure
from builder.errors import SourceError
from builder.tree import Category, Entry, EntryKind, FileTree
from builder.vm.modules import ModuleSet
from manifests.vm import EXIT_LINE_PREFIX, GUEST_ADDRESS, GUEST_GATEWAY, VMImageConfig

__all__ = ["APPLETS", "init_script", "config_script", "add_guest_tools", "MOUNT_POINTS", "BUSYBOX"]

BUSYBOX = Path("/usr/bin/busybox")
DMSETUP = "/usr/sbin/dmsetup"
APPLETS = (
    "cat", "dd", "echo", "env", "insmod", "ip", "mkdir", "mount", "nsenter", "od", "reboot",
    "seq", "sh", "sleep", "sync", "tr", "usleep",
)  # fmt: skip
MOUNT_POINTS = ("/dev", "/proc", "/sys")
_ORIGIN = "kiln vm guest"

_INIT = r"""#!/kiln/busybox sh
# kiln guest init (PID 1). Written by kiln; see docs/vm.md.
export PATH=/kiln/bin
fail() { echo "kiln-init: $*"; exit 1; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /kiln/modules.order); do
    insmod "/kiln/modules/$m.ko" || fail "cannot load module $m"
done
PROFILE= LAYOUT= ROOTHASH= SALT= DATABLOCKS= ENVFROM=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kiln.profile=*) PROFILE=${arg#*=} ;;
        kiln.layout=*) LAYOUT=${arg#*=} ;;
        kiln.roothash=*) ROOTHASH=${arg#*=} ;;
        kiln.salt=*) SALT=${arg#*=} ;;
        kiln.datablocks=*) DATABLOCKS=${arg#*=} ;;
        kiln.env=*) ENVFROM=${arg#*=} ;;
    esac
done
ip link set lo up
for i in $(seq 1 200); do [ -e /sys/class/net/eth0 ] && break; usleep 10000; done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add @ADDRESS@/24 dev eth0
    ip route add default via @GATEWAY@
fi
wait_for() {
    for i in $(seq 1 500); do [ -b "$1" ] && return 0; usleep 10000; done
    fail "no device $1"
}
magic() { od -An -tx1 -j1024 -N4 "$1" | tr -d ' \n'; }
if [ "$PROFILE" = verity ]; then
    [ -n "$ROOTHASH" ] && [ -n "$DATABLOCKS" ] || fail "kiln.roothash and kiln.datablocks are required"
    if [ "$LAYOUT" = gpt ]; then
        wait_for /dev/vda2
        DATA=/dev/vda1 HASH=/dev/vda2
    else
        wait_for /dev/vdb
        DATA=/dev/vdb HASH=/dev/vda
        if [ "$(magic /dev/vda)" = e2e1f5e0 ]; then DATA=/dev/vda HASH=/dev/vdb; fi
    fi
    TABLE="0 $((DATABLOCKS * 8)) verity 1 $DATA $HASH 4096 4096 $DATABLOCKS 1 sha256"
    TABLE="$TABLE $ROOTHASH $SALT 1 panic_on_corruption"
    DM_DISABLE_UDEV=1 /usr/sbin/dmsetup create kiln-root --readonly --noudevsync --table "$TABLE" \
        || fail "cannot create the verity target"
    wait_for /dev/dm-0
    mount -t erofs -o ro /dev/dm-0 /newroot || fail "cannot mount the root"
    ROOT=/newroot
    mount -t proc proc /newroot/proc
    mount -t sysfs sysfs /newroot/sys
    mount -t devtmpfs devtmpfs /newroot/dev
elif [ "$PROFILE" = initramfs ]; then
    ROOT=/
else
    fail "unknown kiln.profile '$PROFILE'"
fi
. /kiln/config.sh
kiln_mounts || fail "cannot mount the writable directories"
# The runner's environment for this instance (the release's per-service env), from qemu's fw_cfg:
# a `set -- 'K=V' ...` line the runner quoted; kiln_run passes "$@" after the image's environment.
set --
if [ "$ENVFROM" = fw_cfg ]; then
    for m in $(cat /kiln/modules.env); do
        insmod "/kiln/modules/$m.ko" || fail "cannot load module $m"
    done
    ENVFILE=/sys/firmware/qemu_fw_cfg/by_name/opt/kiln/env/raw
    [ -r "$ENVFILE" ] || fail "kiln.env=fw_cfg but no opt/kiln/env"
    . "$ENVFILE" || fail "cannot read the run-time environment"
fi
kiln_run "$@"
status=$?
echo "@EXIT@$status"
sync
reboot -f
"""


def init_script() -> bytes:
    return (
        _INIT.replace("@ADDRESS@", GUEST_ADDRESS)
        .replace("@GATEWAY@", GUEST_GATEWAY)
        .replace("@EXIT@", EXIT_LINE_PREFIX)
        .encode()
    )


def config_script(cfg: VMImageConfig) -> bytes:
    """``/kiln/config.sh``: ``kiln_mounts`` and ``kiln_run`` for this image (``$ROOT`` is set)."""
    q = shlex.quote
    lines = ["# the image config, written by kiln", "kiln_mounts() {", "    :"]
    for path in cfg.writable:
        opts = f"nosuid,nodev,mode=0755,uid={cfg.uid},gid={cfg.gid}"
        lines.append(f'    mount -t tmpfs -o {opts} tmpfs "$ROOT"{q(path)} || return 1')
    lines.append("}")
    env = " ".join(q(f"{k}={v}") for k, v in cfg.env)
    workdir = cfg.workdir or "/"
    argv = " ".join(q(a) for a in cfg.argv)
    lines += [
        "kiln_run() {",
        f'    /kiln/busybox env -i {env} "$@" /kiln/busybox nsenter -r"$ROOT" -w"$ROOT"{q(workdir)} \\',
        f"        -S {cfg.uid} -G {cfg.gid} -F -- {argv}",
        "}",
        "",
    ]
    return "\n".join(lines).encode()


def _file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(
        path=path,
        kind=EntryKind.FILE,
        mode=mode,
        size=len(data),
        data=data,
        origin=_ORIGIN,
        category=Category.SYSTEM,
    )


def _dir(path: str) -> Entry:
    return Entry(path=path, kind=EntryKind.DIR, mode=0o755, origin=_ORIGIN, category=Category.SYSTEM)


def add_guest_tools(
    tree: FileTree,
    *,
    modules: ModuleSet,
    config: VMImageConfig,
    verity: bool,
    busybox: Path = BUSYBOX,
    env_modules: ModuleSet | None = None,
) -> None:
    """Add ``/kiln`` (and, for ``verity``, dmsetup and ``/newroot``) to ``tree``."""
    if "/kiln" in tree:
        raise SourceError(
            "the image has a /kiln path, which a VM image reserves for its init", hint="move it elsewhere"
        )
    try:
        size = busybox.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read {busybox}: {exc.strerror}", hint="install busybox-static") from exc
    tree.add(
        Entry(
            path="/kiln/busybox",
            kind=EntryKind.FILE,
            mode=0o755,
            size=size,
            host_path=busybox,
            origin=_ORIGIN,
            category=Category.SYSTEM,
        )
    )
    for applet in APPLETS:
        tree.add(
            Entry(
                path=f"/kiln/bin/{applet}",
                kind=EntryKind.SYMLINK,
                mode=0o777,
                target="../busybox",
                origin=_ORIGIN,
                category=Category.SYSTEM,
            )
        )
    tree.add(_file("/kiln/init", init_script(), 0o755))
    tree.add(_file("/kiln/config.sh", config_script(config)))
    tree.add(_file("/kiln/modules.order", "".join(f"{n}\n" for n in modules.names).encode()))
    for m in modules.modules:
        tree.add(_file(f"/kiln/modules/{m.name}.ko", m.data))
    # Loaded only when the runner passes an environment (kiln.env=fw_cfg): no cost otherwise.
    extra = [m for m in (env_modules.modules if env_modules else ()) if m.name not in modules.names]
    tree.add(_file("/kiln/modules.env", "".join(f"{m.name}\n" for m in extra).encode()))
    for m in extra:
        tree.add(_file(f"/kiln/modules/{m.name}.ko", m.data))
    for path in MOUNT_POINTS:
        if path not in tree:
            tree.add(_dir(path))
    if verity:
        tree.add(_dir("/newroot"))
        closure = resolve_closure([DMSETUP], Path("/"))
        for f in closure.files:
            st = f.host_path.stat()
            tree.add(
                Entry(
                    path=f.image_path,
                    kind=EntryKind.FILE,
                    mode=0o755 if st.st_mode & 0o111 else 0o644,
                    size=st.st_size,
                    host_path=f.host_path,
                    origin=_ORIGIN,
                    category=Category.SYSTEM,
                )
            )
        for s in closure.symlinks:
            tree.add(
                Entry(
                    path=s.image_path,
                    kind=EntryKind.SYMLINK,
                    mode=0o777,
                    target=s.target,
                    origin=_ORIGIN,
                    category=Category.SYSTEM,
                )
            )
