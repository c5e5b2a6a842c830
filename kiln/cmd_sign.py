"""Verbs for keys, signatures and attestations: ``key generate``, ``sign``, ``verify``, ``attest``,
``verify-attestation``.

IMAGE is an OCI layout reference: ``oci:DIR``, ``oci:DIR:NAME`` (a tag, or the ref.name a build
writes: ``app:1.0.0``) or ``oci:DIR@sha256:HEX`` (a bare directory works too), or a registry
reference ``HOST[:PORT]/REPO:TAG`` / ``HOST/REPO@sha256:HEX``: signatures and attestations are
then read from and written to the registry's ``sha256-<hex>.sig`` and ``.att`` tags
(``--insecure`` allows plain http to a loopback registry).

Passphrases come from ``$KILN_PASSWORD`` (or ``$COSIGN_PASSWORD``), a ``--passphrase-file``, or a
prompt on a terminal; never from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.build import PROVENANCE_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE
from kiln.output import Output, UsageError
from manifests.atomic import atomic_write
from manifests.canonical import canonical_json, pretty_json
from manifests.digest import Digest
from manifests.errors import DocumentError, KilnError, VerificationError
from manifests.layout import OCILayout
from manifests.layoutref import parse_layout_reference, tag_of
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest, parse_json_object
from manifests.vocabulary import Reason
from signing.attestation import STATEMENT_V1, PredicateKind
from signing.cosign import attestation_tag, signature_tag
from signing.errors import PassphraseError
from signing.keyfile import encrypt_private_key
from signing.keys import MAX_PUBLIC_KEY_BYTES, KeyAlgorithm, PublicKey, generate_private_key, public_key_of
from signing.signer import PassphraseCallback, Signer, load_signer, read_capped
from signing.store import ArtifactStore, LayoutStore
from signing.verify import Identity

__all__ = ["register", "ImageRef", "parse_image_ref", "build_records"]

_PASSWORD_ENV = ("KILN_PASSWORD", "COSIGN_PASSWORD")
_MAX_ATTESTATION_BYTES = 64 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    key = sub.add_parser("key", help="manage signing keys")
    key_sub = key.add_subparsers(dest="key_verb", metavar="ACTION", required=True)
    p = key_sub.add_parser("generate", help="write PREFIX.key (cosign encrypted) and PREFIX.pub")
    p.add_argument("--out", default="kiln", metavar="PREFIX", help="output prefix (default: kiln)")
    p.add_argument(
        "--algorithm", choices=[a.value for a in KeyAlgorithm], default=KeyAlgorithm.ECDSA_P256.value
    )
    p.add_argument("--passphrase-file", type=Path, help="read the passphrase from this file")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(handler=cmd_key_generate)

    p = sub.add_parser("sign", help="sign an image in an OCI layout (cosign format)")
    _key_args(p)
    p.add_argument(
        "--identity",
        metavar="REPO",
        help="repository the signature is for (default: a registry IMAGE's name)",
    )
    p.add_argument(
        "-a", "--annotation", action="append", default=[], metavar="K=V", help="optional claim in the payload"
    )
    _image_arg(p)
    p.set_defaults(handler=cmd_sign)

    p = sub.add_parser("verify", help="verify an image's signatures (exit 3 when refused)")
    p.add_argument("--key", action="append", type=Path, default=[], metavar="PUB", help="trusted public key")
    p.add_argument("--threshold", type=int, default=1, help="distinct keys required (default 1)")
    p.add_argument(
        "--identity", metavar="REPO", help="expected repository (default for a registry IMAGE: its name)"
    )
    p.add_argument("--policy", type=Path, help="trust policy YAML (instead of --key)")
    _image_arg(p)
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("attest", help="sign the build's SBOM and provenance as DSSE attestations")
    _key_args(p)
    p.add_argument("--type", choices=[k.value for k in PredicateKind], action="append", dest="types")
    p.add_argument(
        "--build",
        metavar="DIR",
        help="for a registry IMAGE: the OCI layout kiln build wrote (its SBOM and provenance are signed)",
    )
    _image_arg(p)
    p.set_defaults(handler=cmd_attest)

    p = sub.add_parser("verify-attestation", help="verify an attestation and print its predicate")
    p.add_argument("--key", action="append", type=Path, required=True, metavar="PUB")
    p.add_argument("--type", choices=[k.value for k in PredicateKind], required=True)
    p.add_argument("--threshold", type=int, default=1)
    _image_arg(p)
    p.set_defaults(handler=cmd_verify_attestation)


def _image_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="oci:DIR[:TAG|@DIGEST] or HOST[:PORT]/REPO[:TAG|@DIGEST]")
    p.add_argument(
        "--insecure", action="store_true", help="plain http to a registry on loopback (never elsewhere)"
    )


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="KEY", help="key file, env://VAR, or a KMS/HSM signer URI")
    p.add_argument("--public-key", type=Path, metavar="PUB", help="public key (needed for KMS/HSM URIs)")
    p.add_argument("--passphrase-file", type=Path, help="read the key passphrase from this file")


# -- image references ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    directory: Path
    tag: str | None = None
    digest: Digest | None = None

    @property
    def selector(self) -> str | None:
        return str(self.digest) if self.digest is not None else self.tag


def parse_image_ref(text: str) -> ImageRef:
    """``oci:DIR``, ``oci:DIR:NAME``, ``oci:DIR@sha256:HEX``; a bare directory is ``oci:DIR``. NAME
    is a ref.name in the layout's index: a bare tag or a build's ``name:version``
    (:mod:`manifests.layoutref`)."""
    try:
        ref = parse_layout_reference(text)
    except DocumentError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None
    return ImageRef(directory=ref.directory, tag=ref.name, digest=ref.digest)


def _open(ref: ImageRef) -> tuple[LayoutStore, Descriptor]:
    store = LayoutStore.open(ref.directory)
    return store, store.layout.resolve(ref.selector)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedImage:
    """An image to sign or verify: where its signatures live, its root, and how it was named."""

    store: ArtifactStore
    root: Descriptor
    tag: str | None
    name: str
    registry_name: str | None = None
    layout: ImageRef | None = None


def _registry_reference(text: str) -> Any:
    """A registry :class:`~publisher.reference.Reference` when ``text`` names one, else ``None``."""
    if text.startswith("oci:") or Path(text).exists():
        return None
    from publisher.endpoint import parse_location
    from publisher.errors import InvalidReference

    try:
        return parse_location(text)
    except InvalidReference:
        return None


@contextlib.contextmanager
def open_image(text: str, *, insecure: bool = False) -> Iterator[OpenedImage]:
    """Open ``oci:DIR[:TAG]`` (or a bare directory) or ``HOST/REPO[:TAG|@DIGEST]``."""
    reference = _registry_reference(text)
    if reference is None:
        ref = parse_image_ref(text)
        store, root = _open(ref)
        # A build's full name (``app:1.0.0``) stands for the tag the image is published under.
        tag = tag_of(ref.tag) if ref.tag is not None else None
        yield OpenedImage(store=store, root=root, tag=tag, name=ref.directory.name, layout=ref)
        return
    from publisher.auth import resolve_credentials
    from publisher.client import RegistryClient
    from publisher.registrystore import RegistryArtifactStore

    with (
        RegistryClient(
            reference.api_host, insecure=insecure, credentials=resolve_credentials(reference.registry)
        ) as client,
        RegistryArtifactStore(client, reference.repository) as rstore,
    ):
        root = rstore.resolve(reference.ref)
        yield OpenedImage(
            store=rstore, root=root, tag=reference.tag, name=reference.name, registry_name=reference.name
        )


# -- passphrases and keys --------------------------------------------------------------------------


def _passphrase_source(
    file: Path | None, environ: Mapping[str, str], *, confirm: bool = False
) -> PassphraseCallback:
    def get() -> bytes:
        if file is not None:
            data = read_capped(file, limit=4096, what="passphrase file")
            return data.rstrip(b"\r\n")
        for name in _PASSWORD_ENV:
            if name in environ:
                return environ[name].encode("utf-8")
        if sys.stdin.isatty():
            first = getpass.getpass("Enter passphrase for the private key: ")
            if confirm and getpass.getpass("Enter it again: ") != first:
                raise PassphraseError("the passphrases do not match")
            return first.encode("utf-8")
        raise PassphraseError(
            "no passphrase for the private key",
            hint="set KILN_PASSWORD (or COSIGN_PASSWORD), or pass --passphrase-file",
        )

    return get


def _public_keys(paths: list[Path]) -> list[PublicKey]:
    return [
        PublicKey.from_pem(read_capped(p, limit=MAX_PUBLIC_KEY_BYTES, what="public key"), what=str(p))
        for p in paths
    ]


def _signer(args: argparse.Namespace) -> Signer:
    pub = _public_keys([args.public_key])[0] if args.public_key else None
    environ = dict(os.environ)
    return load_signer(
        args.key,
        passphrase=_passphrase_source(args.passphrase_file, environ),
        environ=environ,
        public_key=pub,
    )


# -- handlers --------------------------------------------------------------------------------------


def cmd_key_generate(args: argparse.Namespace, out: Output) -> int:
    if not args.out or args.out.endswith("/") or Path(args.out).is_dir():
        raise UsageError(
            f"--out {args.out!r} is a directory, not a prefix: the keys would be hidden files in it",
            hint=f"--out {args.out.rstrip('/') or '.'}/NAME writes NAME.key and NAME.pub there",
        )
    key_path, pub_path = Path(f"{args.out}.key"), Path(f"{args.out}.pub")
    for path in (key_path, pub_path):
        if path.exists() and not args.force:
            raise KilnError(f"{path} exists", hint="use --force to replace it")
    passphrase = _passphrase_source(args.passphrase_file, os.environ, confirm=True)()
    key = generate_private_key(KeyAlgorithm(args.algorithm))
    pub = public_key_of(key)
    atomic_write(key_path, encrypt_private_key(key, passphrase), mode=0o600)
    atomic_write(pub_path, pub.to_pem())
    out.result(
        f"Private key written to {key_path}\nPublic key written to {pub_path}\nKey id: {pub.key_id}",
        {
            "private_key": str(key_path),
            "public_key": str(pub_path),
            "key_id": pub.key_id,
            "algorithm": args.algorithm,
        },
    )
    return 0


def _optional(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UsageError(f"invalid annotation {pair!r}", hint="use KEY=VALUE")
        out[k] = v
    return out


def cmd_sign(args: argparse.Namespace, out: Output) -> int:
    from signing.image import sign_image

    with open_image(args.image, insecure=args.insecure) as image:
        identity = args.identity or image.registry_name
        if identity is None:
            raise UsageError("sign needs --identity REPO", hint="the repository the image is published as")
        signer = _signer(args)
        reference = f"{identity}:{image.tag}" if image.tag else identity
        signed = sign_image(
            image.store, image.root, signer, reference=reference, optional=_optional(args.annotation)
        )
    for d in signed:
        out.progress(f"signed {d} -> {signature_tag(d)}")
    out.result(
        f"Signed {len(signed)} manifest(s) as {reference} with key {signer.public_key.key_id}",
        {"identity": reference, "key_id": signer.public_key.key_id, "signed": [str(d) for d in signed]},
    )
    return 0


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    with open_image(args.image, insecure=args.insecure) as image:
        verified = _verify(args, image)
    root = image.root
    out.result(
        f"Verified {len(verified)} manifest(s): " + ", ".join(str(d) for d in verified),
        {"verified": [str(d) for d in verified], "image": str(root.digest)},
    )
    return 0


def _verify(args: argparse.Namespace, image: OpenedImage) -> list[Digest]:
    from signing.image import verify_image

    store, root = image.store, image.root
    repository = args.identity or image.registry_name
    if args.policy is not None:
        from signing.policy import MAX_POLICY_BYTES, TrustPolicy

        if repository is None:
            raise UsageError("--policy needs --identity REPO")
        policy = TrustPolicy.from_bytes(
            read_capped(args.policy, limit=MAX_POLICY_BYTES, what="trust policy"), source=str(args.policy)
        )
        return list(
            verify_image(
                store,
                root,
                identity=Identity(repository=repository, tag=image.tag),
                policy=policy,
                now=datetime.now(UTC),
            )
        )
    if not args.key:
        raise UsageError("verify needs --key PUB (or --policy FILE)")
    if repository is None:
        raise UsageError("verify needs --identity REPO", hint="the repository the image was signed for")
    # As cosign: the signature's docker-reference must name the repository; the tag it was reached
    # by (a moving channel such as :stable) is not compared, unless --identity names one itself.
    identity = Identity.parse(repository)
    return list(
        verify_image(store, root, identity=identity, keys=_public_keys(args.key), threshold=args.threshold)
    )


def _statement_for(kind: PredicateKind, blob: bytes, root: Descriptor, name: str) -> bytes:
    """The build stores the provenance as a statement and the SBOM as a bare SPDX document."""
    doc = parse_json_object(blob, what=f"{kind} blob", limit=_MAX_ATTESTATION_BYTES)
    if doc.get("_type") == STATEMENT_V1:
        if doc.get("predicateType") != kind.predicate_type:
            raise DocumentError(
                f"{kind} blob: predicateType {doc.get('predicateType')!r} is not {kind.predicate_type}"
            )
        subjects = doc.get("subject") or []
        if not any(
            isinstance(s, dict) and s.get("digest", {}).get("sha256") == root.digest.hex for s in subjects
        ):
            raise VerificationError(f"{kind} statement does not name {root.digest}", reason=Reason.DIGEST)
        return blob
    statement: dict[str, Any] = {
        "_type": STATEMENT_V1,
        "subject": [{"name": name, "digest": {"sha256": root.digest.hex}}],
        "predicateType": kind.predicate_type,
        "predicate": doc,
    }
    return canonical_json(statement)


def build_records(layout: OCILayout, digest: Digest) -> dict[PredicateKind, bytes]:
    """The unsigned SBOM and provenance a build stored about ``digest``: OCI 1.1 artifacts in the
    layout's index whose ``subject`` is the image (ADR 0018)."""
    kinds = {SBOM_ARTIFACT_TYPE: PredicateKind.SPDX, PROVENANCE_ARTIFACT_TYPE: PredicateKind.SLSAPROVENANCE}
    found: dict[PredicateKind, bytes] = {}
    for desc in layout.referrers(digest):
        if desc.media_type != MediaType.OCI_MANIFEST:
            continue
        man = OCIManifest.from_bytes(layout.read_blob(desc.digest))
        # The manifest's own artifactType: a copy by an older tool (skopeo 1.9) drops it from
        # the index's descriptors.
        kind = kinds.get(man.artifact_type or desc.artifact_type or "")
        if kind is None or kind in found:
            continue
        if man.subject is None or man.subject.digest != digest or len(man.layers) != 1:
            continue
        found[kind] = layout.read_blob(man.layers[0].digest, limit=_MAX_ATTESTATION_BYTES)
    return found


def _subject_name(records: Mapping[PredicateKind, bytes]) -> str | None:
    """The image's name in the build's provenance: the SBOM's statement gets the same subject name."""
    blob = records.get(PredicateKind.SLSAPROVENANCE)
    if blob is None:
        return None
    subjects = parse_json_object(blob, what="provenance", limit=_MAX_ATTESTATION_BYTES).get("subject")
    if isinstance(subjects, list) and subjects and isinstance(subjects[0], dict):
        name = subjects[0].get("name")
        return name if isinstance(name, str) and name else None
    return None


def _build_records(args: argparse.Namespace, image: OpenedImage) -> dict[PredicateKind, bytes]:
    """The records to sign: from the image's own layout, or ``--build DIR``."""
    if args.build is None:
        if image.layout is None:
            raise UsageError(
                f"{image.name}: attesting an image in a registry needs the build's records",
                hint="pass --build DIR: the OCI layout kiln build wrote for this image",
            )
        layout = OCILayout.open(image.layout.directory)
    else:
        layout = OCILayout.open(parse_image_ref(args.build).directory)
    records = build_records(layout, image.root.digest)
    if not records and args.build is not None:
        raise KilnError(
            f"{args.build}: holds no build records for {image.root.digest}",
            hint="name the layout kiln build wrote for exactly this image",
        )
    return records


def cmd_attest(args: argparse.Namespace, out: Output) -> int:
    from signing.image import attest_image

    with open_image(args.image, insecure=args.insecure) as image:
        records = _build_records(args, image)
        root = image.root
        kinds = [PredicateKind(t) for t in (args.types or [k.value for k in PredicateKind])]
        subject = _subject_name(records) or image.name
        statements = []
        for kind in kinds:
            blob = records.get(kind)
            if blob is None:
                raise KilnError(
                    f"{image.name}: the image has no {kind} recorded (no {kind} artifact refers to it)",
                    hint="rebuild it with this kiln (it stores SBOM and provenance as referrers)",
                )
            statements.append((kind, _statement_for(kind, blob, root, subject)))
        signer = _signer(args)
        for kind, statement in statements:
            attest_image(image.store, root, [signer], statement)
            out.progress(f"attested {kind} for {root.digest} -> {attestation_tag(root.digest)}")
    out.result(
        f"Attested {', '.join(k.value for k, _ in statements)} for {root.digest}",
        {
            "image": str(root.digest),
            "types": [k.value for k, _ in statements],
            "key_id": signer.public_key.key_id,
        },
    )
    return 0


def cmd_verify_attestation(args: argparse.Namespace, out: Output) -> int:
    from signing.image import verify_image_attestations

    with open_image(args.image, insecure=args.insecure) as image:
        root = image.root
        kind = PredicateKind(args.type)
        got = verify_image_attestations(
            image.store,
            root,
            keys=_public_keys(args.key),
            predicate_type=kind.predicate_type,
            threshold=args.threshold,
        )
    predicate = got[-1].predicate
    out.result(
        pretty_json(predicate),
        {"image": str(root.digest), "predicateType": kind.predicate_type, "predicate": predicate},
    )
    return 0
