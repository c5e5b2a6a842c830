"""The OCI image config and manifest annotations for a built image. Pure: values in, values out.

The config is a :class:`manifests.imageconfig.ImageConfig`: that module owns the document and its
``dev.kiln.*`` label schema, and the agent reads it through the same type. ``created`` is the
SOURCE_DATE_EPOCH, never the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from builder.errors import BuildError
from manifests.digest import Digest
from manifests.image import ImageManifest
from manifests.image_parse import RESERVED_LABEL_PREFIX
from manifests.imageconfig import History, ImageConfig, RunConfig, RunPolicy

__all__ = [
    "DEFAULT_PATH",
    "rfc3339",
    "run_policy",
    "image_config",
    "manifest_annotations",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rfc3339(epoch: int) -> str:
    """Seconds since the epoch as RFC 3339 UTC with a ``Z`` (``1970-01-01T00:00:00Z``)."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Without `accounts`, an image still never runs as root: it gets the conventional unprivileged
# "nonroot" ids (as distroless images do), with no /etc/passwd entry.
DEFAULT_USER = "65532:65532"
_DEFAULT_IDS = (65532, 65532)


def run_policy(m: ImageManifest) -> RunPolicy:
    """The run-time policy the agent enforces, recorded in the ``dev.kiln.*`` labels."""
    return RunPolicy(
        read_only=True,
        user=(m.accounts.uid, m.accounts.gid) if m.accounts is not None else _DEFAULT_IDS,
        writable=tuple(m.writable),
        volumes=tuple(m.volumes),
        ports=tuple(str(p) for p in m.ports),
        health=m.health,
    )


def image_config(
    m: ImageManifest,
    *,
    diff_ids: Sequence[Digest],
    layer_labels: Sequence[str],
    source_date_epoch: int,
) -> ImageConfig:
    """The OCI image config (write it with ``.to_bytes()``)."""
    if len(diff_ids) != len(layer_labels):
        raise ValueError("one label per layer")
    for key, _ in m.labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise BuildError(
                f"{m.source}: labels.{key}: the dev.kiln. prefix is reserved for kiln",
                hint="choose another label name",
            )
    policy = run_policy(m)
    env = list(m.env)
    if not any(k == "PATH" for k, _ in m.env):
        env.insert(0, ("PATH", DEFAULT_PATH))
    created = rfc3339(source_date_epoch)
    return ImageConfig(
        created=created,
        architecture=m.platform.architecture,
        os=m.platform.os,
        variant=m.platform.variant or None,
        config=RunConfig(
            user="{}:{}".format(*policy.user) if policy.user is not None else None,
            env=tuple(env),
            entrypoint=tuple(m.entrypoint),
            cmd=tuple(m.cmd),
            working_dir=m.workdir or None,
            exposed_ports=policy.ports,
            volumes=policy.volumes,
            labels=tuple(m.labels),
            policy=policy,
        ),
        diff_ids=tuple(diff_ids),
        history=tuple(
            History(created=created, created_by=f"kiln: {label} layer", comment="built by kiln")
            for label in layer_labels
        ),
    )


def manifest_annotations(m: ImageManifest, *, source_date_epoch: int, compression: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": m.name,
        "org.opencontainers.image.version": m.version,
        "org.opencontainers.image.created": rfc3339(source_date_epoch),
        "dev.kiln.compression": compression,
    }
