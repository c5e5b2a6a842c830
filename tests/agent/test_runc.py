"""The runc runtime with the real runc on the real python-web image, unpacked by the agent."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.errors import InstanceError, RuntimeFailure
from agent.netns import list_netns
from agent.runc import RuncRuntime, parse_runc_time
from agent.runtime import InstanceSpec, InstanceStatus, new_instance_id
from agent.unpack import root_fingerprint
from tests.agent.conftest import WebImage
from tests.agent.imagekit import http_in_netns
from tests.kit.services import free_port
from tests.support import require_root, require_tool


@pytest.fixture
def runc(python_web: WebImage) -> Iterator[RuncRuntime]:
    require_root("runc runs containers as root here")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    runtime = RuncRuntime(python_web.state)
    before = set(runtime.list())
    yield runtime
    for iid in set(runtime.list()) - before:
        runtime.stop(iid, grace=1)


@pytest.mark.integration
def test_python_web_runs_confined_and_stops_clean(runc: RuncRuntime, python_web: WebImage) -> None:
    port = free_port()
    iid = new_instance_id("web")
    spec = InstanceSpec(
        instance_id=iid,
        service="web",
        image_digest=python_web.image.manifest_digest,
        image_config=python_web.image.config,
        rootfs=python_web.root.path,
        env={"PORT": str(port)},
    )
    handle = runc.start(spec)
    try:
        assert handle.netns_path == f"/run/netns/{iid}"
        assert iid in list_netns()
        assert runc.list() == (iid,)
        state = runc.state(iid)
        assert state.status is InstanceStatus.RUNNING
        assert state.pid == handle.pid
        assert state.started_at is not None
        assert runc.netns_path(iid) == handle.netns_path

        reply = http_in_netns(handle.netns_path, port, "/healthz")
        assert reply.startswith(b"HTTP/1.0 200"), reply[:200]
        assert reply.endswith(b"\r\n\r\nok\n")

        probe = (
            "import os\n"
            "st = open('/proc/self/status').read()\n"
            "caps = {l.split(':')[0]: l.split()[1] for l in st.splitlines() if l.startswith('Cap')}\n"
            "out = {'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(), 'caps': caps,\n"
            "       'nnp': [l.split()[1] for l in st.splitlines() if l.startswith('NoNewPrivs')][0]}\n"
            "def attempt(p):\n"
            "    try:\n"
            "        open(p, 'w').write('x'); return 'ok'\n"
            "    except OSError as e:\n"
            "        return e.strerror\n"
            "out['app'] = attempt('/app/new'); out['tmp'] = attempt('/tmp/new')\n"
            "out['etc'] = attempt('/etc/passwd')\n"
            "import json; print(json.dumps(out))\n"
        )
        proc = subprocess.run(
            ["runc", "--root", str(runc.root), "exec", iid, "/usr/bin/python3", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seen = json.loads(proc.stdout)
        assert seen["uid"] == 65532
        assert seen["gid"] == 65532
        assert seen["groups"] == []
        zero = "0000000000000000"
        assert seen["caps"] == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), zero)
        assert seen["nnp"] == "1"
        assert seen["app"] == "Read-only file system"
        assert seen["etc"] == "Read-only file system"
        assert seen["tmp"] == "ok"
        with pytest.raises(InstanceError, match="already exists"):
            runc.start(spec)
    finally:
        runc.stop(iid, grace=5)
    assert runc.state(iid).status is InstanceStatus.MISSING
    assert iid not in runc.list()
    assert iid not in list_netns()
    assert not runc.bundle_dir(iid).exists()
    log = runc.log_path(iid).read_text()
    assert "signal 15, shutting down" in log
    assert "stopped" in log
    # Running the image changed nothing in its root.
    assert root_fingerprint(python_web.root.path) == python_web.root.fingerprint
    runc.stop(iid)  # stopping a gone instance is fine


@pytest.mark.integration
def test_a_failing_start_leaves_nothing_behind(runc: RuncRuntime, python_web: WebImage) -> None:
    config = json.loads(json.dumps(python_web.image.config))
    config["config"]["Entrypoint"] = ["/no/such/binary"]
    iid = new_instance_id("web")
    spec = InstanceSpec(
        instance_id=iid,
        service="web",
        image_digest=python_web.image.manifest_digest,
        image_config=config,
        rootfs=python_web.root.path,
    )
    with pytest.raises(RuntimeFailure, match=rf"runc run {iid} failed \(exit 1\)") as err:
        runc.start(spec)
    assert "no such file or directory" in str(err.value).lower()
    assert runc.state(iid).status is InstanceStatus.MISSING
    assert iid not in list_netns()
    assert not runc.bundle_dir(iid).exists()


@pytest.mark.integration
def test_stop_kills_what_ignores_sigterm(runc: RuncRuntime, python_web: WebImage) -> None:
    config = json.loads(json.dumps(python_web.image.config))
    config["config"]["Entrypoint"] = [
        "/usr/bin/python3",
        "-c",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)",
    ]
    iid = new_instance_id("web")
    runc.start(
        InstanceSpec(
            instance_id=iid,
            service="web",
            image_digest=python_web.image.manifest_digest,
            image_config=config,
            rootfs=python_web.root.path,
        )
    )
    started = time.monotonic()
    runc.stop(iid, grace=0.5)
    assert time.monotonic() - started < 15
    assert runc.state(iid).status is InstanceStatus.MISSING
    assert iid not in list_netns()


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-05-01T10:20:30.123456789Z", "2024-05-01T10:20:30.123456+00:00"),
        ("2024-05-01T10:20:30Z", "2024-05-01T10:20:30+00:00"),
        ("2024-05-01T10:20:30.5+02:00", "2024-05-01T10:20:30.500000+02:00"),
    ],
)
def test_parse_runc_time(text: str, iso: str) -> None:
    parsed = parse_runc_time(text)
    assert parsed is not None
    assert parsed.isoformat() == iso


@pytest.mark.parametrize("text", ["", "yesterday", "0001-01-01T00:00:00Zjunk"])
def test_parse_runc_time_rejects_junk(text: str) -> None:
    assert parse_runc_time(text) is None
