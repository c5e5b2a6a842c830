"""The publisher's errors, and the translation of a registry's JSON error body into them.

::

    KilnError
    ├── PublishError                 registry and publishing semantics
    │   ├── RegistryError            the registry answered with an error: ``code``, ``status``, its message
    │   │   └── AuthError            credentials missing or refused, a token could not be had (401/403)
    │   │       └── TokenAnswerError the token endpoint's answer is not a token answer (also a
    │   │                            ParseError: reason ``parse``)
    │   └── InvalidReference         an image reference or repository name does not parse
    ├── UnavailableError
    │   └── RegistryUnavailable      the network failed, or 408/429/5xx persisted past the retries
    └── VerificationError            bytes the registry sent were refused (digest, size)

``RegistryUnavailable`` also derives from :class:`PublishError`, so ``except PublishError`` catches
everything the publisher raises except refusals of bad content, which stay ``VerificationError``.
"""

from __future__ import annotations

import enum

from manifests.bounded import JsonCaps, read_json
from manifests.errors import KilnError, ParseError, UnavailableError
from manifests.vocabulary import Reason

__all__ = [
    "ErrorCode",
    "PublishError",
    "RegistryError",
    "AuthError",
    "TokenAnswerError",
    "InvalidReference",
    "RegistryUnavailable",
    "registry_error",
    "MAX_ERROR_BODY",
]

MAX_ERROR_BODY = 64 * 1024
_ERROR_CAPS = JsonCaps(max_bytes=MAX_ERROR_BODY, max_depth=16)


class ErrorCode(enum.StrEnum):
    """The error codes of the OCI distribution spec (plus Docker's TOOMANYREQUESTS)."""

    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    MANIFEST_UNVERIFIED = "MANIFEST_UNVERIFIED"
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    SIZE_INVALID = "SIZE_INVALID"
    TAG_INVALID = "TAG_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    UNKNOWN = "UNKNOWN"

    @property
    def is_not_found(self) -> bool:
        return self in (
            ErrorCode.BLOB_UNKNOWN,
            ErrorCode.MANIFEST_UNKNOWN,
            ErrorCode.NAME_UNKNOWN,
            ErrorCode.BLOB_UPLOAD_UNKNOWN,
        )


_HINTS: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHORIZED: "log in (docker login, or KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD)",
    ErrorCode.DENIED: "these credentials may not do this on this repository",
    ErrorCode.NAME_UNKNOWN: "check the repository name; nothing has been pushed to it yet",
    ErrorCode.MANIFEST_UNKNOWN: "check the tag or digest",
    ErrorCode.BLOB_UNKNOWN: "push the blob first, or check the digest",
    ErrorCode.MANIFEST_BLOB_UNKNOWN: "push every blob the manifest references before the manifest",
    ErrorCode.UNSUPPORTED: "this registry does not support the operation",
    ErrorCode.TOOMANYREQUESTS: "wait, or lower --jobs",
}


class PublishError(KilnError):
    """Base of the publisher's errors."""


class RegistryError(PublishError):
    """The registry refused a request. ``code`` is the registry's error code (an :class:`ErrorCode`
    when known), ``status`` the HTTP status, and the message carries the registry's own text."""

    def __init__(
        self,
        message: str,
        *,
        code: str = ErrorCode.UNKNOWN,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        if hint is None and code in ErrorCode.__members__:
            hint = _HINTS.get(ErrorCode(code))
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status


class AuthError(RegistryError):
    """Credentials are missing or refused, or no token could be obtained."""

    def __init__(
        self,
        message: str,
        *,
        code: str = ErrorCode.UNAUTHORIZED,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, hint=hint)


class TokenAnswerError(AuthError, ParseError):
    """The token endpoint answered something that is not a token answer (not JSON, too large or
    deep, no string token...): bad input, refused with reason ``parse`` like any hostile document."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        AuthError.__init__(self, message, hint=hint)
        self.reason = Reason.PARSE


class InvalidReference(PublishError):
    """An image reference (``registry/repo[:tag][@digest]``) or a repository name is invalid."""


class RegistryUnavailable(UnavailableError, PublishError):
    """The registry could not be reached, or kept failing (408/429/5xx) past the retry budget."""


class PlainHttpRegistry(RegistryUnavailable):
    """The registry answered a TLS handshake in plain http: retrying cannot help, --insecure can."""


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def registry_error(status: int, body: bytes, *, what: str) -> RegistryError:
    """Translate an error response into a typed error carrying the registry's message.

    ``body`` must already be size-capped by the caller. A body that is not the spec's
    ``{"errors": [{"code", "message", "detail"}]}`` still yields an error naming the status.
    """
    code = ErrorCode.UNKNOWN.value
    messages: list[str] = []
    try:
        doc = read_json(body, what="registry error body", caps=_ERROR_CAPS) if body else None
    except ParseError:
        doc = None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list):
        for i, err in enumerate(errors[:8]):
            if not isinstance(err, dict):
                continue
            c = err.get("code")
            m = err.get("message")
            if i == 0 and isinstance(c, str) and c:
                code = _clip(c, 64)
            if isinstance(m, str) and m:
                messages.append(_clip(m))
    if code == ErrorCode.UNKNOWN and not messages:
        fallback = {
            401: ErrorCode.UNAUTHORIZED,
            403: ErrorCode.DENIED,
            429: ErrorCode.TOOMANYREQUESTS,
        }.get(status)
        if fallback is not None:
            code = fallback.value
        text = _clip(body.decode("utf-8", "replace")) if body else ""
        if text:
            messages.append(text)
    detail = "; ".join(messages) if messages else "no message"
    message = f"{what}: registry answered {status} {code}: {detail}"
    if status in (401, 403) or code in (ErrorCode.UNAUTHORIZED, ErrorCode.DENIED):
        return AuthError(message, code=code, status=status)
    return RegistryError(message, code=code, status=status)
