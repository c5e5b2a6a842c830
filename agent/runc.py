"""The runc runtime: instances as OCI bundles over the unpacked read-only root.

State (all under the agent's state dir)::

    STATE/runc/                 runc --root: only kiln's containers live here
    STATE/bundles/<id>/         config.json (root.path -> ROOTS/<manifest-hex>, read-only), runc.log
    STATE/logs/<id>.log         the container's stdout and stderr (append)
    STATE/volumes/<service>/    persistent volumes (agent.bundle.prepare_volumes)

``start`` writes the bundle and runs ``runc run --detach`` with the container's stdio going to the
log file (a detached container needs files, not pipes nobody reads). Unless the spec names a
network namespace, the instance gets a fresh named one (``/run/netns/<id>``, loopback up) that is
deleted with it. ``stop`` is ``runc kill TERM``, a bounded wait, ``KILL``, then ``runc delete
--force`` and the namespace and bundle are removed; every step tolerates a half-gone instance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.bundle import ImagePolicy, host_ids, prepare_volumes, runtime_config, write_bundle
from agent.errors import InstanceError, RuntimeFailure
from agent.netns import NETNS_DIR, create_netns, delete_netns, netns_path
from agent.runtime import (
    INSTANCE_PREFIX,
    InstanceHandle,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    check_instance_id,
)
from manifests.bounded import JsonCaps, read_json_object
from manifests.errors import KilnError

__all__ = ["RuncRuntime", "parse_runc_time"]

_TIMEOUT = 60.0
_MAX_CONFIG = 4 << 20  # a bundle's config.json kiln wrote: a few KiB
_CONFIG_CAPS = JsonCaps(max_bytes=_MAX_CONFIG)
_OWNED = "dev.kiln.netns-owned"


def parse_runc_time(text: str) -> dt.datetime | None:
    """runc's RFC 3339 timestamps have nanoseconds; Python keeps microseconds."""
    if not isinstance(text, str) or not text:
        return None
    main, _, rest = text.partition(".")
    tz = ""
    if rest:
        digits = rest.rstrip("Z")
        for sep in ("+", "-"):
            if sep in digits:
                digits, _, off = digits.partition(sep)
                tz = sep + off
        frac = "." + digits[:6].ljust(6, "0")
        if rest.endswith("Z"):
            tz = "+00:00"
    else:
        frac = ""
        if main.endswith("Z"):
            main, tz = main[:-1], "+00:00"
    try:
        return dt.datetime.fromisoformat(main + frac + tz)
    except ValueError:
        return None


def _attach_netns(name: str, pid: int) -> None:
    """Name the network namespace of ``pid`` ``/run/netns/<name>`` (``ip netns attach``)."""
    argv = ["ip", "netns", "attach", name, str(pid)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"ip netns attach {name}: {exc}", hint="is iproute2 installed?") from exc
    if proc.returncode != 0:
        raise RuntimeFailure(f"ip netns attach {name} failed: {proc.stderr.strip() or proc.returncode}")


class RuncRuntime:
    """:class:`agent.runtime.Runtime` over the ``runc`` command (run as root)."""

    name = "runc"

    def __init__(self, state_dir: Path, *, runc: str = "runc", timeout: float = _TIMEOUT) -> None:
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / "runc"
        self.bundles = self.state_dir / "bundles"
        self.logs = self.state_dir / "logs"
        self._runc = runc
        self._timeout = timeout
        for d in (self.root, self.bundles, self.logs):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- plumbing --------------------------------------------------------------------------

    def _cmd(self, *args: str, stdout: Any = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self._runc, "--root", str(self.root), *args]
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.STDOUT if stdout is not None else subprocess.PIPE,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"runc {' '.join(args[:2])}: {exc}", hint="is runc installed?") from exc
        if check and proc.returncode != 0:
            raise RuntimeFailure(f"runc {' '.join(args[:2])} failed: {(proc.stderr or '').strip()}")
        return proc

    def log_path(self, instance_id: str) -> Path:
        return self.logs / f"{check_instance_id(instance_id)}.log"

    def bundle_dir(self, instance_id: str) -> Path:
        return self.bundles / check_instance_id(instance_id)

    def _bundle_config(self, instance_id: str) -> dict[str, Any] | None:
        path = self.bundle_dir(instance_id) / "config.json"
        try:  # the bounded reader: a damaged config (even one nested past the stack) is no config
            return read_json_object(path.read_bytes()[: _MAX_CONFIG + 1], what=str(path), caps=_CONFIG_CAPS)
        except (OSError, KilnError):
            return None

    # -- Runtime ---------------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        iid = spec.instance_id
        # runc keeps a directory per container under its root: looking is one stat, not a `runc state`
        if (self.root / check_instance_id(iid)).exists() or self.bundle_dir(iid).exists():
            raise InstanceError(f"instance {iid} already exists", hint="stop it first or use a new id")
        policy = ImagePolicy.from_config(spec.image_config)
        owner = host_ids(spec, policy.uid, policy.gid)
        volumes = prepare_volumes(self.state_dir, spec.volume_owner, policy, owner=owner)
        owned = spec.netns is None
        # A user namespace needs a network namespace it owns (sysfs is mounted only for the owner,
        # and runc exec joins the user namespace first): runc creates that one, and kiln names it
        # /run/netns/<id> after the start, so it is reached and deleted like every other.
        by_runc = owned and spec.user_namespace
        bundle = self.bundle_dir(iid)
        try:
            netns = netns_path(iid) if by_runc else create_netns(iid) if owned else str(spec.netns)
            config = runtime_config(
                spec,
                volumes=volumes,
                netns_path=None if by_runc else netns,
                annotations={_OWNED: "true" if owned else "false"},
            )
            write_bundle(bundle, config)
            pid = self._run_detached(iid, bundle)
            if by_runc:
                _attach_netns(iid, pid)
        except BaseException:
            self._cleanup(iid, owned_hint=owned)
            raise
        return InstanceHandle(instance_id=iid, runtime=self.name, pid=pid, netns_path=netns)

    def _run_detached(self, iid: str, bundle: Path) -> int:
        pid_file = bundle / "pid"
        with open(self.log_path(iid), "ab") as log:
            proc = self._cmd(
                "--log",
                str(bundle / "runc.log"),
                "run",
                "--detach",
                "--pid-file",
                str(pid_file),
                "--bundle",
                str(bundle),
                iid,
                stdout=log,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeFailure(
                f"runc run {iid} failed (exit {proc.returncode}): {self._log_tail(iid)}",
                hint=f"see {self.log_path(iid)}",
            )
        return int(pid_file.read_text().strip())

    def _log_tail(self, iid: str) -> str:
        parts: list[str] = []
        for path in (self.bundle_dir(iid) / "runc.log", self.log_path(iid)):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-1500:].strip())
        return " | ".join(p for p in parts if p) or "no output"

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        iid = check_instance_id(instance_id)
        st = self.state(iid)
        if st.status is InstanceStatus.RUNNING:
            self._cmd("kill", iid, "TERM", check=False)
            if not self._wait_gone(iid, grace):
                self._cmd("kill", "--all", iid, "KILL", check=False)
                self._wait_gone(iid, 10.0)
        if st.status is not InstanceStatus.MISSING:
            proc = self._cmd("delete", "--force", iid, check=False)
            if proc.returncode != 0 and self.state(iid).status is not InstanceStatus.MISSING:
                raise RuntimeFailure(f"runc delete {iid} failed: {(proc.stderr or '').strip()}")
        self._cleanup(iid, owned_hint=None)

    def _wait_gone(self, iid: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self.state(iid).status is not InstanceStatus.RUNNING:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _cleanup(self, iid: str, *, owned_hint: bool | None) -> None:
        """Remove what start made: the runc container, the namespace (if kiln made it), the bundle."""
        if self.state(iid).status is not InstanceStatus.MISSING:
            self._cmd("delete", "--force", iid, check=False)
        config = self._bundle_config(iid)
        owned = owned_hint
        if config is not None:
            owned = config.get("annotations", {}).get(_OWNED) == "true"
        if owned is None:
            owned = (NETNS_DIR / iid).exists()  # kiln names the namespaces it makes after the id
        if owned:
            delete_netns(iid)
        shutil.rmtree(self.bundle_dir(iid), ignore_errors=True)

    def state(self, instance_id: str) -> InstanceState:
        iid = check_instance_id(instance_id)
        proc = self._cmd("state", iid, check=False)
        if proc.returncode != 0:
            if "does not exist" in (proc.stderr or "") or "not exist" in (proc.stderr or ""):
                return InstanceState(instance_id=iid, status=InstanceStatus.MISSING)
            raise RuntimeFailure(f"runc state {iid} failed: {(proc.stderr or '').strip()}")
        try:
            doc = read_json_object(proc.stdout.encode("utf-8", "surrogateescape"), what=f"runc state {iid}")
        except KilnError as exc:
            raise RuntimeFailure(f"runc state {iid}: unreadable output ({exc.message})") from exc
        status, pid, created = doc.get("status"), doc.get("pid"), doc.get("created")
        return InstanceState(
            instance_id=iid,
            status=InstanceStatus.RUNNING if status in ("running", "paused") else InstanceStatus.STOPPED,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
            started_at=parse_runc_time(created if isinstance(created, str) else ""),
        )

    def list(self) -> tuple[str, ...]:
        """The containers under kiln's runc root, as `runc list` reads them without starting a
        process each reconcile: a directory per container with its ``state.json`` (a directory
        without one is a container being created or deleted, which `runc list` skips too)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise RuntimeFailure(f"cannot list runc's containers in {self.root}: {exc}") from exc
        return tuple(
            sorted(
                n for n in names if n.startswith(INSTANCE_PREFIX) and (self.root / n / "state.json").is_file()
            )
        )

    def bundle_digest(self, instance_id: str) -> str | None:
        """sha256 of the instance's ``config.json`` as written (drift detection); None if gone."""
        try:
            data = (self.bundle_dir(instance_id) / "config.json").read_bytes()
        except OSError:
            return None
        return f"sha256:{hashlib.sha256(data).hexdigest()}"

    def netns_path(self, instance_id: str) -> str:
        iid = check_instance_id(instance_id)
        config = self._bundle_config(iid)
        if config is not None:
            for ns in config.get("linux", {}).get("namespaces", []):
                if isinstance(ns, dict) and ns.get("type") == "network" and isinstance(ns.get("path"), str):
                    return str(ns["path"])
            if config.get("annotations", {}).get(_OWNED) == "true":
                return netns_path(iid)  # made by runc (a user namespace) and attached under its id
        raise InstanceError(f"instance {iid} is unknown to runc", hint="was it started by this agent?")
