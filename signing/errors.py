"""Errors raised by the signing package.

::

    KilnError
    ├── SigningError                  keys, passphrases, signers (exit 1)
    │   ├── KeyFileError              a key file is malformed, truncated or of an unknown kind
    │   ├── PassphraseError           no passphrase, or the passphrase does not open the key file
    │   └── SignerError               a signer (local, KMS, HSM) could not be loaded or failed to sign
    └── VerificationError             (manifests.errors) a signature, payload, identity or policy refused

Refusals of untrusted input are always :class:`manifests.errors.VerificationError` with a short
``reason``: ``signature``, ``digest``, ``identity``, ``payload``, ``threshold``, ``policy``, ``key``,
``manifest``, ``attestation``, ``expired``.
"""

from __future__ import annotations

from manifests.errors import KilnError

__all__ = ["SigningError", "KeyFileError", "PassphraseError", "SignerError"]


class SigningError(KilnError):
    """Keys, passphrases or signers failed (not a refusal of input: that is VerificationError)."""


class KeyFileError(SigningError):
    """A key file is malformed, truncated or of a kind kiln does not read."""


class PassphraseError(SigningError):
    """No passphrase was available, or it does not decrypt the key file."""


class SignerError(SigningError):
    """A signer could not be loaded or failed to produce a signature."""
