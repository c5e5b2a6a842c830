"""The examples from the real Debian archive (deb.debian.org), through the persistent download
cache (``$KILN_CACHE`` or ``~/.cache/kiln/debian``: reruns download nothing): nginx-debian runs
read-only as non-root under runc and on a private dockerd and answers; python-web-debian answers
/healthz and its SBOM ties every file to a listed package or to the app; an offline rebuild from
the download cache alone, and a build from a second checkout, give the same digest."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.docker_runtime import DockerRuntime
from agent.runc import RuncRuntime
from agent.runtime import InstanceSpec, new_instance_id
from agent.store import ContentStore, LayoutSource, PulledImage
from agent.unpack import UnpackedRoot, unpack_image
from builder.debian.cache import default_cache
from kiln.cli import main
from kiln.testing import PrivateDockerd
from manifests.debianlock import DebianLock
from manifests.digest import Digest
from signing.attestation import PredicateKind
from tests.agent.imagekit import http_in_netns
from tests.builder.debian.records import record_bytes, sbom_of
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
NGINX = REPO / "examples" / "nginx-debian" / "nginx-debian.yaml"
PYWEB = REPO / "examples" / "python-web" / "python-web-debian.yaml"


@dataclass(frozen=True)
class Built:
    layout: Path
    digest: str
    state: Path
    store: ContentStore
    image: PulledImage
    root: UnpackedRoot


def _build(manifest: Path, out: Path, *extra: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["build", str(manifest), "-o", str(out), "--force", "--json", "-q", *extra])
    assert code == 0, f"kiln build {manifest} failed"
    return str(json.loads(buf.getvalue())["digest"])


def _built(base: Path, manifest: Path) -> Built:
    digest = _build(manifest, base / "layout", "--no-cache")
    state = base / "state"
    store = ContentStore(state)
    image = store.pull_image(LayoutSource.open(base / "layout"), Digest.parse(digest))
    root = unpack_image(store, image, state / "roots")
    return Built(layout=base / "layout", digest=digest, state=state, store=store, image=image, root=root)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _built(tmp_path_factory.mktemp("nginx-debian"), NGINX)


@pytest.fixture(scope="module")
def pyweb(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _built(tmp_path_factory.mktemp("python-web-debian"), PYWEB)


@pytest.fixture
def runc_for() -> Iterator[list[RuncRuntime]]:
    require_root("runc runs containers as root here")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")
    made: list[RuncRuntime] = []
    yield made
    for runtime in made:
        for iid in runtime.list():
            runtime.stop(iid, grace=1)


def _spec(built: Built, env: dict[str, str] | None = None, *, rootfs: bool = True) -> InstanceSpec:
    return InstanceSpec(
        instance_id=new_instance_id("deb"),
        service="deb",
        image_digest=built.image.manifest_digest,
        image_config=built.image.config,
        rootfs=built.root.path if rootfs else None,
        env=env or {},
    )


def test_nginx_debian_runs_read_only_non_root_under_runc(nginx: Built, runc_for: list[RuncRuntime]) -> None:
    runtime = RuncRuntime(nginx.state)
    runc_for.append(runtime)
    handle = runtime.start(_spec(nginx))
    reply = http_in_netns(handle.netns_path, 8080, "/healthz")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert reply.endswith(b"\r\n\r\nok\n")
    page = http_in_netns(handle.netns_path, 8080, "/")
    assert b"nginx from pinned Debian packages" in page
    config = nginx.image.config["config"]
    assert config["User"] == "65532:65532"
    status = (Path("/proc") / str(handle.pid) / "status").read_text()
    assert "\nUid:\t65532\t65532\t65532\t65532\n" in status
    assert "\nNoNewPrivs:\t1\n" in status


def test_nginx_debian_answers_on_a_private_dockerd(nginx: Built, dockerd: PrivateDockerd) -> None:
    runtime = DockerRuntime(nginx.store, nginx.state, base_url=dockerd.host)
    try:
        runtime.ensure_image(nginx.image.manifest_digest)
        spec = _spec(nginx, rootfs=False)
        handle = runtime.start(spec)
        reply = http_in_netns(handle.netns_path, 8080, "/healthz")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        info = json.loads(dockerd.cli("inspect", spec.instance_id).stdout)[0]
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["Config"]["User"] == "65532:65532"
    finally:
        for iid in runtime.list():
            runtime.stop(iid, grace=1)
        runtime.close()


def test_python_web_debian_answers_healthz(pyweb: Built, runc_for: list[RuncRuntime]) -> None:
    runtime = RuncRuntime(pyweb.state)
    runc_for.append(runtime)
    handle = runtime.start(_spec(pyweb, {"PORT": "8080"}))
    reply = http_in_netns(handle.netns_path, 8080, "/healthz")
    assert reply.startswith(b"HTTP/1.0 200"), reply[:300]
    assert reply.endswith(b"\r\n\r\nok\n")


def _sbom(layout: Path) -> dict[str, object]:
    return sbom_of(layout)


@pytest.mark.parametrize("example", ["pyweb", "nginx"])
def test_every_file_comes_from_a_listed_package_or_the_app(
    example: str, request: pytest.FixtureRequest
) -> None:
    built: Built = request.getfixturevalue(example)
    manifest = PYWEB if example == "pyweb" else NGINX
    lock = DebianLock.from_bytes(manifest.with_suffix(".lock").read_bytes())
    sbom = _sbom(built.layout)
    packages = {
        p["SPDXID"]: p
        for p in sbom["packages"]  # type: ignore[attr-defined]
        if any(r["referenceLocator"].startswith("pkg:deb/") for r in p.get("externalRefs", ()))
    }
    assert {p["name"] for p in packages.values()} == {p.name for p in lock.packages["amd64"]}
    for p in packages.values():
        purl = p["externalRefs"][0]["referenceLocator"]
        assert purl.startswith(f"pkg:deb/debian/{p['name']}@")
        assert purl.endswith(("?arch=amd64&distro=debian-12", "?arch=all&distro=debian-12"))
        assert p["supplier"].startswith("Organization: ")
    owned = {
        r["relatedSpdxElement"]
        for r in sbom["relationships"]  # type: ignore[attr-defined]
        if r["spdxElementId"] in packages and r["relationshipType"] == "CONTAINS"
    }
    # The application's own files and what kiln writes (accounts; status.d and the CA bundle
    # for a full debian source) are the only files no package ships.
    app = {"./app/server.py", "./etc/kiln-nginx/nginx.conf", "./srv/www/index.html"}
    generated = {"./etc/passwd", "./etc/group"}
    orphans = [
        f["fileName"]
        for f in sbom["files"]  # type: ignore[attr-defined]
        if f["SPDXID"] not in owned
        and f["fileName"] not in app | generated
        and not f["fileName"].startswith("./var/lib/dpkg/status.d/")
    ]
    assert orphans == []
    assert len(owned) > 300
    # Nothing in the records names where this machine keeps its caches.
    provenance = record_bytes(built.layout)[PredicateKind.SLSAPROVENANCE]
    cache = os.path.realpath(default_cache())
    assert cache not in json.dumps(sbom)
    assert cache.encode() not in provenance


def _copy_cache(src: Path, dst: Path, lock: DebianLock) -> None:
    (dst / "sha256").mkdir(parents=True)
    for pkg in lock.packages["amd64"]:
        shutil.copyfile(src / "sha256" / pkg.sha256, dst / "sha256" / pkg.sha256)


def test_offline_rebuild_and_a_second_checkout_give_the_same_digest(
    nginx: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = DebianLock.from_bytes(NGINX.with_suffix(".lock").read_bytes())
    # Only the download cache survives: no roots, no build cache, no output.
    _copy_cache(default_cache(), tmp_path / "cache", lock)
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    assert _build(NGINX, tmp_path / "offline", "--no-cache", "--offline") == nginx.digest
    # The SBOM and provenance do not depend on where the caches live either.
    first = record_bytes(nginx.layout)
    again = record_bytes(tmp_path / "offline")
    assert set(first) == set(again) == {PredicateKind.SPDX, PredicateKind.SLSAPROVENANCE}
    assert again == first
    # A second checkout somewhere else, through the build cache this time.
    checkout = tmp_path / "elsewhere" / "nginx-debian"
    shutil.copytree(NGINX.parent, checkout)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "build-cache"))
    assert _build(checkout / NGINX.name, tmp_path / "second", "--offline") == nginx.digest


@pytest.mark.parametrize("example", ["pyweb", "nginx"])
def test_spdx_tools_finds_nothing_wrong_with_the_debian_packages(
    example: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The Debian package entries are valid SPDX 2.3 (the rest of the document is the SBOM
    writer's business and has its own validation test)."""
    pytest.importorskip("spdx_tools")
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    built: Built = request.getfixturevalue(example)
    path = tmp_path / "sbom.spdx.json"
    path.write_text(json.dumps(_sbom(built.layout)))
    messages = validate_full_spdx_document(parse_file(str(path)))
    ours = [
        m.validation_message
        for m in messages
        if "DebianPackage" in m.validation_message
        or (m.context is not None and "DebianPackage" in (m.context.spdx_id or ""))
    ]
    assert ours == []
