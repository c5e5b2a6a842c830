"""The root of kiln's exception tree.

Every error kiln raises on purpose derives from :class:`KilnError` and carries the text a user
sees plus an optional hint. Only ``kiln/`` turns them into exit codes.

::

    KilnError                       exit 1 unless a subclass says otherwise
    ├── ManifestError               a document people wrote is wrong (every problem, at once)
    ├── DocumentError               a document we received (OCI manifest, config, index) is malformed
    ├── VerificationError           exit 3: bad or malicious input refused (digest, signature, policy)
    │   └── ParseError              untrusted bytes refused by the bounded reader (reason ``parse``;
    │                               also a DocumentError, so callers of either keep catching it)
    ├── UnavailableError            a tool, the network or the filesystem failed (not the input's fault)
    ├── builder.BuildError          building failed (missing input, ELF closure, layout)
    ├── signing.SigningError        keys, passphrases, signatures (VerificationError for refusals)
    ├── publisher.PublishError      registry and publishing semantics
    └── agent.AgentError            the host agent

``ManifestError`` holds a tuple of :class:`Problem`; its text is one line per problem, in the form
``FILE:LINE:COL: dotted.path: message (hint)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.vocabulary import Reason

__all__ = [
    "KilnError",
    "Problem",
    "ManifestError",
    "DocumentError",
    "VerificationError",
    "UnavailableError",
    "ParseError",
]


class KilnError(Exception):
    """Base of every error kiln raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong in a document, located as precisely as the source allows."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ManifestError(KilnError):
    """A document a person wrote is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: tuple[Problem, ...] | list[Problem]) -> None:
        probs = tuple(problems)
        if not probs:
            raise ValueError("ManifestError needs at least one problem")
        self.problems = probs
        super().__init__("\n".join(str(p) for p in probs))

    def __str__(self) -> str:
        return self.message


class DocumentError(KilnError):
    """A machine-written document (OCI manifest, index, config, layout) is malformed."""


class VerificationError(KilnError):
    """Input was refused: a digest, signature, identity or policy check failed.

    ``reason`` is a :class:`~manifests.vocabulary.Reason` (``digest``, ``signature``, ``identity``,
    ``threshold``, ``policy``, ``expired``, ``rollback``, ``unpack``...); a string outside that
    vocabulary is a programming error (``ValueError``).
    """

    exit_code = 3

    def __init__(self, message: str, *, reason: Reason, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = Reason(reason)


class UnavailableError(KilnError):
    """Something outside the input failed: a tool, the network, the filesystem."""


class ParseError(DocumentError, VerificationError):
    """Untrusted bytes are not the document they should be: too large, too deep, a number too long
    or out of range, not JSON, or not the expected top-level type (:mod:`manifests.bounded`).

    It is both a :class:`DocumentError` (a malformed received document) and a
    :class:`VerificationError` with ``reason="parse"`` (bad input refused, exit 3), so code that
    catches either keeps working and the agent records the refusal with its reason.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        VerificationError.__init__(self, message, reason=Reason.PARSE, hint=hint)
