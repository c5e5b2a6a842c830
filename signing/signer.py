"""The one signer interface, and loading a signer from a key reference.

A key reference is a URI, so production keys can stay in a KMS or an HSM:

- ``PATH`` (no scheme): a cosign encrypted key file;
- ``env://NAME``: the cosign encrypted key file's content held in environment variable ``NAME``
  (as cosign's ``env://``);
- any scheme securesystemslib registers (``awskms:``, ``gcpkms:``, ``azurekms:``, ``hsm:``,
  ``file2:``...): a securesystemslib signer. Those need the public key given separately, as
  securesystemslib does.

Passphrases are asked for through a callback only when a key file needs one; the caller decides
where they come from (environment, a file, a prompt), never a command-line argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from signing.errors import KeyFileError, SignerError
from signing.keyfile import MAX_KEY_FILE_BYTES, decrypt_private_key
from signing.keys import PrivateKey, PublicKey, public_key_of

__all__ = ["Signer", "LocalSigner", "SslibSigner", "load_signer", "PassphraseCallback", "read_capped"]

PassphraseCallback = Callable[[], bytes]


@runtime_checkable
class Signer(Protocol):
    """Something that signs bytes with one key.

    ``sign`` returns the raw signature: ASN.1 DER over SHA-256(data) for ECDSA P-256, the 64-byte
    Ed25519 signature over ``data`` for Ed25519.
    """

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LocalSigner:
    """A signer holding a private key in memory."""

    private_key: PrivateKey

    @property
    def public_key(self) -> PublicKey:
        return public_key_of(self.private_key)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.private_key.sign(data)


class SslibSigner:
    """Adapter from a securesystemslib signer (KMS, HSM, file2...) to :class:`Signer`."""

    def __init__(self, inner: object, public_key: PublicKey) -> None:
        self._inner = inner
        self._public_key = public_key

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        try:
            sig = self._inner.sign(data)  # type: ignore[attr-defined]
            return bytes.fromhex(sig.signature)
        except Exception as exc:  # foreign signer errors are translated once, here
            raise SignerError(f"signer failed: {type(exc).__name__}: {exc}") from exc


def read_capped(path: Path, *, limit: int = MAX_KEY_FILE_BYTES, what: str = "key file") -> bytes:
    """Read a small file, refusing anything larger than ``limit``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise KeyFileError(f"{what} {str(path)!r}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise KeyFileError(f"{what} {str(path)!r}: larger than {limit} bytes")
    return data


def _sslib_schemes() -> Mapping[str, type]:
    from securesystemslib.signer import SIGNER_FOR_URI_SCHEME  # type: ignore[attr-defined]

    return SIGNER_FOR_URI_SCHEME


def load_signer(
    ref: str,
    *,
    passphrase: PassphraseCallback,
    environ: Mapping[str, str],
    public_key: PublicKey | None = None,
) -> Signer:
    """Load the signer a key reference names (see the module docstring)."""
    if ref.startswith("env://"):
        name = ref[len("env://") :]
        if not name or name not in environ:
            raise SignerError(f"key reference {ref!r}: environment variable {name!r} is not set")
        key = decrypt_private_key(environ[name].encode("utf-8"), passphrase(), what=f"key in ${name}")
        return _checked(LocalSigner(key), public_key, ref)
    scheme, sep, _ = ref.partition(":")
    if sep and scheme in _sslib_schemes():
        return _load_sslib(ref, public_key)
    data = read_capped(Path(ref))
    key = decrypt_private_key(data, passphrase(), what=f"key file {ref!r}")
    return _checked(LocalSigner(key), public_key, ref)


def _checked(signer: Signer, expected: PublicKey | None, ref: str) -> Signer:
    if expected is not None and signer.public_key != expected:
        raise SignerError(f"key {ref!r} does not match the public key given for it")
    return signer


def _load_sslib(ref: str, public_key: PublicKey | None) -> Signer:
    if public_key is None:
        raise SignerError(
            f"key reference {ref!r} needs its public key", hint="pass the matching .pub (--public-key)"
        )
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import Signer as SslibBase  # type: ignore[attr-defined]
    from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

    crypto_pub = serialization.load_der_public_key(public_key.der)
    try:
        sslib_key = SSlibKey.from_crypto(
            crypto_pub, keyid=public_key.key_id, scheme=public_key.algorithm.sslib_scheme
        )
        inner = SslibBase.from_priv_key_uri(ref, sslib_key)
    except Exception as exc:  # foreign signer errors are translated once, here
        raise SignerError(f"cannot load signer {ref!r}: {type(exc).__name__}: {exc}") from exc
    return SslibSigner(inner, public_key)
