"""Publishing semantics against a real registry (distribution 2.8.2) and against ``oci:DIR``.

Every behaviour is checked on both kinds of destination: immutable version tags (refused with the
digest that holds them; the same digest again is a no-op), channel tags that move, signatures and
attestations travelling with the image, and concurrent publishers to one ``oci:DIR``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest
from publisher.errors import AuthError, InvalidReference
from publisher.layoutstore import LOCK_FILE, LayoutRepository
from publisher.publish import (
    TagAction,
    VersionConflict,
    built_image,
    check_channels,
    image_version,
    publish,
    version_tag,
)
from publisher.registrystore import RegistryRepository
from publisher.transfer import Manifest
from signing.cosign import attestation_tag, signature_tag
from signing.image import verify_image, verify_image_attestations
from signing.store import LayoutStore
from signing.verify import Identity
from tests.publisher.conftest import Target, _registry
from tests.publisher.test_publish_kit import (
    ALICE,
    BOB,
    IDENTITY,
    Dest,
    make_image,
    make_index,
    open_dest,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One plain registry for this module; each test pushes to repositories of its own."""
    yield from _registry(tmp_path_factory.mktemp("reg"), "plain")


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["registry", "layout"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dest]:
    target = request.getfixturevalue("registry") if request.param == "registry" else None
    yield from open_dest(request.param, tmp_path, target)


def _publish(
    src_dir: Path, dest: Dest, *, channels: tuple[str, ...] = (), tag: str | None = None
) -> tuple[Manifest, object]:
    src = LayoutRepository(src_dir)
    root, found = built_image(src, tag)
    version = image_version(src, root, layout_tag=found)
    return root, publish(src, root, dest.endpoint, version=version, channels=channels, jobs=2)


def _registry_puts(target: Target) -> int:
    return sum(1 for line in target.registry.log_path.read_text().splitlines() if '"PUT ' in line)


# -- pure rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("1.2.0", "1.2.0"),
        ("1.2.0+build.7", "1.2.0_build.7"),
        ("1.2.0-rc.1+sha.5114f85", "1.2.0-rc.1_sha.5114f85"),
        ("v2", "v2"),
        ("2024_01_31", "2024_01_31"),
    ],
)
def test_version_tag_maps_build_metadata(version: str, tag: str) -> None:
    assert version_tag(version) == tag


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("", "version '' cannot be a tag"),
        (".1", "version '.1' cannot be a tag"),
        ("-rc", "version '-rc' cannot be a tag"),
        ("1.0 beta", "version '1.0 beta' cannot be a tag"),
        ("1/2", "version '1/2' cannot be a tag"),
        ("x" * 129, f"version {'x' * 129!r} cannot be a tag"),
        (
            "sha256-" + "a" * 64 + ".sig",
            f"version {'sha256-' + 'a' * 64 + '.sig'!r} looks like a signature tag",
        ),
    ],
)
def test_version_tag_refusals(version: str, message: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        version_tag(version)
    assert exc.value.message == message


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (("1.0.0",), "channel '1.0.0' is the version tag"),
        (("sha256-" + "b" * 64,), f"channel {'sha256-' + 'b' * 64!r} is a signature tag"),
        (("bad tag",), "invalid tag 'bad tag'"),
        (("",), "invalid tag ''"),
    ],
)
def test_channel_refusals(channels: tuple[str, ...], message: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        check_channels(channels, "1.0.0")
    assert exc.value.message == message


def test_channels_deduplicated_in_order() -> None:
    assert check_channels(["edge", "stable", "edge"], "1.0.0") == ("edge", "stable")


def test_built_image_skips_signature_tags(tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", attest=True)
    root, tag = built_image(LayoutRepository(tmp_path / "src"))
    assert (root.digest, tag) == (desc.digest, "1.0.0")


def test_built_image_needs_a_name_when_several(tmp_path: Path) -> None:
    make_image(tmp_path / "src", version="1.0.0")
    layout = OCILayout.open(tmp_path / "src")
    other = make_image(tmp_path / "other", version="1.1.0", layer=b"other")
    for blob in (tmp_path / "other/blobs/sha256").iterdir():
        layout.link_blob(blob, Digest(blob.name))
    layout.tag(other, "1.1.0")
    with pytest.raises(Exception, match=r"holds 2 images; name one") as exc:
        built_image(LayoutRepository(tmp_path / "src"))
    assert "1.0.0, 1.1.0" in str(exc.value)


def test_version_falls_back_to_the_layout_tag(tmp_path: Path) -> None:
    make_image(tmp_path / "src", version=None, tag="3.1.4")
    src = LayoutRepository(tmp_path / "src")
    root, found = built_image(src)
    assert image_version(src, root, layout_tag=found) == "3.1.4"


# -- publishing, on both kinds of destination -------------------------------------------------------


def test_publish_pushes_image_signatures_attestations_then_tags(dest: Dest, tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", version="1.2.0", attest=True)
    _, result = _publish(tmp_path / "src", dest, channels=("edge",))
    assert result.digest == desc.digest
    assert result.reference == dest.endpoint.pinned(desc.digest)
    assert result.reference.endswith(f"@{desc.digest}")
    assert [(t.tag, t.action) for t in result.tags] == [
        ("1.2.0", TagAction.CREATED),
        ("edge", TagAction.CREATED),
    ]
    # config + layer + the .sig config/payload + the .att config/envelope
    assert result.blobs.uploaded + result.blobs.mounted == 6
    assert result.blobs.existed == 0
    assert result.signatures == (signature_tag(desc.digest), attestation_tag(desc.digest))
    for tag in ("1.2.0", "edge"):
        found = dest.endpoint.tag_target(tag)
        assert found is not None
        assert found.digest == desc.digest
    verify_image(
        dest.store, desc, identity=Identity(repository=IDENTITY, tag="1.2.0"), keys=[ALICE.public_key]
    )
    got = verify_image_attestations(
        dest.store, desc, keys=[ALICE.public_key], predicate_type="https://slsa.dev/provenance/v1"
    )
    assert len(got) == 1
    # Every blob is there with exactly the source's bytes.
    src_layout = OCILayout.open(tmp_path / "src")
    manifest = OCIManifest.from_bytes(src_layout.read_blob(desc.digest))
    for blob in (manifest.config, *manifest.layers):
        assert dest.store.read_blob(blob.digest) == src_layout.read_blob(blob.digest)


def test_republishing_the_same_digest_is_a_no_op(dest: Dest, tmp_path: Path) -> None:
    make_image(tmp_path / "src", version="1.2.0", attest=True)
    _publish(tmp_path / "src", dest, channels=("stable",))
    before_index = (dest.path / "index.json").read_bytes() if dest.path else b""
    before_puts = _registry_puts(dest.target) if dest.target else 0
    before_lines = len(dest.target.registry.log_path.read_text().splitlines()) if dest.target else 0
    _, again = _publish(tmp_path / "src", dest, channels=("stable",))
    assert not again.changed
    assert again.blobs.uploaded == again.blobs.mounted == 0
    assert again.blobs.existed == 6
    assert again.manifests_written == 0
    assert {t.action for t in again.tags} == {TagAction.UNCHANGED}
    if dest.path is not None:
        assert (dest.path / "index.json").read_bytes() == before_index
    if dest.target is not None:
        assert _registry_puts(dest.target) == before_puts, "a no-op publish wrote to the registry"
        # The version tag names the image, so its blobs are there: no HEAD per blob or manifest.
        lines = dest.target.registry.log_path.read_text().splitlines()[before_lines:]
        asked = [line for line in lines if '"HEAD ' in line and "/blobs/" in line]
        assert asked == [], "a no-change republish asked about blobs the registry vouches for"


def test_other_content_under_a_published_version_is_refused(dest: Dest, tmp_path: Path) -> None:
    first = make_image(tmp_path / "a", version="1.2.0", layer=b"first")
    other = make_image(tmp_path / "b", version="1.2.0", layer=b"second")
    _publish(tmp_path / "a", dest)
    with pytest.raises(VersionConflict) as exc:
        _publish(tmp_path / "b", dest, channels=("edge",))
    assert exc.value.message == (
        f"{dest.endpoint.display}:1.2.0 already holds {first.digest}; refusing to point it at {other.digest}"
    )
    assert exc.value.exit_code == 1
    assert "immutable" in (exc.value.hint or "")
    found = dest.endpoint.tag_target("1.2.0")
    assert found is not None
    assert found.digest == first.digest
    # Refused before anything was sent: not the other layer, not its signature, not the channel.
    layer = OCIManifest.from_bytes(OCILayout.open(tmp_path / "b").read_blob(other.digest)).layers[0]
    assert dest.endpoint.blob_size(layer.digest) is None
    assert dest.endpoint.tag_target(signature_tag(other.digest)) is None
    assert dest.endpoint.tag_target("edge") is None


def test_a_channel_tag_moves_and_versions_stay(dest: Dest, tmp_path: Path) -> None:
    one = make_image(tmp_path / "a", version="1.0.0", layer=b"one")
    two = make_image(tmp_path / "b", version="1.1.0", layer=b"two")
    _publish(tmp_path / "a", dest, channels=("edge", "stable"))
    _, result = _publish(tmp_path / "b", dest, channels=("edge",))
    assert [(t.tag, t.action, t.previous) for t in result.tags] == [
        ("1.1.0", TagAction.CREATED, None),
        ("edge", TagAction.MOVED, one.digest),
    ]
    expected = {"1.0.0": one.digest, "1.1.0": two.digest, "edge": two.digest, "stable": one.digest}
    for tag, digest in expected.items():
        found = dest.endpoint.tag_target(tag)
        assert found is not None
        assert (tag, found.digest) == (tag, digest)


def test_build_metadata_version_is_published_with_underscore(dest: Dest, tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", version="1.2.0+build.7", tag="1.2.0_build.7")
    _, result = _publish(tmp_path / "src", dest)
    assert [t.tag for t in result.tags] == ["1.2.0_build.7"]
    found = dest.endpoint.tag_target("1.2.0_build.7")
    assert found is not None
    assert found.digest == desc.digest


def test_multi_platform_index_with_signatures_on_every_manifest(dest: Dest, tmp_path: Path) -> None:
    desc = make_index(tmp_path / "src", version="2.0.0")
    _, result = _publish(tmp_path / "src", dest)
    assert result.digest == desc.digest
    found = dest.endpoint.tag_target("2.0.0")
    assert found is not None
    assert found.media_type == MediaType.OCI_INDEX
    index = OCIIndex.from_bytes(OCILayout.open(tmp_path / "src").read_blob(desc.digest))
    assert len(result.signatures) == 3
    for child in index.manifests:
        assert dest.endpoint.tag_target(signature_tag(child.digest)) is not None
    verified = verify_image(
        dest.store, desc, identity=Identity(repository=IDENTITY, tag="2.0.0"), keys=[ALICE.public_key]
    )
    assert verified == (desc.digest, *(c.digest for c in index.manifests))


def test_signatures_already_at_the_destination_are_merged_not_lost(dest: Dest, tmp_path: Path) -> None:
    make_image(tmp_path / "a", version="1.0.0", signer=BOB)
    desc = make_image(tmp_path / "b", version="1.0.0", signer=ALICE)  # same image, other signer
    _publish(tmp_path / "a", dest)
    _, result = _publish(tmp_path / "b", dest)
    assert result.tags[0].action is TagAction.UNCHANGED
    identity = Identity(repository=IDENTITY, tag="1.0.0")
    for key in (ALICE.public_key, BOB.public_key):
        verify_image(dest.store, desc, identity=identity, keys=[key])
    verify_image(dest.store, desc, identity=identity, keys=[ALICE.public_key, BOB.public_key], threshold=2)


def _add_sbom_referrer(
    layout: OCILayout, desc: Descriptor, body: bytes = b'{"spdxVersion": "SPDX-2.3"}'
) -> tuple[Descriptor, Digest]:
    empty = layout.write_blob(b"{}")
    sbom = layout.write_blob(body)
    referrer = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_EMPTY, digest=empty, size=2),
        layers=(Descriptor(media_type=MediaType.SPDX_JSON, digest=sbom, size=len(body)),),
        subject=Descriptor(media_type=MediaType.OCI_MANIFEST, digest=desc.digest, size=desc.size),
        artifact_type=MediaType.SPDX_JSON,
    )
    raw = referrer.to_bytes()
    rdesc = Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=layout.write_blob(raw),
        size=len(raw),
        artifact_type=MediaType.SPDX_JSON,
    )
    layout.add(rdesc)
    return rdesc, sbom


def test_a_referrer_added_after_publishing_travels_on_republish(dest: Dest, tmp_path: Path) -> None:
    """The version tag already names the image (so its own blobs are not asked about), but a
    referrer the destination does not list yet is pushed, with its blobs."""
    desc = make_image(tmp_path / "src", version="1.0.0")
    _publish(tmp_path / "src", dest)
    rdesc, sbom = _add_sbom_referrer(OCILayout.open(tmp_path / "src"), desc)
    _, again = _publish(tmp_path / "src", dest)
    assert again.manifests_written >= 1
    found = dest.endpoint.referrers(desc.digest)
    assert [d.digest for d in found] == [rdesc.digest]
    assert dest.store.read_blob(sbom) == b'{"spdxVersion": "SPDX-2.3"}'
    _, third = _publish(tmp_path / "src", dest)
    assert not third.changed


def test_the_referrers_index_is_written_once_for_all_referrers(registry: Target, tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", version="1.0.0")
    layout = OCILayout.open(tmp_path / "src")
    one, _ = _add_sbom_referrer(layout, desc)
    two, _ = _add_sbom_referrer(layout, desc, b'{"spdxVersion": "SPDX-2.3", "name": "two"}')
    index_tag = f"/manifests/sha256-{desc.digest.hex} "  # not the .sig tag
    with contextlib.closing(open_dest("registry", tmp_path, registry)) as gen:
        dest = next(gen)
        before = len(registry.registry.log_path.read_text().splitlines())
        _publish(tmp_path / "src", dest)
        lines = registry.registry.log_path.read_text().splitlines()[before:]
        assert len([line for line in lines if '"PUT ' in line and index_tag in line]) == 1
        assert {d.digest for d in dest.endpoint.referrers(desc.digest)} == {one.digest, two.digest}


def test_referrers_travel_with_the_image(dest: Dest, tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", version="1.0.0")
    layout = OCILayout.open(tmp_path / "src")
    empty = layout.write_blob(b"{}")
    sbom = layout.write_blob(b'{"spdxVersion": "SPDX-2.3"}')
    referrer = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_EMPTY, digest=empty, size=2),
        layers=(Descriptor(media_type=MediaType.SPDX_JSON, digest=sbom, size=27),),
        subject=Descriptor(media_type=MediaType.OCI_MANIFEST, digest=desc.digest, size=desc.size),
        artifact_type=MediaType.SPDX_JSON,
    )
    raw = referrer.to_bytes()
    rdesc = Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=layout.write_blob(raw),
        size=len(raw),
        artifact_type=MediaType.SPDX_JSON,
    )
    layout.add(rdesc)
    _publish(tmp_path / "src", dest)
    found = dest.endpoint.referrers(desc.digest)
    assert [d.digest for d in found] == [rdesc.digest]
    assert dest.store.read_blob(sbom) == b'{"spdxVersion": "SPDX-2.3"}'


def test_publish_through_token_auth(tmp_path: Path) -> None:
    desc = make_image(tmp_path / "src", version="4.0.0", attest=True)
    gen = _registry(tmp_path / "reg", "token")
    target = next(gen)
    try:
        with target.client() as client:
            endpoint = RegistryRepository(client, "secure/app")
            src = LayoutRepository(tmp_path / "src")
            root, _ = built_image(src)
            result = publish(src, root, endpoint, version="4.0.0", channels=("edge",))
            assert result.reference == f"{target.registry.host}/secure/app@{desc.digest}"
            again = publish(src, root, endpoint, version="4.0.0", channels=("edge",))
            assert not again.changed
        with target.client(credentials=None) as anonymous, pytest.raises(AuthError):
            publish(src, root, RegistryRepository(anonymous, "secure/app"), version="4.0.0")
    finally:
        gen.close()


# -- concurrency on oci:DIR -------------------------------------------------------------------------


def test_concurrent_publishers_in_threads_one_version_one_winner(tmp_path: Path) -> None:
    sources = []
    for i in range(6):
        make_image(tmp_path / f"src{i}", version="9.9.9", layer=f"content {i}".encode())
        sources.append(tmp_path / f"src{i}")
    winners: list[Digest] = []
    losers: list[VersionConflict] = []
    others: list[BaseException] = []
    barrier = threading.Barrier(len(sources))

    def run(src_dir: Path) -> None:
        try:
            dest = LayoutRepository(tmp_path / "shared", create=True)  # each its own lock descriptor
            src = LayoutRepository(src_dir)
            root, _ = built_image(src)
            barrier.wait()
            result = publish(src, root, dest, version="9.9.9", channels=(f"ch-{src_dir.name}",))
            winners.append(result.digest)
        except VersionConflict as exc:
            losers.append(exc)
        except BaseException as exc:
            others.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert others == []
    assert len(winners) == 1
    assert len(losers) == len(sources) - 1
    assert {exc.holder for exc in losers} == set(winners)
    tags = OCILayout.open(tmp_path / "shared").tags()
    assert tags["9.9.9"].digest == winners[0]
    assert (tmp_path / "shared" / LOCK_FILE).exists()


def test_concurrent_kiln_processes_one_version_one_winner(tmp_path: Path) -> None:
    """Separate processes (the real case): the flock serializes them, index.json stays whole."""
    procs = []
    for i in range(4):
        make_image(tmp_path / f"src{i}", version="5.0.0", layer=f"proc {i}".encode(), signer=None)
    env_cmd = [sys.executable, "-m", "kiln", "publish", "--json", "-q"]
    for i in range(4):
        procs.append(
            subprocess.Popen(
                [*env_cmd, str(tmp_path / f"src{i}"), f"oci:{tmp_path / 'shared'}", "--channel", f"c{i}"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes = []
    for p in procs:
        _out, err = p.communicate(timeout=120)
        codes.append(p.returncode)
        if p.returncode == 1:
            assert "5.0.0 already holds sha256:" in err
    assert sorted(codes) == [0, 1, 1, 1]
    index = OCILayout.open(tmp_path / "shared").index()  # parses: not torn
    names = [d.annotations.get("org.opencontainers.image.ref.name") for d in index.manifests]
    assert names.count("5.0.0") == 1
    assert len([n for n in names if n and n.startswith("c")]) == 1


def test_layout_store_is_readable_by_the_signing_store(tmp_path: Path) -> None:
    """What kiln publishes into oci:DIR is an ordinary layout the rest of kiln opens."""
    desc = make_image(tmp_path / "src", version="1.0.0")
    dest = LayoutRepository(tmp_path / "dest", create=True)
    src = LayoutRepository(tmp_path / "src")
    root, _ = built_image(src)
    publish(src, root, dest, version="1.0.0")
    store = LayoutStore.open(tmp_path / "dest")
    assert store.layout.resolve("1.0.0").digest == desc.digest
    verify_image(store, desc, identity=Identity(repository=IDENTITY, tag="1.0.0"), keys=[ALICE.public_key])


def test_publish_into_a_non_layout_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match=r"not empty and not an OCI layout"):
        LayoutRepository(tmp_path / "dest", create=True)
