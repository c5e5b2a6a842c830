"""The OCI image config and manifest annotations for a built image. Pure: values in, dicts out.

The run-time policy the agent enforces travels in ``dev.kiln.*`` labels: ``dev.kiln.read-only``,
``dev.kiln.user``, ``dev.kiln.writable``, ``dev.kiln.volumes``, ``dev.kiln.ports`` and
``dev.kiln.health`` (JSON values, canonical). ``created`` is the SOURCE_DATE_EPOCH, never the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from builder.errors import BuildError
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.image import ExecCheck, HealthCheck, HttpCheck, ImageManifest, TcpCheck
from manifests.image_parse import RESERVED_LABEL_PREFIX

__all__ = [
    "DEFAULT_PATH",
    "rfc3339",
    "kiln_labels",
    "health_to_dict",
    "image_config",
    "manifest_annotations",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rfc3339(epoch: int) -> str:
    """Seconds since the epoch as RFC 3339 UTC with a ``Z`` (``1970-01-01T00:00:00Z``)."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def health_to_dict(health: HealthCheck) -> dict[str, Any]:
    check = health.check
    out: dict[str, Any]
    if isinstance(check, HttpCheck):
        out = {"type": "http", "port": check.port, "path": check.path}
    elif isinstance(check, TcpCheck):
        out = {"type": "tcp", "port": check.port}
    elif isinstance(check, ExecCheck):
        out = {"type": "exec", "command": list(check.command)}
    else:  # pragma: no cover - closed union
        raise BuildError(f"unsupported health check {type(check).__name__}")
    out.update(interval=health.interval, timeout=health.timeout, retries=health.retries)
    return out


# Without `accounts`, an image still never runs as root: it gets the conventional unprivileged
# "nonroot" ids (as distroless images do), with no /etc/passwd entry.
DEFAULT_USER = "65532:65532"


def _user(m: ImageManifest) -> str:
    return f"{m.accounts.uid}:{m.accounts.gid}" if m.accounts is not None else DEFAULT_USER


def kiln_labels(m: ImageManifest) -> dict[str, str]:
    """The ``dev.kiln.*`` labels recording the run-time policy."""
    labels = {
        "dev.kiln.read-only": "true",
        "dev.kiln.writable": _json(list(m.writable)),
        "dev.kiln.volumes": _json(list(m.volumes)),
        "dev.kiln.ports": _json([str(p) for p in m.ports]),
    }
    labels["dev.kiln.user"] = _user(m)
    if m.health is not None:
        labels["dev.kiln.health"] = _json(health_to_dict(m.health))
    return labels


def image_config(
    m: ImageManifest,
    *,
    diff_ids: Sequence[Digest],
    layer_labels: Sequence[str],
    source_date_epoch: int,
) -> dict[str, Any]:
    """The OCI image config document (serialize it with :func:`canonical_json`)."""
    if len(diff_ids) != len(layer_labels):
        raise ValueError("one label per layer")
    created = rfc3339(source_date_epoch)
    labels: dict[str, str] = {}
    for key, value in m.labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise BuildError(
                f"{m.source}: labels.{key}: the dev.kiln. prefix is reserved for kiln",
                hint="choose another label name",
            )
        labels[key] = value
    labels.update(kiln_labels(m))
    env = [f"{k}={v}" for k, v in m.env]
    if not any(k == "PATH" for k, _ in m.env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    cfg: dict[str, Any] = {"Env": env, "Labels": labels, "User": _user(m)}
    if m.entrypoint:
        cfg["Entrypoint"] = list(m.entrypoint)
    if m.cmd:
        cfg["Cmd"] = list(m.cmd)
    if m.workdir:
        cfg["WorkingDir"] = m.workdir
    if m.ports:
        cfg["ExposedPorts"] = {str(p): {} for p in m.ports}
    if m.volumes:
        cfg["Volumes"] = {v: {} for v in m.volumes}
    doc: dict[str, Any] = {
        "created": created,
        "architecture": m.platform.architecture,
        "os": m.platform.os,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
        "history": [
            {"created": created, "created_by": f"kiln: {label} layer", "comment": "built by kiln"}
            for label in layer_labels
        ],
    }
    if m.platform.variant:
        doc["variant"] = m.platform.variant
    return doc


def manifest_annotations(m: ImageManifest, *, source_date_epoch: int, compression: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": m.name,
        "org.opencontainers.image.version": m.version,
        "org.opencontainers.image.created": rfc3339(source_date_epoch),
        "dev.kiln.compression": compression,
    }
