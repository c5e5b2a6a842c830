"""A composed root on the real runc: python-web's snapshots plus two layers that delete a file,
empty a directory, hard-link and set modes, seen from inside the running container."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from agent.compose import compose_image, mounts_under, remove_composed
from agent.runc import RuncRuntime
from agent.runtime import InstanceSpec, InstanceStatus, new_instance_id
from agent.snapshots import SnapshotStore
from agent.store import ContentStore, LayoutSource
from manifests.digest import Digest
from tests.agent.conftest import WebImage
from tests.agent.imagekit import M, tar_bytes, write_image
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration

LOWER = [
    M("srv", "dir", mode=0o755),
    M("srv/gone.txt", data=b"deleted above"),
    M("srv/kept.txt", data=b"kept"),
    M("srv/box", "dir"),
    M("srv/box/old.txt", data=b"hidden by the opaque directory above"),
    M("srv/box/sub", "dir"),
    M("srv/box/sub/deep.txt", data=b"hidden too"),
]
UPPER = [
    M("srv", "dir", mode=0o755),
    M("srv/.wh.gone.txt"),
    M("srv/box", "dir", mode=0o775),
    M("srv/box/.wh..wh..opq"),
    M("srv/box/new.txt", data=b"new", mode=0o640, uid=65532, gid=65532),
    M("srv/one.txt", data=b"linked", mode=0o604),
    M("srv/two.txt", "hardlink", target="srv/one.txt"),
    M("usr/lib/python3.11/.wh.this.py"),  # a file of python-web's own layers deleted
]
PROBE = """\
import json, os
out = {}
out['srv'] = sorted(os.listdir('/srv'))
out['box'] = sorted(os.listdir('/srv/box'))
out['box_mode'] = oct(os.stat('/srv/box').st_mode & 0o7777)
new = os.stat('/srv/box/new.txt')
out['new'] = [oct(new.st_mode & 0o7777), new.st_uid, new.st_gid, open('/srv/box/new.txt').read()]
one, two = os.stat('/srv/one.txt'), os.stat('/srv/two.txt')
out['link'] = [one.st_ino == two.st_ino, one.st_nlink, oct(one.st_mode & 0o7777)]
out['this'] = os.path.exists('/usr/lib/python3.11/this.py')
out['json'] = os.path.exists('/usr/lib/python3.11/json/__init__.py')
try:
    open('/srv/kept.txt', 'w')
    out['write'] = 'ok'
except OSError as e:
    out['write'] = e.strerror
print(json.dumps(out))
"""


def test_a_composed_root_on_runc(python_web: WebImage, tmp_path: Path) -> None:
    require_root("runc runs containers as root here")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    # python-web's layers, uncompressed, and the two layers above (same diff_ids: shared snapshots).
    tars = [gzip.decompress(python_web.store.path(d.digest).read_bytes()) for d in python_web.image.layers]
    tars += [tar_bytes(LOWER), tar_bytes(UPPER)]
    config = json.loads(json.dumps(python_web.image.config))
    config["rootfs"]["diff_ids"] = [str(Digest.of(t)) for t in tars]
    config["config"]["Entrypoint"] = ["/usr/bin/python3", "-c", "import time\nwhile True: time.sleep(1)"]
    built = write_image(tmp_path / "layout", tars, config=config)
    state = tmp_path / "state"
    store = ContentStore(state)
    image = store.pull_image(LayoutSource.open(tmp_path / "layout"), built.digest)
    snaps = SnapshotStore(state)
    root = compose_image(store, image, state / "roots", snaps)
    runtime = RuncRuntime(state)
    iid = new_instance_id("snap")
    try:
        runtime.start(
            InstanceSpec(
                instance_id=iid,
                service="snap",
                image_digest=image.manifest_digest,
                image_config=image.config,
                rootfs=root.path,
            )
        )
        assert runtime.state(iid).status is InstanceStatus.RUNNING
        proc = subprocess.run(
            ["runc", "--root", str(runtime.root), "exec", iid, "/usr/bin/python3", "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seen = json.loads(proc.stdout)
    finally:
        runtime.stop(iid, grace=1)
    assert seen["srv"] == ["box", "kept.txt", "one.txt", "two.txt"]  # gone.txt deleted above
    assert seen["box"] == ["new.txt"]  # opaque: old.txt and sub/ hidden
    assert seen["box_mode"] == "0o775"
    assert seen["new"] == ["0o640", 65532, 65532, "new"]
    assert seen["link"] == [True, 2, "0o604"]
    assert seen["this"] is False
    assert seen["json"] is True
    assert seen["write"] == "Read-only file system"
    # Running it changed no snapshot; nothing stays mounted once the root is removed.
    from agent.compose import composed_fingerprint

    assert composed_fingerprint(state / "roots", image.manifest_digest, snaps) == root.fingerprint
    remove_composed(state / "roots", image.manifest_digest)
    assert mounts_under(state) == []
