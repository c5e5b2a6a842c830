"""The closed vocabularies every package shares: why input was refused, and what a reconcile did.

::

    Reason     VerificationError.reason: the check that refused (digest, signature, parse, ...).
               Lower layers name the finer check (size, key, payload, manifest, attestation);
               ``recorded`` folds those into the agent's ten recorded reasons, the strings its
               events, journal, metrics and ``--json`` output carry.
    Outcome    ReconcileResult.outcome: current, rolled-out, failed, skipped, refused,
               unavailable, waiting; ``exit_code`` is ``kiln agent reconcile --once``'s.

Both are :class:`enum.StrEnum`: a member is its string, so JSON, logs and comparisons with the
old strings are unchanged. They live here because :class:`~manifests.errors.VerificationError`
does and every package may import ``manifests`` (``docs/adr/0027-shared-vocabularies.md``).
"""

from __future__ import annotations

import enum

__all__ = ["Reason", "Outcome"]


class Reason(enum.StrEnum):
    """Why input was refused (``VerificationError.reason``)."""

    SIGNATURE = "signature"  # no valid signature, or a signature does not verify
    THRESHOLD = "threshold"  # fewer valid release signatures than the trust root asks
    EXPIRED = "expired"  # a release or trust root past its ``expires``
    ROLLBACK = "rollback"  # a version lower than one already accepted
    DIGEST = "digest"  # bytes that do not hash to the digest that names them
    IDENTITY = "identity"  # signed, but for another repository or identity
    POLICY = "policy"  # the trust policy (or a release rule) refuses it
    UNPACK = "unpack"  # a layer the safe unpacker refuses (traversal, devices, setuid...)
    PARSE = "parse"  # not the document it should be (manifests.bounded)
    INTERNAL = "internal"  # the agent's own fault: an unexpected exception in a step
    # Finer reasons of lower layers, recorded under a coarser one (:attr:`recorded`).
    SIZE = "size"  # more bytes than the descriptor or a cap allows
    MANIFEST = "manifest"  # a malformed or unsupported manifest
    PAYLOAD = "payload"  # a signature payload that does not say what it must
    KEY = "key"  # an unusable or unknown key
    ATTESTATION = "attestation"  # a required attestation is missing or unreadable

    @property
    def recorded(self) -> Reason:
        """The reason the agent records (events, journal, metrics, ``--json``)."""
        return _RECORDED.get(self, self)

    @property
    def retryable(self) -> bool:
        """Whether the same input may pass later. Only an internal fault: a refused input is
        refused again, so the agent records it once and waits for other input, while it retries
        after an internal fault, backing off."""
        return self is Reason.INTERNAL


_RECORDED: dict[Reason, Reason] = {
    Reason.SIZE: Reason.DIGEST,
    Reason.MANIFEST: Reason.PARSE,
    Reason.PAYLOAD: Reason.SIGNATURE,
    Reason.KEY: Reason.SIGNATURE,
    Reason.ATTESTATION: Reason.POLICY,
}


class Outcome(enum.StrEnum):
    """What one reconcile did (``ReconcileResult.outcome``)."""

    CURRENT = "current"  # the release was already running
    ROLLED_OUT = "rolled-out"  # a new release now runs
    FAILED = "failed"  # its rollout failed (health), and was rolled back
    SKIPPED = "skipped"  # it failed max_attempts times before: not tried again
    REFUSED = "refused"  # verification refused it (``reason`` says why)
    UNAVAILABLE = "unavailable"  # the source or the images could not be reached
    WAITING = "waiting"  # the fleet has no slot or open wave for this host yet

    @property
    def exit_code(self) -> int:
        """``kiln agent reconcile --once``'s exit code: 0 running what the release pins, 1 not
        (yet), 3 refused (as every verification refusal), 4 unavailable."""
        return _EXIT[self]


_EXIT: dict[Outcome, int] = {
    Outcome.CURRENT: 0,
    Outcome.ROLLED_OUT: 0,
    Outcome.FAILED: 1,
    Outcome.SKIPPED: 1,
    Outcome.WAITING: 1,
    Outcome.REFUSED: 3,
    Outcome.UNAVAILABLE: 4,
}
