"""Preparing a release: verify each image's signature, pull it by digest, compose a read-only root
of its layer snapshots (each layer unpacked once: :mod:`agent.snapshots`, :mod:`agent.compose`).

:meth:`Preparer.prepare` does it for every service of a release before anything starts (no
mix-and-match): under the trust root's image policy, from the
:class:`agent.releasesource.ReleaseSource` (``fetch=True``), or from the local content store only
(``fetch=False``: rollbacks, restarts). A fetched image is pulled while its signature is checked:
the pull stores only bytes that hash to the digest the verified release pins, and nothing is
unpacked before the signature passed.
:meth:`Preparer.fresh` gives a service a root unpacked again from blobs re-verified in the store
(drift repair; the caller has set the tampered root aside first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.bundle import ImagePolicy
from agent.compose import compose_image
from agent.metrics import Metrics
from agent.releasesource import ReleaseSource
from agent.rollout import Prepared, config_digest, health_spec_for, service_port
from agent.snapshots import SnapshotStore
from agent.store import BlobSource, ContentStore, PulledImage
from agent.unpack import UnpackLimits
from agent.vmimage import is_vm_image, prepared_vm
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.imageconfig import ImageConfig
from manifests.release import Release
from manifests.trustroot import TrustRoot
from manifests.vocabulary import Reason
from signing.image import pinned_root, verify_image
from signing.root import image_policy
from signing.verify import Identity

__all__ = ["Preparer"]


class Preparer:
    """Verify, pull, unpack (see the module docstring)."""

    def __init__(
        self,
        *,
        store: ContentStore,
        roots_dir: Path,
        snapshots: SnapshotStore | None = None,
        limits: Callable[[], UnpackLimits | None] = lambda: None,
        metrics: Metrics,
        wall: Callable[[], datetime],
        source: Callable[[], ReleaseSource],
    ) -> None:
        self.store = store
        self.roots_dir = roots_dir
        self.snapshots = snapshots if snapshots is not None else SnapshotStore(roots_dir.parent)
        self.limits = limits
        self.metrics = metrics
        self.wall = wall
        self.source = source

    def prepare(self, release: Release, *, root: TrustRoot, fetch: bool) -> dict[str, Prepared]:
        """Every service's image verified, pulled and unpacked (``fetch=False``: from the store)."""
        policy = image_policy(root) if fetch else None
        out: dict[str, Prepared] = {}
        for service in release.services:
            pin = service.image
            if fetch:
                assert policy is not None  # noqa: S101 - set above when fetching
                with (
                    self.source().open_images(pin.repository) as loc,
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-pull") as pool,
                ):
                    # The pull runs while the signatures are checked: it stores only bytes that
                    # hash to what the verified release pins, and nothing is unpacked or started
                    # before the image's signature passed (a refused image's blobs are garbage).
                    pulling = pool.submit(self._pull, loc.blobs, pin.digest)
                    verify_image(
                        loc.artifacts,
                        pinned_root(loc.artifacts, pin.digest),
                        identity=Identity(repository=pin.repository),
                        policy=policy,
                        now=self.wall(),
                        check_blobs=False,  # the store pulls and hashes every blob itself
                    )
                    image = pulling.result()
            else:
                image = self.store.image(pin.digest)
            out[service.name] = self.unpacked(service, release.version, pin.digest, image)
        return out

    def fresh(self, release: Release, name: str) -> Prepared:
        """``name``'s root unpacked again after its blobs were re-verified in the store."""
        service = release.service(name)
        assert service is not None  # noqa: S101 - name comes from the release
        image = self.store.image(service.image.digest)
        for desc in (image.manifest.config, *image.layers):
            self.store.verify(desc.digest, size=desc.size)
        return self.unpacked(service, release.version, service.image.digest, image)

    def existing(self, release: Release, name: str) -> Prepared:
        service = release.service(name)
        assert service is not None  # noqa: S101 - name comes from the release
        image = self.store.image(service.image.digest)
        return self.unpacked(service, release.version, service.image.digest, image)

    def _pull(self, blobs: BlobSource, pin: Digest) -> PulledImage:
        started = time.monotonic()
        image = self.store.pull_image(blobs, pin)
        self._rate(image, time.monotonic() - started)
        return image

    def _rate(self, image: PulledImage, seconds: float) -> None:
        sizes = {d.digest: d.size for d in (image.manifest.config, *image.layers)}
        fetched = sum(sizes.get(d, 0) for d in image.fetched)
        self.metrics.set_verify_rate(fetched, seconds)

    def unpacked(self, service: Any, version: int, pin: Digest, image: PulledImage) -> Prepared:
        if is_vm_image(image):  # a VM artifact: its parts are placed, the qemu runtime boots it
            return prepared_vm(self.store, image, self.roots_dir, service=service, release=version, pin=pin)
        typed = ImageConfig.from_dict(image.config)
        volumes = ImagePolicy.from_config(typed).volumes
        shared = bool(volumes) and not service.volume_per_instance
        if shared and service.replicas > 1:
            raise VerificationError(
                f"service {service.name}: its image declares volumes ({', '.join(volumes)}), "
                f"so {service.replicas} replicas cannot share them (volume_per_instance: true gives "
                "each instance its own)",
                reason=Reason.POLICY,
                hint="run one replica, or give each instance its own volumes (volume_per_instance: true)",
            )
        root = compose_image(self.store, image, self.roots_dir, self.snapshots, limits=self.limits())
        port = service_port(service, typed.policy)
        health, grace = health_spec_for(service, typed.policy.health)
        return Prepared(
            service=service,
            release=version,
            image_digest=pin,
            manifest_digest=image.manifest_digest,
            image_config=image.config,
            rootfs=root.path,
            fingerprint=root.fingerprint,
            port=port,
            health=health,
            grace=grace,
            config=config_digest(service, pin, image.manifest_digest, port),
            exclusive=shared,
        )
