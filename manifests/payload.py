"""Received payloads of documents people write: the canonical JSON that was signed.

A release or a trust root is signed as its canonical JSON. A host receives those bytes and parses
them strictly: a size cap before anything else, JSON with no duplicate keys, the same schema as
the written document (through :func:`payload_document`), and finally the bytes must be exactly
the canonical form of what they hold (:func:`require_canonical`), so one document has exactly one
signed spelling. Every refusal is a :class:`~manifests.errors.VerificationError` with reason
``parse``.
"""

from __future__ import annotations

from manifests.errors import DocumentError, VerificationError
from manifests.oci import parse_json_object
from manifests.source import DocumentFormat, SourceDocument
from manifests.vocabulary import Reason

__all__ = ["payload_document", "require_canonical"]


def payload_document(data: bytes, *, what: str, limit: int, name_errors: bool = True) -> SourceDocument:
    """The JSON object in ``data`` as a document a schema can walk; ``what`` names it in messages.

    ``name_errors`` starts every message with ``what`` (a duplicate key otherwise says only
    ``duplicate key 'x' in JSON document``).
    """
    if len(data) > limit:
        raise VerificationError(
            f"{what}: {len(data)} bytes exceeds the {limit}-byte cap", reason=Reason.PARSE
        )
    try:
        obj = parse_json_object(data, what=what, limit=limit)
    except DocumentError as exc:
        message = exc.message
        if name_errors and not message.startswith(what):
            message = f"{what}: {message}"
        raise VerificationError(message, reason=Reason.PARSE) from None
    return SourceDocument(source=what, fmt=DocumentFormat.YAML, data=obj)


def require_canonical(data: bytes, canonical: bytes, *, what: str, hint: str) -> None:
    """Refuse ``data`` unless it is exactly ``canonical``, the serialization of what it holds."""
    if canonical != data:
        raise VerificationError(f"{what} is not in canonical form", reason=Reason.PARSE, hint=hint)
