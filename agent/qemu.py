"""The qemu runtime: instances of a VM service as detached qemu processes (ADR 0016).

How a VM boots (the same for the agent and for ``kiln boot``; :func:`boot_plan`, :func:`qemu_argv`):

- first :func:`agent.vmimage.sealed_parts`: every part is copied into a sealed memfd while it is
  hashed, and its digest and the root hash are checked against the signed ``vm.json`` (refusal
  ``reason="digest"``); qemu boots those copies (``/proc/self/fd/N``), so nothing unverified
  reaches it and what was checked is what boots, even if a file changes on disk meanwhile (the
  agent's runtime and ``kiln boot`` alike; only ``kiln boot --unsafe-skip-verify`` skips it);
- ``-M microvm`` (``q35`` as a fallback :class:`Machine`), under KVM when :func:`kvm_usable` (the
  device opens, ``KVM_CREATE_VM`` and ``KVM_CREATE_VCPU`` succeed and the CPU has ``vmx``/``svm``)
  and TCG otherwise;
- ``-kernel``/``-initrd`` and every drive of ``vm.json`` read-only (``readonly=on``), in order;
- user-mode networking with ``restrict=on`` (the guest reaches nothing; only the forwarded ports
  reach it): ``hostfwd`` from a loopback address to each guest port;
- ``-no-reboot`` with the image's ``panic=-1 reboot=t`` and an ``isa-debug-exit`` device: the
  guest init's exit status N makes qemu exit ``2N+1`` (and prints ``kiln-exit: N``); a guest
  panic (dm-verity corruption) reboots, so qemu exits 0 without an exit line: a failure
  (:func:`guest_exit`);
- the serial console goes to a file (the instance log) or to the caller;
- confined: qemu's seccomp sandbox (``-sandbox on,obsolete=deny,resourcecontrol=deny``) and, when
  started as root, ``-runas 65534:65534`` once the kernel, drives and log are open, so a guest
  that escaped the emulator is an unprivileged, filtered process;
- the command line is :meth:`VMConfig.boot_cmdline` with the host's ``tsc_early_khz``.

Agent instances (:class:`QemuRuntime`) run in their own network namespace (``/run/netns/<id>``,
loopback only, made like runc's), where qemu forwards ``127.0.0.1:<port>`` to the guest's
``<port>``: the agent's forwarder and health checks reach a VM exactly as they reach a container
(:func:`agent.netns.connect_in_netns`), ports never collide between instances, and nothing on the
host's loopback can reach a guest. qemu is started with ``-daemonize`` (its own session, parent
init), so it outlives the agent like a runc container. State::

    STATE/qemu/<id>/instance.json   what was started: argv, netns, ports, start time (drift: config)
    STATE/qemu/<id>/qemu.pid        qemu's pid (checked against /proc/<pid>/cmdline before use)
    STATE/qemu/<id>/env             the release's env for fw_cfg (0600; removed once qemu started)
    STATE/logs/<id>.log             the serial console (appended)

:class:`RoutedRuntime` puts a container runtime (runc or docker) and this one behind one
:class:`agent.runtime.Runtime`: a spec whose config is a ``vm.json`` boots under qemu, anything
else goes to the container runtime; an id is routed to the runtime that knows it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InstanceError, RuntimeFailure
from agent.netns import NETNS_DIR, create_netns, delete_netns
from agent.runtime import (
    INSTANCE_PREFIX,
    InstanceHandle,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    Runtime,
    check_instance_id,
)
from agent.vmimage import is_vm_config, sealed_parts, vm_config_of
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.errors import KilnError
from manifests.vm import DEBUG_EXIT_PORT, EXIT_LINE_PREFIX, PartName, VMConfig

__all__ = [
    "QEMU",
    "Machine",
    "Accel",
    "Forward",
    "BootPlan",
    "GuestExit",
    "host_tsc_khz",
    "kvm_usable",
    "pick_accel",
    "guest_ports",
    "boot_plan",
    "qemu_argv",
    "guest_exit",
    "QemuRuntime",
    "RoutedRuntime",
]

QEMU = "qemu-system-x86_64"
UNPRIVILEGED = "65534:65534"  # nobody:nogroup
_START_TIMEOUT = 60.0
_RECORD_CAPS = JsonCaps(max_bytes=1 << 20)  # instance.json, which this runtime wrote: a few KiB
_EXIT_LINE = re.compile(re.escape(EXIT_LINE_PREFIX) + r"(\d{1,3})\b")
_PANIC = re.compile(r"Kernel panic - not syncing: ?(.*)")


class Machine(enum.StrEnum):
    MICROVM = "microvm"
    Q35 = "q35"

    @property
    def virtio_suffix(self) -> str:
        """microvm has virtio-mmio devices, q35 virtio-pci ones."""
        return "device" if self is Machine.MICROVM else "pci"


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """``host:host_port`` (tcp) forwarded by qemu to the guest's ``guest_port``."""

    host: str
    host_port: int
    guest_port: int

    def __post_init__(self) -> None:
        if not (0 < self.host_port < 65536 and 0 < self.guest_port < 65536):
            raise InstanceError(f"invalid port forward {self.host}:{self.host_port}:{self.guest_port}")
        if not self.host.startswith("127.") and self.host != "::1":
            raise InstanceError(
                f"refusing to forward {self.host}:{self.host_port}", hint="VM ports are published on loopback"
            )

    @classmethod
    def parse(cls, text: str) -> Forward:
        """``HOST:HOSTPORT:GUESTPORT`` or ``HOSTPORT:GUESTPORT`` (host 127.0.0.1)."""
        bits = text.rsplit(":", 2)
        try:
            if len(bits) == 3:
                return cls(host=bits[0], host_port=int(bits[1]), guest_port=int(bits[2]))
            if len(bits) == 2:
                return cls(host="127.0.0.1", host_port=int(bits[0]), guest_port=int(bits[1]))
        except ValueError:
            pass
        raise InstanceError(f"invalid --publish {text!r}", hint="use 127.0.0.1:HOSTPORT:GUESTPORT")


@dataclass(frozen=True, slots=True, kw_only=True)
class BootPlan:
    """One qemu invocation, as values (:func:`qemu_argv` turns it into a command line)."""

    name: str
    kernel: Path
    initrd: Path
    drives: tuple[Path, ...]
    cmdline: str
    memory_mib: int
    cpus: int
    forwards: tuple[Forward, ...]
    serial: Path | None  # None: the serial console is qemu's stdout
    machine: Machine = Machine.MICROVM
    accel: Accel = Accel.TCG
    run_as: str | None = None  # "uid:gid" qemu drops to once its files are open (when started as root)
    env_file: Path | None = None  # the run-time environment (:func:`env_script`), as fw_cfg opt/kiln/env


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestExit:
    """How a boot ended: ``status`` is the guest entrypoint's exit status, or None on a failure."""

    status: int | None
    detail: str

    @property
    def code(self) -> int:
        """An exit code for the host: the guest's status, or 1 when the guest did not exit cleanly."""
        return self.status if self.status is not None else 1


# -- host facts ---------------------------------------------------------------------------------


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC frequency in kHz (``tsc_freq_khz`` in sysfs, else ``cpu MHz``), or None."""
    sysfs = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    with contextlib.suppress(OSError, ValueError):
        return int(sysfs.read_text().strip())
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    if m is None:
        return None
    khz = round(float(m.group(1)) * 1000)
    return khz if khz > 0 else None


_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_CREATE_VCPU = 0xAE41


def kvm_usable(device: str = "/dev/kvm", cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether KVM really works here: it opens, speaks API 12, makes a VM and a vCPU, and the CPU
    has hardware virtualization (``vmx``/``svm``; without it a nested ``/dev/kvm`` can pass those
    ioctls and then hang the guest, as on the machine this was written on)."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE):
        return False
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION, 0) != 12:
            return False
        vm = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        try:
            os.close(fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0))
        finally:
            os.close(vm)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def pick_accel(wanted: str | None = None) -> Accel:
    """``kvm``/``tcg`` when asked (or ``KILN_QEMU_ACCEL``), else KVM if it works, else TCG."""
    wanted = wanted or os.environ.get("KILN_QEMU_ACCEL") or "auto"
    if wanted == "auto":
        return Accel.KVM if kvm_usable() else Accel.TCG
    try:
        return Accel(wanted)
    except ValueError:
        raise InstanceError(f"unknown accelerator {wanted!r}", hint="use kvm, tcg or auto") from None


# -- the plan -----------------------------------------------------------------------------------


def guest_ports(config: VMConfig) -> tuple[int, ...]:
    """The guest's tcp ports (``"8080/tcp"``), then the health check's port if not among them."""
    out: list[int] = []
    for p in config.ports:
        head, _, proto = p.partition("/")
        if head.isdigit() and (proto or "tcp") == "tcp" and 0 < int(head) < 65536 and int(head) not in out:
            out.append(int(head))
    check = config.health.check if config.health is not None else None
    port = getattr(check, "port", None)
    if isinstance(port, int) and port not in out:
        out.append(port)
    return tuple(out)


def boot_plan(
    directory: Path,
    config: VMConfig,
    *,
    name: str,
    forwards: Sequence[Forward],
    serial: Path | None,
    machine: Machine = Machine.MICROVM,
    accel: Accel = Accel.TCG,
    extra_cmdline: Sequence[str] = (),
    env_file: Path | None = None,
) -> BootPlan:
    directory = Path(directory)
    khz = host_tsc_khz()
    host_args = (*([f"tsc_early_khz={khz}"] if khz else []), *extra_cmdline)
    return BootPlan(
        name=name,
        kernel=directory / config.part("kernel").file,
        initrd=directory / config.part("initrd").file,
        drives=tuple(directory / p.file for p in config.drives),
        cmdline=config.boot_cmdline(host_args, env=env_file is not None),
        memory_mib=config.memory_mib,
        cpus=config.cpus,
        forwards=tuple(forwards),
        serial=serial,
        machine=machine,
        accel=accel,
        run_as=UNPRIVILEGED if os.geteuid() == 0 else None,
        env_file=env_file,
    )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV_BYTES = 64 << 10


def env_script(env: Mapping[str, str]) -> bytes:
    """The guest init's view of a run-time environment: one ``set -- 'K=V' ...`` line, each
    assignment quoted for the shell, that the init sources and hands to ``env`` after the image's
    own environment (so these win). Names must be shell names; values may hold anything but NUL."""
    words = []
    for name, value in sorted(env.items()):
        if not _ENV_NAME.match(name):
            raise InstanceError(f"environment variable name {name!r} is not valid in a VM guest")
        if "\x00" in value:
            raise InstanceError(f"environment variable {name}: a NUL byte cannot be passed")
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InstanceError(
                f"environment variable {name}: the value is not valid UTF-8 ({exc.reason} at {exc.start})"
            ) from None
        words.append(shlex.quote(f"{name}={value}"))
    data = ("set -- " + " ".join(words) + "\n").encode()
    if len(data) > MAX_ENV_BYTES:
        raise InstanceError(f"the environment is {len(data)} bytes; a VM takes at most {MAX_ENV_BYTES}")
    return data


def _write_private(path: Path, data: bytes) -> None:
    """``data`` in a new file only its owner can read (``O_EXCL``, mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def plan_on_fds(plan: BootPlan, config: VMConfig, fds: Mapping[PartName, int]) -> BootPlan:
    """``plan`` booting the sealed copies (:func:`agent.vmimage.sealed_parts`) that qemu inherits,
    named ``/proc/self/fd/N`` (qemu opens them read-only before it drops privileges)."""

    def fd(name: PartName) -> Path:
        return Path(f"/proc/self/fd/{fds[name]}")

    return dataclasses.replace(
        plan,
        kernel=fd(PartName.KERNEL),
        initrd=fd(PartName.INITRD),
        drives=tuple(fd(p.name) for p in config.drives),
    )


def _opt(value: str | Path) -> str:
    """A value inside a qemu ``-opt a=b,c=d`` list: commas are doubled."""
    return str(value).replace(",", ",,")


def qemu_argv(plan: BootPlan, *, qemu: str = QEMU, pidfile: Path | None = None) -> list[str]:
    """The qemu command line of ``plan`` (``pidfile``: run detached, ``-daemonize``)."""
    sfx = plan.machine.virtio_suffix
    argv = [
        qemu,
        "-name",
        f"guest={_opt(plan.name)}",
        "-M",
        str(plan.machine),
        "-accel",
        str(plan.accel),
        "-cpu",
        "host" if plan.accel is Accel.KVM else "max",
        "-m",
        f"{plan.memory_mib}M",
        "-smp",
        str(plan.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(plan.kernel),
        "-initrd",
        str(plan.initrd),
        "-append",
        plan.cmdline,
        "-device",
        f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-sandbox",
        "on,obsolete=deny,resourcecontrol=deny",
    ]
    if plan.run_as is not None:
        argv += ["-runas", plan.run_as]
    if plan.env_file is not None:
        argv += ["-fw_cfg", f"name=opt/kiln/env,file={_opt(plan.env_file)}"]
    for i, drive in enumerate(plan.drives):
        argv += [
            "-drive",
            f"id=d{i},file={_opt(drive)},format=raw,if=none,readonly=on",
            "-device",
            f"virtio-blk-{sfx},drive=d{i}",
        ]
    net = "user,id=n0,restrict=on"
    for f in plan.forwards:
        net += f",hostfwd=tcp:{f.host}:{f.host_port}-:{f.guest_port}"
    argv += ["-netdev", net, "-device", f"virtio-net-{sfx},netdev=n0"]
    if plan.serial is None:
        argv += ["-chardev", "stdio,id=s0,signal=off", "-serial", "chardev:s0"]
    else:
        argv += ["-chardev", f"file,id=s0,path={_opt(plan.serial)},append=on", "-serial", "chardev:s0"]
    if pidfile is not None:
        argv += ["-daemonize", "-pidfile", str(pidfile)]
    return argv


def guest_exit(returncode: int, serial_tail: str) -> GuestExit:
    """How a guest ended, from qemu's exit code and the end of its serial console (module doc).

    ``isa-debug-exit`` turns the guest's N into ``2N+1``; 1 is also qemu's own error code, so a
    1 counts as the guest's 0 only with the ``kiln-exit: 0`` line on the console.
    """
    panic = _PANIC.search(serial_tail)
    lines = [int(n) for n in _EXIT_LINE.findall(serial_tail) if int(n) <= 255]
    if returncode >= 3 and returncode % 2 == 1:
        status = (returncode - 1) // 2
        return GuestExit(status=status, detail=f"the guest exited with {status}")
    if returncode in (0, 1) and lines and panic is None and (returncode == 0 or lines[-1] == 0):
        return GuestExit(status=lines[-1], detail=f"the guest exited with {lines[-1]}")
    if panic is not None:
        return GuestExit(status=None, detail=f"the guest kernel panicked: {panic.group(1).strip()}")
    if returncode == 0:
        return GuestExit(status=None, detail="the guest rebooted without an exit status (crash or panic)")
    return GuestExit(status=None, detail=f"qemu failed (exit {returncode})")


# -- the runtime --------------------------------------------------------------------------------


def _pid_alive(pid: int, instance_id: str) -> bool:
    """``pid`` is a live (not zombie) qemu started for ``instance_id``."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return f"guest={instance_id}".encode() in cmd.split(b"\0")


class QemuRuntime:
    """:class:`agent.runtime.Runtime` over detached qemu processes (see the module docstring)."""

    name = "qemu"

    def __init__(
        self,
        state_dir: Path,
        *,
        qemu: str = QEMU,
        machine: Machine = Machine.MICROVM,
        accel: str | None = None,
        timeout: float = _START_TIMEOUT,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "qemu"
        self.logs = self.state_dir / "logs"
        self._qemu = qemu
        self.machine = machine
        self._accel = accel
        self._accel_picked: Accel | None = None
        self._timeout = timeout
        for d in (self.dir, self.logs):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def accel(self) -> Accel:
        if self._accel_picked is None:
            self._accel_picked = pick_accel(self._accel)
        return self._accel_picked

    def instance_dir(self, instance_id: str) -> Path:
        return self.dir / check_instance_id(instance_id)

    def log_path(self, instance_id: str) -> Path:
        return self.logs / f"{check_instance_id(instance_id)}.log"

    def knows(self, instance_id: str) -> bool:
        return self.instance_dir(instance_id).is_dir()

    def _record(self, instance_id: str) -> dict[str, Any] | None:
        path = self.instance_dir(instance_id) / "instance.json"
        try:  # the bounded reader: a damaged record (even one nested past the stack) is no record
            return read_json_object(path.read_bytes()[: (1 << 20) + 1], what=str(path), caps=_RECORD_CAPS)
        except (OSError, KilnError):
            return None

    def _pid(self, instance_id: str) -> int | None:
        try:
            text = (self.instance_dir(instance_id) / "qemu.pid").read_text().strip()
            pid = int(text)
        except (OSError, ValueError):
            return None
        return pid if pid > 1 and _pid_alive(pid, instance_id) else None

    # -- Runtime ------------------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        iid = spec.instance_id
        idir = self.instance_dir(iid)
        if idir.exists():
            raise InstanceError(f"instance {iid} already exists", hint="stop it first or use a new id")
        if spec.rootfs is None or not is_vm_config(spec.image_config):
            raise InstanceError(f"instance {iid}: the qemu runtime starts VM images only")
        config = vm_config_of(spec.image_config)
        # Checked as copied into sealed memory, before anything is created: qemu boots those bytes.
        fds = sealed_parts(Path(spec.rootfs), config)
        ports = guest_ports(config)
        owned = spec.netns is None
        try:
            idir.mkdir(mode=0o700)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        try:
            netns = create_netns(iid) if owned else str(spec.netns)
            env_file = None
            if spec.env:
                env_file = idir / "env"  # may hold secrets: 0600, and gone once qemu has it
                _write_private(env_file, env_script(spec.env))
            plan = boot_plan(
                Path(spec.rootfs),
                config,
                name=iid,
                forwards=[Forward(host="127.0.0.1", host_port=p, guest_port=p) for p in ports],
                serial=self.log_path(iid),
                machine=self.machine,
                accel=self.accel,
                env_file=env_file,
            )
            plan = plan_on_fds(plan, config, fds)
            pidfile = idir / "qemu.pid"
            argv = qemu_argv(plan, qemu=self._qemu, pidfile=pidfile)
            record = {
                "instance": iid,
                "service": spec.service,
                "image": str(spec.image_digest),
                "netns": netns,
                "netns_owned": owned,
                "ports": list(ports),
                "argv": argv,
                "started_at": time.time(),
            }
            tmp = idir / "instance.json.tmp"
            tmp.write_bytes(canonical_json(record))
            os.replace(tmp, idir / "instance.json")
            pid = self._launch(iid, netns, argv, pidfile, fds=tuple(fds.values()))
            if env_file is not None:
                # qemu read it into its fw_cfg at start-up, before -daemonize let _launch return
                # (and before -runas dropped the privilege to open it in this 0700 directory).
                env_file.unlink()
        except BaseException:
            self._cleanup(iid)
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        return InstanceHandle(instance_id=iid, runtime=self.name, pid=pid, netns_path=netns)

    def _launch(
        self, iid: str, netns: str, argv: list[str], pidfile: Path, *, fds: tuple[int, ...] = ()
    ) -> int:
        try:
            proc = subprocess.run(
                ["nsenter", f"--net={netns}", "--", *argv],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"qemu for {iid}: {exc}", hint="is qemu-system-x86 installed?") from exc
        if proc.returncode != 0:
            raise RuntimeFailure(
                f"qemu for {iid} failed to start (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}"
            )
        pid = self._pid(iid)
        if pid is None:
            raise RuntimeFailure(
                f"qemu for {iid} exited at once: {self._log_tail(iid)}", hint=f"see {self.log_path(iid)}"
            )
        return pid

    def _log_tail(self, iid: str) -> str:
        try:
            return self.log_path(iid).read_text(errors="replace")[-1500:].strip() or "no output"
        except OSError:
            return "no output"

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        iid = check_instance_id(instance_id)
        pid = self._pid(iid)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(iid, pid, grace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_gone(iid, pid, 10.0):
                    raise RuntimeFailure(f"qemu {pid} of {iid} does not die")
        self._cleanup(iid)

    def _wait_gone(self, iid: str, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while _pid_alive(pid, iid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _cleanup(self, iid: str) -> None:
        record = self._record(iid)
        owned = bool(record.get("netns_owned")) if record is not None else (NETNS_DIR / iid).exists()
        if owned:
            delete_netns(iid)
        shutil.rmtree(self.instance_dir(iid), ignore_errors=True)

    def state(self, instance_id: str) -> InstanceState:
        iid = check_instance_id(instance_id)
        if not self.knows(iid):
            return InstanceState(instance_id=iid, status=InstanceStatus.MISSING)
        record = self._record(iid) or {}
        started = record.get("started_at")
        when = dt.datetime.fromtimestamp(started, dt.UTC) if isinstance(started, int | float) else None
        pid = self._pid(iid)
        return InstanceState(
            instance_id=iid,
            status=InstanceStatus.RUNNING if pid is not None else InstanceStatus.STOPPED,
            pid=pid,
            started_at=when,
        )

    def list(self) -> tuple[str, ...]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return ()
        out = []
        for n in names:
            with contextlib.suppress(InstanceError):
                out.append(check_instance_id(n))
        return tuple(sorted(i for i in out if i.startswith(INSTANCE_PREFIX)))

    def bundle_digest(self, instance_id: str) -> str | None:
        """sha256 of the instance's ``instance.json`` as written (drift: its config changed)."""
        try:
            data = (self.instance_dir(instance_id) / "instance.json").read_bytes()
        except OSError:
            return None
        return f"sha256:{hashlib.sha256(data).hexdigest()}"

    def netns_path(self, instance_id: str) -> str:
        record = self._record(check_instance_id(instance_id))
        if record is None or not isinstance(record.get("netns"), str):
            raise InstanceError(
                f"instance {instance_id} is unknown to qemu", hint="was it started by this agent?"
            )
        return str(record["netns"])

    def exit_of(self, instance_id: str) -> GuestExit:
        """How a stopped instance's guest ended, from its serial log (for events and tests)."""
        return guest_exit(0, self._log_tail(instance_id))


class RoutedRuntime:
    """A container runtime and the qemu runtime as one :class:`Runtime` (module docstring)."""

    def __init__(self, containers: Runtime, vms: QemuRuntime) -> None:
        self.containers = containers
        self.vms = vms
        self.name = f"{containers.name}+{vms.name}"

    def _for(self, instance_id: str) -> Runtime:
        return self.vms if self.vms.knows(instance_id) else self.containers

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        if is_vm_config(spec.image_config):
            return self.vms.start(spec)
        return self.containers.start(spec)

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        self._for(instance_id).stop(instance_id, grace)

    def state(self, instance_id: str) -> InstanceState:
        return self._for(instance_id).state(instance_id)

    def list(self) -> tuple[str, ...]:
        return tuple(sorted({*self.containers.list(), *self.vms.list()}))

    def netns_path(self, instance_id: str) -> str:
        return self._for(instance_id).netns_path(instance_id)

    def bundle_digest(self, instance_id: str) -> str | None:
        rt = self._for(instance_id)
        fn = getattr(rt, "bundle_digest", None)
        return fn(instance_id) if callable(fn) else None

    def close(self) -> None:
        fn = getattr(self.containers, "close", None)
        if callable(fn):
            fn()
