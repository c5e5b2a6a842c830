"""cosign's encrypted private key files.

The file is PEM with the label ``ENCRYPTED COSIGN PRIVATE KEY`` (older containers/image only
accept this label; ``ENCRYPTED SIGSTORE PRIVATE KEY`` is read too). The PEM body is base64 of a
JSON object::

    {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": B64},
     "cipher": {"name": "nacl/secretbox", "nonce": B64},
     "ciphertext": B64}

The secretbox key is ``scrypt(passphrase, salt, N, r=8, p=1, dklen=32)``; the plaintext is the
private key as PKCS#8 DER. kiln writes N = 2^15 and reads N in {2^15, 2^16, 2^17}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from manifests.errors import DocumentError
from manifests.oci import parse_json_object
from signing.errors import KeyFileError, PassphraseError
from signing.keys import PrivateKey

__all__ = [
    "COSIGN_LABEL",
    "SIGSTORE_LABEL",
    "SCRYPT_N",
    "ACCEPTED_N",
    "MAX_KEY_FILE_BYTES",
    "encrypt_private_key",
    "decrypt_private_key",
    "pem_armor",
    "pem_unarmor",
]

COSIGN_LABEL = "ENCRYPTED COSIGN PRIVATE KEY"
SIGSTORE_LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"
SCRYPT_N = 1 << 15
ACCEPTED_N = frozenset({1 << 15, 1 << 16, 1 << 17})
SCRYPT_R, SCRYPT_P = 8, 1
MAX_KEY_FILE_BYTES = 64 * 1024
_SALT_BYTES = 32
# scrypt needs 128 * r * N bytes; allow the largest accepted N with headroom.
_SCRYPT_MAXMEM = 2 * 128 * SCRYPT_R * max(ACCEPTED_N)


def pem_armor(label: str, body: bytes) -> bytes:
    """PEM-encode ``body`` with 64-column base64 lines."""
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    text = f"-----BEGIN {label}-----\n" + "".join(f"{x}\n" for x in lines) + f"-----END {label}-----\n"
    return text.encode("ascii")


def pem_unarmor(data: bytes, *, what: str) -> tuple[str, bytes]:
    """Return (label, body) of the single PEM block in ``data``; strict base64."""
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what}: {len(data)} bytes exceeds the {MAX_KEY_FILE_BYTES}-byte cap")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what}: not a PEM file (non-ASCII bytes)") from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or not lines[0].startswith("-----BEGIN ") or not lines[0].endswith("-----"):
        raise KeyFileError(f"{what}: not a PEM file", hint="expected a -----BEGIN ...----- line")
    label = lines[0][len("-----BEGIN ") : -len("-----")]
    if lines[-1] != f"-----END {label}-----":
        raise KeyFileError(f"{what}: PEM block {label!r} is not terminated (file truncated?)")
    try:
        body = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: PEM body is not valid base64 (file damaged?)") from None
    return label, body


def _scrypt(passphrase: bytes, salt: bytes, n: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32)


def encrypt_private_key(
    key: PrivateKey,
    passphrase: bytes,
    *,
    n: int = SCRYPT_N,
    label: str = COSIGN_LABEL,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt ``key`` into cosign's PEM key-file format. ``salt``/``nonce`` only for tests."""
    if n not in ACCEPTED_N:
        raise KeyFileError(f"scrypt N={n} is not one of {sorted(ACCEPTED_N)}")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE) if nonce is None else nonce
    plaintext = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    box = nacl.secret.SecretBox(_scrypt(passphrase, salt, n))
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": base64.b64encode(salt).decode("ascii"),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode("ascii")},
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
    }
    # Field order as cosign writes it (kdf, cipher, ciphertext); compact like Go's encoding/json.
    body = json.dumps(doc, separators=(",", ":")).encode("ascii")
    return pem_armor(label, body)


def _field(d: dict[str, Any], key: str, typ: type, what: str) -> Any:
    value = d.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise KeyFileError(f"{what}: {key!r} missing or not a {typ.__name__}")
    return value


def _b64(d: dict[str, Any], key: str, what: str) -> bytes:
    text = _field(d, key, str, what)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: {key!r} is not valid base64") from None


def decrypt_private_key(data: bytes, passphrase: bytes, *, what: str = "key file") -> PrivateKey:
    """Decrypt a cosign key file. :class:`KeyFileError` for a damaged file, :class:`PassphraseError`
    when the passphrase does not open it."""
    label, body = pem_unarmor(data, what=what)
    if label not in (COSIGN_LABEL, SIGSTORE_LABEL):
        raise KeyFileError(
            f"{what}: PEM label {label!r} is not an encrypted cosign key",
            hint=f"expected {COSIGN_LABEL!r} or {SIGSTORE_LABEL!r}",
        )
    try:
        doc = parse_json_object(body, what=what, limit=MAX_KEY_FILE_BYTES)
    except DocumentError as exc:
        raise KeyFileError(exc.message) from None
    kdf = _field(doc, "kdf", dict, what)
    cipher = _field(doc, "cipher", dict, what)
    if _field(kdf, "name", str, f"{what} kdf") != "scrypt":
        raise KeyFileError(f"{what}: unsupported kdf {kdf.get('name')!r}", hint="cosign key files use scrypt")
    params = _field(kdf, "params", dict, f"{what} kdf")
    n = _field(params, "N", int, f"{what} kdf params")
    r = _field(params, "r", int, f"{what} kdf params")
    p = _field(params, "p", int, f"{what} kdf params")
    if n not in ACCEPTED_N or r != SCRYPT_R or p != SCRYPT_P:
        raise KeyFileError(
            f"{what}: scrypt parameters N={n} r={r} p={p} are not accepted",
            hint="kiln reads N in {32768, 65536, 131072} with r=8, p=1",
        )
    salt = _b64(kdf, "salt", f"{what} kdf")
    if not 16 <= len(salt) <= 64:
        raise KeyFileError(f"{what}: scrypt salt is {len(salt)} bytes")
    if _field(cipher, "name", str, f"{what} cipher") != "nacl/secretbox":
        raise KeyFileError(f"{what}: unsupported cipher {cipher.get('name')!r}")
    nonce = _b64(cipher, "nonce", f"{what} cipher")
    if len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
        raise KeyFileError(f"{what}: secretbox nonce is {len(nonce)} bytes, expected 24")
    ciphertext = _b64(doc, "ciphertext", what)
    box = nacl.secret.SecretBox(_scrypt(passphrase, salt, n))
    try:
        plaintext = box.decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError:
        raise PassphraseError(
            f"{what}: cannot decrypt: wrong passphrase, or the key file was modified",
            hint="check KILN_PASSWORD / COSIGN_PASSWORD or --passphrase-file",
        ) from None
    try:
        key = serialization.load_der_private_key(plaintext, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{what}: decrypted content is not a PKCS#8 private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyFileError(
        f"{what}: private key type {type(key).__name__} is not supported", hint="use ecdsa-p256 or ed25519"
    )
