"""Keys, cosign key files (with an independent decryptor and a hand-built known answer), signers."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from manifests.errors import VerificationError
from signing.errors import KeyFileError, PassphraseError, SignerError
from signing.keyfile import (
    COSIGN_LABEL,
    SIGSTORE_LABEL,
    decrypt_private_key,
    encrypt_private_key,
)
from signing.keys import KeyAlgorithm, PublicKey, generate_private_key, public_key_of
from signing.signer import LocalSigner, Signer, SslibSigner, load_signer

PASS = b"correct horse"


def independent_decrypt(pem: bytes, passphrase: bytes) -> bytes:
    """A second reading of the format, written from the description only: PEM -> JSON -> scrypt ->
    secretbox -> PKCS#8 DER."""
    lines = pem.decode().strip().splitlines()
    assert lines[0] == f"-----BEGIN {COSIGN_LABEL}-----"
    assert lines[-1] == f"-----END {COSIGN_LABEL}-----"
    doc = json.loads(base64.b64decode("".join(lines[1:-1])))
    assert list(doc) == ["kdf", "cipher", "ciphertext"]
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert doc["cipher"]["name"] == "nacl/secretbox"
    key = hashlib.scrypt(
        passphrase, salt=base64.b64decode(doc["kdf"]["salt"]), n=32768, r=8, p=1, maxmem=64 << 20, dklen=32
    )
    box = nacl.secret.SecretBox(key)
    return box.decrypt(base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["cipher"]["nonce"]))


def hand_built_key_file(
    der: bytes, passphrase: bytes, *, n: int, label: str, salt: bytes, nonce: bytes
) -> bytes:
    key = hashlib.scrypt(passphrase, salt=salt, n=n, r=8, p=1, maxmem=300 << 20, dklen=32)
    ct = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
    body = (  # %-format keeps the JSON braces readable
        '{"kdf":{"name":"scrypt","params":{"N":%d,"r":8,"p":1},"salt":"%s"},'  # noqa: UP031
        '"cipher":{"name":"nacl/secretbox","nonce":"%s"},"ciphertext":"%s"}'
        % (
            n,
            base64.b64encode(salt).decode(),
            base64.b64encode(nonce).decode(),
            base64.b64encode(ct).decode(),
        )
    ).encode()
    b64 = base64.b64encode(body).decode()
    return (
        f"-----BEGIN {label}-----\n"
        + "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
        + f"-----END {label}-----\n"
    ).encode()


def pkcs8(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_generated_key_decrypts_with_an_independent_implementation(algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    pem = encrypt_private_key(key, PASS)
    assert independent_decrypt(pem, PASS) == pkcs8(key)
    assert pkcs8(decrypt_private_key(pem, PASS)) == pkcs8(key)


def test_known_answer_key_file_written_byte_for_byte() -> None:
    key = ec.derive_private_key(12345, ec.SECP256R1())
    salt, nonce = bytes(range(32)), bytes(range(24))
    expected = hand_built_key_file(pkcs8(key), PASS, n=32768, label=COSIGN_LABEL, salt=salt, nonce=nonce)
    assert encrypt_private_key(key, PASS, salt=salt, nonce=nonce) == expected


@pytest.mark.parametrize("n", [1 << 15, 1 << 16, 1 << 17])
@pytest.mark.parametrize("label", [COSIGN_LABEL, SIGSTORE_LABEL])
def test_reads_hand_built_key_files(n: int, label: str) -> None:
    key = ec.derive_private_key(777, ec.SECP256R1())
    pem = hand_built_key_file(pkcs8(key), b"", n=n, label=label, salt=b"s" * 32, nonce=b"n" * 24)
    got = decrypt_private_key(pem, b"")
    assert pkcs8(got) == pkcs8(key)


def test_wrong_passphrase_is_a_clear_error() -> None:
    pem = encrypt_private_key(generate_private_key(), PASS)
    with pytest.raises(PassphraseError, match="wrong passphrase, or the key file was modified"):
        decrypt_private_key(pem, b"wrong")


def _field_tamper(field: str, value: object) -> bytes:
    key = ec.derive_private_key(5, ec.SECP256R1())
    pem = encrypt_private_key(key, PASS, salt=b"x" * 32, nonce=b"y" * 24)
    lines = pem.decode().splitlines()
    doc = json.loads(base64.b64decode("".join(lines[1:-1])))
    target = doc
    *parents, leaf = field.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = value
    body = base64.b64encode(json.dumps(doc).encode()).decode()
    return f"{lines[0]}\n{body}\n{lines[-1]}\n".encode()


def _ciphertext_flipped() -> bytes:
    key = ec.derive_private_key(5, ec.SECP256R1())
    pem = encrypt_private_key(key, PASS, salt=b"x" * 32, nonce=b"y" * 24)
    lines = pem.decode().splitlines()
    doc = json.loads(base64.b64decode("".join(lines[1:-1])))
    ct = bytearray(base64.b64decode(doc["ciphertext"]))
    ct[10] ^= 1
    doc["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    return f"{lines[0]}\n{base64.b64encode(json.dumps(doc).encode()).decode()}\n{lines[-1]}\n".encode()


TAMPERED = [
    (
        "truncated",
        lambda: encrypt_private_key(ec.derive_private_key(5, ec.SECP256R1()), PASS)[:-30],
        KeyFileError,
        "not terminated",
    ),
    ("not pem", lambda: b"hello", KeyFileError, "not a PEM file"),
    (
        "wrong label",
        lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        KeyFileError,
        "is not an encrypted cosign key",
    ),
    (
        "bad base64",
        f"-----BEGIN {COSIGN_LABEL}-----\n!!!!\n-----END {COSIGN_LABEL}-----\n".encode,
        KeyFileError,
        "not valid base64",
    ),
    (
        "body not json",
        f"-----BEGIN {COSIGN_LABEL}-----\naGVsbG8=\n-----END {COSIGN_LABEL}-----\n".encode,
        KeyFileError,
        "not valid JSON",
    ),
    ("weak N", lambda: _field_tamper("kdf.params.N", 1024), KeyFileError, "N=1024 r=8 p=1 are not accepted"),
    ("other kdf", lambda: _field_tamper("kdf.name", "pbkdf2"), KeyFileError, "unsupported kdf 'pbkdf2'"),
    ("other cipher", lambda: _field_tamper("cipher.name", "aes"), KeyFileError, "unsupported cipher 'aes'"),
    ("short nonce", lambda: _field_tamper("cipher.nonce", "AAAA"), KeyFileError, "nonce is 3 bytes"),
    ("salt not b64", lambda: _field_tamper("kdf.salt", "***"), KeyFileError, "'salt' is not valid base64"),
    (
        "ciphertext flipped",
        _ciphertext_flipped,
        PassphraseError,
        "wrong passphrase, or the key file was modified",
    ),
    ("huge", lambda: b"A" * 100_000, KeyFileError, "exceeds the 65536-byte cap"),
]


@pytest.mark.parametrize(("name", "make", "error", "message"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_key_files_are_refused(name: str, make, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        decrypt_private_key(make(), PASS)


def test_rsa_private_key_in_a_cosign_file_is_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = hand_built_key_file(
        pkcs8(rsa_key), PASS, n=32768, label=COSIGN_LABEL, salt=b"s" * 32, nonce=b"n" * 24
    )  # type: ignore[arg-type]
    with pytest.raises(KeyFileError, match="RSAPrivateKey is not supported"):
        decrypt_private_key(pem, PASS)


def test_key_id_is_sha256_of_spki_der() -> None:
    key = ec.derive_private_key(99, ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = public_key_of(key)
    assert pub.key_id == hashlib.sha256(der).hexdigest()
    assert PublicKey.from_pem(pub.to_pem()) == pub
    assert PublicKey.from_der(der) == pub


def test_rsa_public_key_is_refused_with_reason_key() -> None:
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = rsa_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(VerificationError, match="unsupported public key type RSA-2048") as info:
        PublicKey.from_pem(pem, expect=KeyAlgorithm.ECDSA_P256)
    assert info.value.reason == "key"


def test_wrong_algorithm_is_refused_with_reason_key() -> None:
    pub = public_key_of(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError, match="is a ed25519 key, but ecdsa-p256 is required") as info:
        PublicKey.from_pem(pub.to_pem(), expect=KeyAlgorithm.ECDSA_P256)
    assert info.value.reason == "key"


def test_not_a_public_key() -> None:
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# -- signers ---------------------------------------------------------------------------------------


def test_file_signer(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "k.key"
    path.write_bytes(encrypt_private_key(key, PASS))
    asked: list[str] = []

    def passphrase() -> bytes:
        asked.append("x")
        return PASS

    signer = load_signer(str(path), passphrase=passphrase, environ={})
    assert isinstance(signer, Signer)
    assert asked == ["x"]
    sig = signer.sign(b"data")
    public_key_of(key).verify(sig, b"data")


def test_environment_held_key() -> None:
    key = generate_private_key(KeyAlgorithm.ED25519)
    env = {"MY_KEY": encrypt_private_key(key, PASS).decode()}
    signer = load_signer("env://MY_KEY", passphrase=lambda: PASS, environ=env)
    assert signer.public_key == public_key_of(key)
    signer.public_key.verify(signer.sign(b"m"), b"m")


def test_environment_key_missing() -> None:
    with pytest.raises(SignerError, match="environment variable 'NOPE' is not set"):
        load_signer("env://NOPE", passphrase=lambda: PASS, environ={})


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="No such file"):
        load_signer(str(tmp_path / "absent.key"), passphrase=lambda: PASS, environ={})


def test_securesystemslib_uri_signer(tmp_path: Path) -> None:
    """A signer URI securesystemslib resolves (file2: = a plain PKCS#8 PEM) goes through the adapter."""
    key = ec.derive_private_key(4242, ec.SECP256R1())
    path = tmp_path / "plain.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = public_key_of(key)
    signer = load_signer(
        f"file2:{path}", passphrase=lambda: pytest.fail("no passphrase needed"), environ={}, public_key=pub
    )
    assert isinstance(signer, SslibSigner)
    pub.verify(signer.sign(b"payload"), b"payload")


def test_securesystemslib_uri_needs_public_key() -> None:
    with pytest.raises(SignerError, match="needs its public key"):
        load_signer("awskms:alias/x", passphrase=lambda: b"", environ={})


def test_securesystemslib_load_failure_is_translated(tmp_path: Path) -> None:
    pub = public_key_of(ec.derive_private_key(1, ec.SECP256R1()))
    with pytest.raises(SignerError, match="cannot load signer"):
        load_signer(f"file2:{tmp_path / 'absent.pem'}", passphrase=lambda: b"", environ={}, public_key=pub)


def test_given_public_key_must_match(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(encrypt_private_key(generate_private_key(), PASS))
    other = public_key_of(generate_private_key())
    with pytest.raises(SignerError, match="does not match"):
        load_signer(str(path), passphrase=lambda: PASS, environ={}, public_key=other)


def test_local_signer_ecdsa_is_der_and_ed25519_is_raw() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    ecdsa = LocalSigner(generate_private_key())
    decode_dss_signature(ecdsa.sign(b"x"))
    assert len(LocalSigner(generate_private_key(KeyAlgorithm.ED25519)).sign(b"x")) == 64
