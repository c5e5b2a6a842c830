"""Other JSON files the agent reads back from its state directory, damaged: HAProxy's
``services.json`` and a VM root's ``ROOTS/<hex>.json`` record. Each is one typed error naming the
file and field: never a ``RecursionError`` traceback or an exception's text such as ``'fingerprint'``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.dataplane import DataPlaneError
from agent.dataplane.haproxy import HAProxyDataPlane
from agent.vmimage import place_vm
from manifests.digest import Digest
from manifests.errors import DocumentError

_DEEP = b"[" * 100_000 + b"]" * 100_000

SERVICES = {
    "deep": (_DEEP, "levels deep exceeds"),
    "deep-services": (b'{"services":' + _DEEP + b"}", "levels deep exceeds"),
    "not-json": (b"{", "not valid JSON"),
    "services-missing": (b"{}", "services: missing"),
    "services-a-string": (b'{"services":"x"}', "services: not a list"),
    "service-a-number": (b'{"services":[5]}', "services[0]: not an object"),
    "service-name-a-number": (b'{"services":[{"name":5}]}', "services[0]: service name 5 is not a string"),
}


@pytest.mark.parametrize(("data", "said"), list(SERVICES.values()), ids=list(SERVICES))
def test_damaged_haproxy_services_json_names_the_file(tmp_path: Path, data: bytes, said: str) -> None:
    plane = HAProxyDataPlane(tmp_path)
    plane.dir.mkdir()
    plane.desired.write_bytes(data)
    with pytest.raises(DataPlaneError) as info:
        plane._load()
    assert info.value.message.startswith(f"{plane.desired}: ")
    assert said in info.value.message
    assert info.value.hint is not None


ROOT_RECORDS = {
    "deep": (b"[" * 3000 + b"]" * 3000, "levels deep exceeds"),
    "a-list": (b"[]", "expected a JSON object"),
    "fingerprint-missing": (b"{}", "fingerprint: missing"),
    "fingerprint-a-number": (b'{"fingerprint": 5}', "fingerprint: not a string"),
}


@pytest.mark.parametrize(("data", "said"), list(ROOT_RECORDS.values()), ids=list(ROOT_RECORDS))
def test_damaged_vm_root_record_names_the_file_and_field(tmp_path: Path, data: bytes, said: str) -> None:
    digest = Digest.parse("sha256:" + "e" * 64)
    (tmp_path / digest.hex).mkdir()
    meta = tmp_path / f"{digest.hex}.json"
    meta.write_bytes(data)
    image: Any = SimpleNamespace(manifest_digest=digest)
    with pytest.raises(DocumentError) as info:
        place_vm(None, image, tmp_path)  # type: ignore[arg-type]
    assert str(meta) in info.value.message
    assert said in info.value.message
    assert "'fingerprint'" not in info.value.message


@pytest.mark.parametrize(
    "damage", [b"[" * 100_000, b'{"a": ' * 100_000, b"[]", b"\xff", b'{"pid": 1' + b" " * (2 << 20)]
)
def test_a_runtimes_own_record_damaged_on_disk_is_no_record_not_a_traceback(
    tmp_path: Path, damage: bytes
) -> None:
    # Both files are the runtime's own writing; damaged (a full disk, an editor), they read as
    # absent: json.loads once raised RecursionError on the deep ones.
    from agent.qemu import QemuRuntime
    from agent.runc import RuncRuntime

    iid = "kiln-web-0123abcd"
    vms = QemuRuntime(tmp_path / "q")
    vms.instance_dir(iid).mkdir(parents=True)
    (vms.instance_dir(iid) / "instance.json").write_bytes(damage)
    assert vms._record(iid) is None
    containers = RuncRuntime(tmp_path / "r")
    containers.bundle_dir(iid).mkdir(parents=True)
    (containers.bundle_dir(iid) / "config.json").write_bytes(damage)
    assert containers._bundle_config(iid) is None
