"""``oci:DIR[:NAME|@sha256:HEX]``: an image in an OCI image layout, as every verb takes it.

NAME is an ``org.opencontainers.image.ref.name`` annotation in the layout's ``index.json``, the
same reference skopeo's ``oci:`` transport takes (``oci:path[:reference]``). A build names its
image with a full reference (``python-web:1.0.0``), so NAME may hold colons and slashes itself:

- text after the last ``@`` that reads ``sha256:...`` is a digest, the rest the directory;
- text that is an existing directory is the directory alone (a path may hold colons);
- otherwise the directory ends at the colon before which an existing layout ends (its
  ``oci-layout`` file); two such colons are ambiguous and refused;
- when no layout exists there yet (a destination), the first colon followed by no ``/`` ends
  the directory, as in skopeo for names without a slash (a colon in a directory's path, as in
  ``oci:/a:b/img``, stays in it).

NAME must follow the image-spec's grammar for ref.name (``component ("/" component)*``,
components of letters and digits joined by one of ``-._:@+`` or ``--``) or be a registry tag.
Which entry of the index a name selects, and the errors for a missing or ambiguous one, are
:func:`manifests.layout.select_manifest`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from manifests.digest import Digest
from manifests.errors import DocumentError

__all__ = ["LayoutReference", "parse_layout_reference", "is_ref_name", "tag_of"]

_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MAX_NAME = 255


def is_ref_name(name: str) -> bool:
    """Whether ``name`` may be an ``org.opencontainers.image.ref.name`` (or a registry tag)."""
    return len(name) <= _MAX_NAME and bool(_REF_NAME.fullmatch(name) or _TAG.fullmatch(name))


def tag_of(name: str) -> str | None:
    """The registry tag a layout name stands for: a bare tag itself, the part after the last colon
    of a full reference (``python-web:1.0.0`` -> ``1.0.0``), ``None`` for ``host:5000/app``."""
    _, colon, tag = name.rpartition(":")
    if not colon:
        return name
    return tag if tag and "/" not in tag else None


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutReference:
    """A layout directory and, optionally, the name or digest of one image in it."""

    directory: Path
    name: str | None = None
    digest: Digest | None = None


def parse_layout_reference(text: str) -> LayoutReference:
    """Parse ``oci:DIR[:NAME|@sha256:HEX]`` (``oci:`` optional); see the module docstring."""
    body = text.removeprefix("oci:")
    if not body:
        raise DocumentError(f"invalid image reference {text!r}", hint="use oci:DIR[:NAME]")
    if "\x00" in body:  # no path can hold one: every later os call would raise ValueError
        raise DocumentError(f"invalid image reference {text[:200]!r}: a NUL byte in the directory")
    by_digest = _digest_reference(text, body)
    if by_digest is not None:
        return by_digest
    if Path(body).is_dir():
        return LayoutReference(directory=Path(body))
    split = _split(text, body)
    if split is None:
        return LayoutReference(directory=Path(body))
    name = body[split + 1 :]
    if not is_ref_name(name):
        raise DocumentError(
            f"invalid image name {name!r} in {text!r}",
            hint="a tag (1.0.0) or a reference as a build names its image (python-web:1.0.0)",
        )
    return LayoutReference(directory=Path(body[:split]), name=name)


def _digest_reference(text: str, body: str) -> LayoutReference | None:
    head, at, tail = body.rpartition("@")
    if not at or not tail.startswith("sha256:"):
        return None
    if not head:
        raise DocumentError(f"invalid image reference {text!r}", hint="use oci:DIR@sha256:HEX")
    try:
        digest = Digest.parse(tail)
    except DocumentError as exc:
        raise DocumentError(f"invalid digest in {text!r}: {exc.message}", hint=exc.hint) from None
    return LayoutReference(directory=Path(head), digest=digest)


def _split(text: str, body: str) -> int | None:
    """The index of the colon that ends the directory (see the module docstring), if any."""
    colons = [i for i, c in enumerate(body) if c == ":" and i and body[i + 1 :]]
    layouts = [i for i in colons if (Path(body[:i]) / "oci-layout").is_file()]
    if len(layouts) > 1:
        readings = " or ".join(f"{body[:i]!r} named {body[i + 1 :]!r}" for i in layouts)
        raise DocumentError(
            f"ambiguous image reference {text!r}: the layout {readings}",
            hint="name the image by digest (oci:DIR@sha256:HEX), or move one layout",
        )
    fresh = [i for i in colons if "/" not in body[i + 1 :]]
    return layouts[0] if layouts else (fresh[0] if fresh else None)
