"""The instance sandbox, seen from inside a running instance on real runc and on a private dockerd.

A small image (busybox-static and a static C probe, tests/data/sandbox/probe.c) runs with a
release's ``resources``; from inside, the tests read /proc/self/status (seccomp in filter mode),
the instance's own cgroup files (memory, pids and CPU caps), try system calls the seccomp
allowlist refuses, allocate past the memory cap and fork past the pids cap (both bounded). The
same probe run on the host, unconfined, is the control: every refusal seen inside is the sandbox's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.bundle import USERNS_SIZE, userns_base
from agent.docker_runtime import DockerRuntime
from agent.errors import InstanceError
from agent.netns import list_netns
from agent.runc import RuncRuntime
from agent.runtime import InstanceSpec, InstanceStatus, ResourceLimits, new_instance_id
from agent.store import ContentStore, LayoutSource, PulledImage
from agent.unpack import UnpackedRoot, root_fingerprint, unpack_image
from manifests.release import Resources
from tests.agent.imagekit import M, http_in_netns, tar_bytes, write_image
from tests.kit.services import PrivateDockerd, free_port
from tests.support import require_root, require_tool

PROBE_C = Path(__file__).resolve().parents[1] / "data" / "sandbox" / "probe.c"
APPLETS = ("sh", "cat", "sleep", "grep", "id", "ls", "touch", "httpd")
UID = 1000
MEMORY = 32 << 20
PIDS = 24
RESOURCES = Resources(memory=MEMORY, cpu_millis=500, pids=PIDS)


@dataclass(frozen=True)
class ProbeImage:
    state: Path
    store: ContentStore
    image: PulledImage
    root: UnpackedRoot
    probe: Path  # the probe binary on the host (the unconfined control)


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> ProbeImage:
    require_tool("gcc", "gcc")
    busybox = Path(require_tool("busybox", "busybox-static")).resolve()
    base = tmp_path_factory.mktemp("sandbox")
    probe = base / "probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(probe), str(PROBE_C)], check=True, timeout=300)
    members = [M(d, "dir") for d in ("bin", "dev", "proc", "sys", "data", "etc")]
    members.append(M("tmp", "dir", mode=0o1777))  # runc gives a tmpfs the mode of its mountpoint
    members += [
        M("bin/busybox", data=busybox.read_bytes(), mode=0o755),
        M("bin/probe", data=probe.read_bytes(), mode=0o755),
        M("etc/passwd", data=f"app:x:{UID}:{UID}::/:/bin/sh\n".encode()),
    ]
    members += [M(f"bin/{name}", "symlink", target="busybox") for name in APPLETS]
    built = write_image(
        base / "layout",
        [tar_bytes(members)],
        user=f"{UID}:{UID}",
        entrypoint=("/bin/sleep", "3600"),
        labels={"dev.kiln.writable": '["/tmp"]', "dev.kiln.volumes": '["/data"]'},
    )
    state = base / "state"
    store = ContentStore(state)
    image = store.pull_image(LayoutSource.open(built.layout.root), built.digest)
    root = unpack_image(store, image, state / "roots")
    return ProbeImage(state=state, store=store, image=image, root=root, probe=probe)


def spec_for(img: ProbeImage, *, user_namespace: bool = False) -> InstanceSpec:
    return InstanceSpec(
        instance_id=new_instance_id("sbx"),
        service="sbx",
        image_digest=img.image.manifest_digest,
        image_config=img.image.config,
        rootfs=img.root.path,
        limits=ResourceLimits().with_release(RESOURCES),
        user_namespace=user_namespace,
    )


def words(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split())


def test_the_control_probe_is_unconfined_on_the_host(probe_image: ProbeImage) -> None:
    """Without the sandbox every call the sandbox refuses works (as an unprivileged user too)."""
    require_root("setpriv changes to an unprivileged user")
    require_tool("setpriv", "util-linux")
    proc = subprocess.run(
        ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", str(probe_image.probe), "syscalls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = words(proc.stdout)
    assert seen["keyctl"] == "ok"
    restricted = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if not (restricted.exists() and restricted.read_text().strip() == "1"):
        assert seen["unshare_user"] == "ok"
    assert seen["personality_norandom"] == "ok"
    assert seen["clone3"] == "EINVAL"
    assert seen["fork"] == "ok"


# -- what every runtime must show from inside ----------------------------------------------------------


def read_caps(run: Exec) -> tuple[int, str, int, int]:
    """(memory limit, pids.max, CPU quota, period) from the instance's own /sys/fs/cgroup.

    This host has a hybrid hierarchy (controllers on cgroup v1: one directory per controller); on a
    unified (v2) host the same caps are memory.max, pids.max and cpu.max in one directory.
    """
    unified = run("ls", "/sys/fs/cgroup/cgroup.controllers", check=False).returncode == 0
    if unified:
        quota, period = run("cat", "/sys/fs/cgroup/cpu.max").stdout.split()
        return (
            int(run("cat", "/sys/fs/cgroup/memory.max").stdout),
            run("cat", "/sys/fs/cgroup/pids.max").stdout.strip(),
            int(quota),
            int(period),
        )
    return (
        int(run("cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout),
        run("cat", "/sys/fs/cgroup/pids/pids.max").stdout.strip(),
        int(run("cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").stdout),
        int(run("cat", "/sys/fs/cgroup/cpu/cpu.cfs_period_us").stdout),
    )


def check_inside(run: Exec) -> None:
    status = run("cat", "/proc/self/status").stdout
    assert "\nSeccomp:\t2\n" in status  # 2 = SECCOMP_MODE_FILTER
    assert "\nNoNewPrivs:\t1\n" in status
    assert "\nCapEff:\t0000000000000000\n" in status
    # Its own cgroup namespace: the instance's cgroup is the root of what it sees.
    cgroups = run("cat", "/proc/self/cgroup").stdout.splitlines()
    assert cgroups, "no cgroups listed"
    assert all(line.endswith(":/") for line in cgroups), cgroups

    memory, pids, quota, period = read_caps(run)
    assert memory == MEMORY
    assert pids == str(PIDS)
    assert quota * 2 == period  # cpus: 0.5

    seen = words(run("/bin/probe", "syscalls").stdout)
    assert seen == {
        "keyctl": "EPERM",  # not in the allowlist
        "unshare_user": "EPERM",  # not in the allowlist (it needs a capability kiln never grants)
        "personality_query": "ok",  # an allowed argument
        "personality_norandom": "EPERM",  # a refused argument
        "clone3": "ENOSYS",  # so the C library falls back to the filtered clone
        "fork": "ok",  # clone without namespace flags
    }

    # A memory hog is killed by the cgroup's OOM killer (SIGKILL: 137), well before its goal.
    hog = run("/bin/probe", "hog", str(4 * MEMORY >> 20), check=False)
    assert hog.returncode == 137, (hog.returncode, hog.stdout, hog.stderr)
    assert "survived" not in hog.stdout

    # A fork bomb (bounded at 200) stops at the pids cap: fork fails with EAGAIN.
    forks = words(run("/bin/probe", "forks", "200").stdout)
    assert forks["failed"] == "EAGAIN"
    assert 1 <= int(forks["forked"]) < PIDS
    # ... and the instance is still there afterwards, with its children gone.
    either = "cat /sys/fs/cgroup/pids/pids.current || cat /sys/fs/cgroup/pids.current"
    current = run("sh", "-c", either).stdout
    assert int(current) <= 3  # the entrypoint, this sh and its cat


class Exec:
    """Run a command inside an instance (runc exec / docker exec) and return the finished process."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stdout} {proc.stderr}")
        return proc


# -- runc ------------------------------------------------------------------------------------------------


@pytest.fixture
def runc(probe_image: ProbeImage) -> Iterator[RuncRuntime]:
    require_root("runc runs containers as root here")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    runtime = RuncRuntime(probe_image.state)
    before = set(runtime.list())
    yield runtime
    for iid in set(runtime.list()) - before:
        runtime.stop(iid, grace=1)


@pytest.mark.integration
def test_runc_instance_is_confined_from_inside(runc: RuncRuntime, probe_image: ProbeImage) -> None:
    spec = spec_for(probe_image)
    runc.start(spec)
    try:
        run = Exec(["runc", "--root", str(runc.root), "exec", spec.instance_id])
        check_inside(run)
        assert runc.state(spec.instance_id).status is InstanceStatus.RUNNING
        config = json.loads((runc.bundle_dir(spec.instance_id) / "config.json").read_bytes())
        assert {"type": "cgroup"} in config["linux"]["namespaces"]
        assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    finally:
        runc.stop(spec.instance_id, grace=1)
    assert root_fingerprint(probe_image.root.path) == probe_image.root.fingerprint


@pytest.mark.integration
def test_runc_user_namespace_maps_the_image_user_to_the_service_slot(
    runc: RuncRuntime, probe_image: ProbeImage
) -> None:
    port = free_port()
    config = json.loads(json.dumps(probe_image.image.config))
    config["config"]["Entrypoint"] = ["/bin/httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/etc"]
    spec = replace(spec_for(probe_image, user_namespace=True), image_config=config)
    base = userns_base("sbx")
    handle = runc.start(spec)
    try:
        run = Exec(["runc", "--root", str(runc.root), "exec", spec.instance_id])
        uid_map = [line.split() for line in run("cat", "/proc/self/uid_map").stdout.splitlines()]
        assert uid_map == [["0", "0", "1"], ["1", str(base + 1), str(USERNS_SIZE - 1)]]
        assert run("id", "-u").stdout.strip() == str(UID)
        # Seen from the host, the service runs as an unprivileged id of its slot.
        host_status = Path(f"/proc/{handle.pid}/status").read_text()
        uid_line = next(line for line in host_status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(base + UID)] * 4
        # The read-only root still serves (world-readable files), tmpfs and volume are writable.
        assert run("cat", "/etc/passwd").stdout.startswith("app:x:")
        run("touch", "/tmp/x", "/data/x")
        volume = probe_image.state / "volumes" / "sbx" / "data" / "x"
        assert (volume.stat().st_uid, volume.stat().st_gid) == (base + UID, base + UID)
        assert "Read-only file system" in run("touch", "/bin/x", check=False).stderr
        assert "\nSeccomp:\t2\n" in run("cat", "/proc/self/status").stdout
        # runc made the network namespace (the user namespace owns it); kiln named it after the id,
        # so the agent reaches the service the usual way.
        assert handle.netns_path == f"/run/netns/{spec.instance_id}" == runc.netns_path(spec.instance_id)
        reply = http_in_netns(handle.netns_path, port, "/passwd")
        assert reply.split(b"\r\n", 1)[0].split()[1] == b"200", reply[:200]
        assert reply.endswith(f"app:x:{UID}:{UID}::/:/bin/sh\n".encode())
    finally:
        runc.stop(spec.instance_id, grace=1)
    assert spec.instance_id not in list_netns()
    assert root_fingerprint(probe_image.root.path) == probe_image.root.fingerprint


# -- docker ----------------------------------------------------------------------------------------------


@pytest.fixture
def docker_rt(dockerd: PrivateDockerd, probe_image: ProbeImage) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(probe_image.store, probe_image.state, base_url=dockerd.host)
    yield runtime
    for iid in runtime.list():
        runtime.stop(iid, grace=1)
    runtime.close()


@pytest.mark.integration
def test_docker_instance_is_confined_from_inside(
    docker_rt: DockerRuntime, dockerd: PrivateDockerd, probe_image: ProbeImage
) -> None:
    spec = spec_for(probe_image)
    docker_rt.start(spec)
    try:
        run = Exec(["docker", "-H", dockerd.host, "exec", spec.instance_id])
        check_inside(run)
        info = json.loads(dockerd.cli("inspect", spec.instance_id).stdout)[0]["HostConfig"]
        assert info["Memory"] == MEMORY
        assert info["NanoCpus"] == 500_000_000
        assert info["PidsLimit"] == PIDS
        assert info["CgroupnsMode"] == "private"
        seccomp = [o for o in info["SecurityOpt"] if o.startswith("seccomp=")]
        assert len(seccomp) == 1
        assert "unconfined" not in seccomp[0]
    finally:
        docker_rt.stop(spec.instance_id, grace=1)


@pytest.mark.integration
def test_docker_refuses_a_user_namespace_rather_than_ignoring_it(
    docker_rt: DockerRuntime, probe_image: ProbeImage
) -> None:
    spec = spec_for(probe_image, user_namespace=True)
    with pytest.raises(InstanceError, match="the docker runtime cannot give one instance a user namespace"):
        docker_rt.start(spec)
    assert docker_rt.list() == ()
