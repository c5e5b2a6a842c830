"""Public keys, key ids and signature checks.

kiln signs with ECDSA P-256 (cosign's default; signatures are ASN.1 DER over SHA-256 of the
message) or Ed25519 (signatures are the raw 64 bytes over the message itself).

A key id is the lowercase hex SHA-256 of the key's DER-encoded SubjectPublicKeyInfo: the same bytes
that are base64-armoured in the ``.pub`` file, so ``openssl pkey -pubin -outform DER | sha256sum``
reproduces it. Thresholds count distinct key ids, so one key cannot be counted twice.

Verification never returns a bool: :meth:`PublicKey.verify` returns ``None`` or raises
:class:`~manifests.errors.VerificationError`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from manifests.errors import VerificationError
from manifests.vocabulary import Reason
from signing.errors import KeyFileError

__all__ = [
    "KeyAlgorithm",
    "PrivateKey",
    "PublicKey",
    "generate_private_key",
    "public_key_of",
    "MAX_PUBLIC_KEY_BYTES",
]

MAX_PUBLIC_KEY_BYTES = 16 * 1024

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyAlgorithm(enum.StrEnum):
    """The signature algorithms kiln signs and verifies with."""

    ECDSA_P256 = "ecdsa-p256"
    ED25519 = "ed25519"

    @property
    def sslib_scheme(self) -> str:
        """The securesystemslib scheme name for this algorithm."""
        return {KeyAlgorithm.ECDSA_P256: "ecdsa-sha2-nistp256", KeyAlgorithm.ED25519: "ed25519"}[self]

    @property
    def sslib_keytype(self) -> str:
        return {KeyAlgorithm.ECDSA_P256: "ecdsa", KeyAlgorithm.ED25519: "ed25519"}[self]


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__


def _algorithm_of(key: object) -> KeyAlgorithm:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256
    if isinstance(key, ed25519.Ed25519PublicKey):
        return KeyAlgorithm.ED25519
    raise VerificationError(
        f"unsupported public key type {_describe(key)}",
        reason=Reason.KEY,
        hint="kiln trusts ECDSA P-256 and Ed25519 keys only",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKey:
    """A trusted public key: its algorithm and DER SubjectPublicKeyInfo bytes."""

    algorithm: KeyAlgorithm
    der: bytes

    @property
    def key_id(self) -> str:
        """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo."""
        return hashlib.sha256(self.der).hexdigest()

    @classmethod
    def from_pem(
        cls, data: bytes, *, expect: KeyAlgorithm | None = None, what: str = "public key"
    ) -> PublicKey:
        """Parse a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo).

        Raises :class:`KeyFileError` for bytes that are not a public key, and
        :class:`VerificationError` (reason ``key``) for a key of the wrong or an unsupported type.
        """
        if len(data) > MAX_PUBLIC_KEY_BYTES:
            raise KeyFileError(f"{what}: {len(data)} bytes exceeds the {MAX_PUBLIC_KEY_BYTES}-byte cap")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(
                f"{what}: not a PEM public key", hint="expected -----BEGIN PUBLIC KEY-----"
            ) from exc
        return cls._from_crypto(key, expect=expect, what=what)

    @classmethod
    def from_der(
        cls, data: bytes, *, expect: KeyAlgorithm | None = None, what: str = "public key"
    ) -> PublicKey:
        if len(data) > MAX_PUBLIC_KEY_BYTES:
            raise KeyFileError(f"{what}: {len(data)} bytes exceeds the {MAX_PUBLIC_KEY_BYTES}-byte cap")
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{what}: not a DER SubjectPublicKeyInfo") from exc
        return cls._from_crypto(key, expect=expect, what=what)

    @classmethod
    def from_crypto(cls, key: object, *, expect: KeyAlgorithm | None = None) -> PublicKey:
        """Wrap a ``cryptography`` public key object."""
        return cls._from_crypto(key, expect=expect, what="public key")

    @classmethod
    def _from_crypto(cls, key: object, *, expect: KeyAlgorithm | None, what: str) -> PublicKey:
        try:
            algorithm = _algorithm_of(key)
        except VerificationError as exc:
            raise VerificationError(f"{what}: {exc.message}", reason=Reason.KEY, hint=exc.hint) from None
        if expect is not None and algorithm != expect:
            raise VerificationError(
                f"{what}: is a {algorithm} key, but {expect} is required", reason=Reason.KEY
            )
        assert isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)  # noqa: S101 - narrowed above
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(algorithm=algorithm, der=der)

    def sslib_key(self) -> Any:
        """This key as securesystemslib's ``SSlibKey``, with the key id securesystemslib computes
        for it (sha256 over its canonical keytype/scheme/keyval): its ``Envelope.verify`` and its
        policy tools find kiln's DSSE signatures under that id."""
        from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

        return SSlibKey.from_crypto(self._load(), scheme=self.algorithm.sslib_scheme)

    @property
    def dsse_key_id(self) -> str:
        """The ``keyid`` kiln writes into DSSE signatures: securesystemslib's id for this key.

        Only a hint for verifiers (kiln tries every signature against every trusted key);
        thresholds still count :attr:`key_id`, one per distinct key.
        """
        return str(self.sslib_key().keyid)

    def to_pem(self) -> bytes:
        return self._load().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _load(self) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
        key = serialization.load_der_public_key(self.der)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise VerificationError("public key changed type", reason=Reason.KEY)  # pragma: no cover
        return key

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check ``signature`` over ``data``; ``None`` or :class:`VerificationError` (``signature``).

        ECDSA signatures must be strict ASN.1 DER (a raw ``r||s`` or a BER variant is refused);
        the message is hashed with SHA-256. Ed25519 signs the message itself.
        """
        key = self._load()
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                _require_der(signature)
                key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                if len(signature) != 64:
                    raise VerificationError(
                        f"Ed25519 signature is {len(signature)} bytes, expected 64", reason=Reason.SIGNATURE
                    )
                key.verify(signature, data)
        except InvalidSignature:
            raise VerificationError(
                f"signature does not verify with key {self.key_id[:16]}", reason=Reason.SIGNATURE
            ) from None


def _require_der(signature: bytes) -> None:
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        raise VerificationError(
            "ECDSA signature is not ASN.1 DER",
            reason=Reason.SIGNATURE,
            hint="cosign-format signatures are DER SEQUENCE{r, s}, not raw r||s",
        ) from None
    if encode_dss_signature(r, s) != signature:
        raise VerificationError("ECDSA signature is not strict DER", reason=Reason.SIGNATURE)


def generate_private_key(algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256) -> PrivateKey:
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_key_of(key: PrivateKey) -> PublicKey:
    return PublicKey.from_crypto(key.public_key())
