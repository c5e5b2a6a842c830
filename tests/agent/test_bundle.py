"""Image run policy from dev.kiln.* labels, and the runc config.json made from it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.bundle import (
    MASKED_PATHS,
    READONLY_PATHS,
    USERNS_BASE,
    USERNS_SIZE,
    USERNS_SLOTS,
    ImagePolicy,
    host_ids,
    image_env,
    prepare_volumes,
    runtime_config,
    userns_base,
    volume_slug,
    write_bundle,
)
from agent.errors import BundleError, InstanceError
from agent.runtime import InstanceSpec, ResourceLimits, new_instance_id
from agent.seccomp import seccomp_profile
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.image import HealthCheck, HttpCheck
from manifests.release import Resources
from tests.agent.imagekit import image_config

DIGEST = Digest.of(b"image")
LABELS = {
    "dev.kiln.read-only": "true",
    "dev.kiln.user": "65532:65532",
    "dev.kiln.writable": '["/tmp","/var/cache/app"]',
    "dev.kiln.volumes": '["/var/lib/app"]',
    "dev.kiln.ports": '["8080/tcp"]',
    "dev.kiln.health": '{"type":"http","port":8080,"path":"/healthz"}',
}


def _config(**kw: Any) -> dict[str, Any]:
    kw.setdefault("labels", LABELS)
    return image_config([], entrypoint=("/usr/bin/python3", "/app/server.py"), **kw)


def _spec(config: dict[str, Any], **kw: Any) -> InstanceSpec:
    return InstanceSpec(
        instance_id=kw.pop("instance_id", "kiln-web-0123abcd"),
        service="web",
        image_digest=DIGEST,
        image_config=config,
        rootfs=Path("/state/roots/abc"),
        **kw,
    )


def test_policy_from_the_builder_labels() -> None:
    p = ImagePolicy.from_config(_config())
    assert (p.uid, p.gid) == (65532, 65532)
    assert p.read_only is True
    assert p.writable == ("/tmp", "/var/cache/app")
    assert p.volumes == ("/var/lib/app",)
    assert p.ports == ("8080/tcp",)
    assert p.health == HealthCheck(check=HttpCheck(port=8080, path="/healthz"))
    assert p.allow_setuid is False
    assert p.mountpoints() == ("/proc", "/dev", "/sys", "/tmp", "/var/cache/app", "/var/lib/app")


def test_policy_falls_back_to_config_user_and_then_root() -> None:
    assert ImagePolicy.from_config(_config(labels={}, user="1000")).uid == 1000
    assert (ImagePolicy.from_config(_config(labels={}, user=None)).uid) == 0


@pytest.mark.parametrize(
    ("labels", "user", "message"),
    [
        ({"dev.kiln.writable": "[/tmp"}, "1:1", "image config: label dev.kiln.writable: not valid JSON"),
        (
            {"dev.kiln.writable": '"/tmp"'},
            "1:1",
            "image config: label dev.kiln.writable: expected a JSON list of paths",
        ),
        (
            {"dev.kiln.volumes": '["data"]'},
            "1:1",
            "image config: label dev.kiln.volumes: 'data' is not a normalized absolute path below /",
        ),
        (
            {"dev.kiln.volumes": '["/a/../etc"]'},
            "1:1",
            "image config: label dev.kiln.volumes: '/a/../etc' is not a normalized absolute path below /",
        ),
        (
            {"dev.kiln.writable": '["/"]'},
            "1:1",
            "image config: label dev.kiln.writable: '/' is not a normalized absolute path below /",
        ),
        (
            {"dev.kiln.writable": '["/proc/sys"]'},
            "1:1",
            "image config: label dev.kiln.writable: '/proc/sys' is inside a system mount",
        ),
        (
            {"dev.kiln.writable": '["/tmp","/tmp"]'},
            "1:1",
            "image config: label dev.kiln.writable: '/tmp' is listed twice",
        ),
        (
            {"dev.kiln.writable": '["/data"]', "dev.kiln.volumes": '["/data"]'},
            "1:1",
            "image config: '/data' is both writable (tmpfs) and a volume",
        ),
        ({"dev.kiln.user": "app"}, None, "image config: label dev.kiln.user 'app' is not a numeric uid:gid"),
        ({}, "app:app", "image config: config.User 'app:app' is not a numeric uid:gid"),
        (
            {"dev.kiln.user": "99999999999:1"},
            None,
            "image config: label dev.kiln.user '99999999999:1' is out of range",
        ),
        (
            {"dev.kiln.allow-setuid": "yes"},
            "1:1",
            "image config: label dev.kiln.allow-setuid: expected 'true' or 'false', got 'yes'",
        ),
        (
            {"dev.kiln.health": "[]"},
            "1:1",
            "image config: label dev.kiln.health: must be a JSON object, not list",
        ),
        (
            {"dev.kiln.ports": "[8080]"},
            "1:1",
            "image config: label dev.kiln.ports: expected a JSON list of strings",
        ),
    ],
    ids=[
        "writable-not-json",
        "writable-not-list",
        "relative-volume",
        "dotdot-volume",
        "root-writable",
        "inside-proc",
        "duplicate",
        "writable-and-volume",
        "named-user-label",
        "named-config-user",
        "uid-out-of-range",
        "allow-setuid-not-bool",
        "health-not-object",
        "ports-not-strings",
    ],
)
def test_bad_policy_labels_are_refused(labels: dict[str, str], user: str | None, message: str) -> None:
    with pytest.raises(DocumentError) as err:
        ImagePolicy.from_config(_config(labels=labels, user=user))
    assert err.value.message == message


def test_runtime_config_is_locked_down() -> None:
    spec = _spec(
        _config(),
        env={"PORT": "9000", "EXTRA": "1"},
        limits=ResourceLimits(pids=64, memory_bytes=1 << 28, cpu_millis=1500),
    )
    volumes = {"/var/lib/app": Path("/state/volumes/web/var%2Flib%2Fapp")}
    cfg = runtime_config(spec, volumes=volumes, netns_path="/run/netns/kiln-web-0123abcd")
    proc = cfg["process"]
    assert proc["user"] == {"uid": 65532, "gid": 65532, "additionalGids": []}
    assert proc["noNewPrivileges"] is True
    assert proc["terminal"] is False
    assert proc["capabilities"] == {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert proc["args"] == ["/usr/bin/python3", "/app/server.py"]
    assert proc["env"] == ["PATH=/usr/bin:/bin", "PORT=9000", "EXTRA=1"]
    assert cfg["root"] == {"path": "/state/roots/abc", "readonly": True}
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert list(mounts) == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/sys",
        "/tmp",
        "/var/cache/app",
        "/var/lib/app",
        "/sys/fs/cgroup",
    ]
    assert mounts["/tmp"]["options"] == ["nosuid", "nodev", f"size={64 << 20}", "mode=1777"]
    assert mounts["/var/cache/app"]["options"] == [
        "nosuid",
        "nodev",
        f"size={64 << 20}",
        "mode=0755",
        "uid=65532",
        "gid=65532",
    ]
    assert mounts["/var/lib/app"]["type"] == "bind"
    assert mounts["/var/lib/app"]["source"] == "/state/volumes/web/var%2Flib%2Fapp"
    assert "nosuid" in mounts["/var/lib/app"]["options"]
    assert "ro" in mounts["/sys"]["options"]
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    assert "ro" in mounts["/sys/fs/cgroup"]["options"]
    linux = cfg["linux"]
    assert linux["namespaces"] == [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "cgroup"},
        {"type": "network", "path": "/run/netns/kiln-web-0123abcd"},
    ]
    assert "uidMappings" not in linux
    assert linux["cgroupsPath"] == "/kiln/kiln-web-0123abcd"
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert linux["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "pids": {"limit": 64},
        "memory": {"limit": 1 << 28, "swap": 1 << 28},
        "cpu": {"quota": 150_000, "period": 100_000},
    }
    assert linux["seccomp"] == seccomp_profile()
    assert cfg["annotations"]["dev.kiln.image"] == str(DIGEST)


def test_user_namespace_maps_the_image_ids_to_the_service_slot() -> None:
    spec = _spec(_config(), user_namespace=True)
    cfg = runtime_config(spec, volumes={"/var/lib/app": Path("/v")}, netns_path=None)
    linux = cfg["linux"]
    base = userns_base("web")
    assert base == userns_base("web")  # stable: volumes keep their owner across releases
    assert USERNS_BASE <= base <= USERNS_BASE + (USERNS_SLOTS - 1) * USERNS_SIZE
    assert (base - USERNS_BASE) % USERNS_SIZE == 0
    assert base + USERNS_SIZE <= 0x70000000  # inside systemd's range for container ids
    assert userns_base("api") != base
    mapping = [
        {"containerID": 0, "hostID": 0, "size": 1},
        {"containerID": 1, "hostID": base + 1, "size": 65535},
    ]
    assert linux["uidMappings"] == mapping
    assert linux["gidMappings"] == mapping
    assert {"type": "user"} in linux["namespaces"]
    assert {"type": "network"} in linux["namespaces"]  # runc makes one the user namespace owns
    assert cfg["process"]["user"]["uid"] == 65532  # the id inside; the host sees base + 65532
    assert host_ids(spec, 65532, 65532) == (base + 65532, base + 65532)
    assert host_ids(_spec(_config()), 65532, 1) == (65532, 1)


@pytest.mark.parametrize(
    ("user", "allow_root", "message"),
    [
        (None, True, "image runs as 0:0; a user namespace maps only non-root ids"),
        ("1000:0", False, "image runs as 1000:0; a user namespace maps only non-root ids"),
    ],
)
def test_user_namespace_refuses_root_images(user: str | None, allow_root: bool, message: str) -> None:
    spec = _spec(_config(labels={}, user=user), user_namespace=True, allow_root=allow_root)
    with pytest.raises(VerificationError) as err:
        runtime_config(spec, volumes={}, netns_path=None)
    assert (err.value.reason, err.value.message) == ("policy", message)


def test_user_namespace_refuses_ids_beyond_its_range() -> None:
    spec = _spec(_config(labels={}, user="70000:70000"), user_namespace=True)
    with pytest.raises(BundleError, match="outside the user namespace's 65536 ids"):
        host_ids(spec, 70000, 70000)


def test_release_resources_override_the_default_limits() -> None:
    base = ResourceLimits()
    assert base.with_release(None) is base
    got = base.with_release(Resources(memory=256 << 20, cpu_millis=500))
    assert got == ResourceLimits(pids=base.pids, memory_bytes=256 << 20, cpu_millis=500)
    assert base.with_release(Resources(pids=64)).pids == 64


def test_uid_zero_is_a_policy_refusal_unless_allowed() -> None:
    root_cfg = _config(labels={}, user=None)
    with pytest.raises(VerificationError) as err:
        runtime_config(_spec(root_cfg), volumes={}, netns_path=None)
    assert err.value.reason == "policy"
    assert err.value.message == "image runs as uid 0 (root); refused"
    cfg = runtime_config(_spec(root_cfg, allow_root=True), volumes={}, netns_path=None)
    assert cfg["process"]["user"]["uid"] == 0
    assert cfg["linux"]["namespaces"][-1] == {"type": "network"}  # a fresh, empty namespace


@pytest.mark.parametrize(
    ("config_kw", "env", "error", "message"),
    [
        ({"entrypoint": ()}, {}, BundleError, "image config has neither Entrypoint nor Cmd"),
        (
            {"env": ("PATH=/bin", 3)},
            {},
            DocumentError,
            "image config: config.Env must be a list of NAME=value strings",
        ),
        ({}, {"A=B": "1"}, BundleError, "invalid environment variable name 'A=B'"),
        (
            {"extra": {"WorkingDir": "app"}},
            {},
            DocumentError,
            "image config: config.WorkingDir must be an absolute path",
        ),
    ],
    ids=["nothing-to-run", "bad-env", "bad-override", "relative-workdir"],
)
def test_bad_process_settings(
    config_kw: dict[str, Any], env: dict[str, str], error: type[Exception], message: str
) -> None:
    config = image_config([], labels={"dev.kiln.user": "1:1"}, **config_kw)
    with pytest.raises(error) as err:
        runtime_config(_spec(config, env=env), volumes={}, netns_path=None)
    assert err.value.message == message  # type: ignore[attr-defined]


def test_a_volume_without_a_host_directory_is_refused() -> None:
    with pytest.raises(BundleError, match="no host directory for volume /var/lib/app"):
        runtime_config(_spec(_config()), volumes={}, netns_path=None)


def test_env_overrides_keep_order() -> None:
    cfg = _config(env=("A=1", "B=2", "C=3"))
    assert image_env(cfg, {"B": "x", "D": "4"}) == ["A=1", "B=x", "C=3", "D=4"]


def test_volume_slugs_are_unambiguous() -> None:
    assert volume_slug("/var/lib/app") == "var%2Flib%2Fapp"
    assert volume_slug("/a-b") != volume_slug("/a/b")
    assert volume_slug("/a_b") != volume_slug("/a/b")


def test_prepare_volumes_makes_private_directories_for_the_image_user(tmp_path: Path) -> None:
    policy = ImagePolicy.from_config(_config())
    vols = prepare_volumes(tmp_path, "web", policy)
    host = vols["/var/lib/app"]
    assert host == tmp_path / "volumes" / "web" / "var%2Flib%2Fapp"
    st_ = host.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o700
    if os.geteuid() == 0:
        assert (st_.st_uid, st_.st_gid) == (65532, 65532)
    (host / "data").write_bytes(b"kept")
    assert prepare_volumes(tmp_path, "web", policy) == vols  # reused, content kept
    assert (host / "data").read_bytes() == b"kept"


def test_prepare_volumes_refuses_a_symlinked_volume_directory(tmp_path: Path) -> None:
    policy = ImagePolicy.from_config(_config())
    base = tmp_path / "volumes" / "web"
    base.mkdir(parents=True)
    (base / "var%2Flib%2Fapp").symlink_to("/etc")
    with pytest.raises(BundleError, match="is a symlink"):
        prepare_volumes(tmp_path, "web", policy)


def test_write_bundle_is_private_and_canonical(tmp_path: Path) -> None:
    cfg = runtime_config(_spec(_config()), volumes={"/var/lib/app": tmp_path}, netns_path=None)
    path = write_bundle(tmp_path / "bundle", cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_bytes()) == cfg


@pytest.mark.parametrize(
    ("instance_id", "service", "message"),
    [
        ("web-0123abcd", "web", "invalid instance id 'web-0123abcd'"),
        ("kiln-web-XYZ", "web", "invalid instance id 'kiln-web-XYZ'"),
        ("kiln-../x-0123abcd", "web", "invalid instance id 'kiln-../x-0123abcd'"),
        ("kiln-api-0123abcd", "web", "instance id 'kiln-api-0123abcd' does not belong to service 'web'"),
        ("kiln-Web-0123abcd", "Web", "invalid instance id 'kiln-Web-0123abcd'"),
    ],
)
def test_instance_ids_are_checked(instance_id: str, service: str, message: str) -> None:
    with pytest.raises(InstanceError) as err:
        InstanceSpec(instance_id=instance_id, service=service, image_digest=DIGEST, image_config={})
    assert err.value.message == message


def test_new_instance_ids() -> None:
    a, b = new_instance_id("web"), new_instance_id("web")
    assert a != b
    assert a.startswith("kiln-web-")
    assert new_instance_id("web", "deadbeef") == "kiln-web-deadbeef"
    with pytest.raises(InstanceError, match="invalid service name 'Web'"):
        new_instance_id("Web")
