"""Verbs for releases and trust roots: ``release sign``, ``release verify``, ``release publish``,
``root init``, ``root sign``, ``root verify``.

Signing writes DSSE envelopes (``*.dsse.json``). Several signers sign the same envelope in turn:
``kiln release sign --key K2 --append release.dsse.json`` (or ``kiln release sign --key K2
release.dsse.json``) adds a signature over the same payload bytes, in place. Passphrases come from
``$KILN_PASSWORD`` (or ``$COSIGN_PASSWORD``), ``--passphrase-file`` or a terminal prompt, exactly as
for ``kiln sign``.

``release verify`` and ``root verify`` exit 3 when they refuse, printing the reason word the agent
logs (``signature``, ``threshold``, ``expired``, ``rollback``, ``digest``, ``identity``,
``policy``, ``parse``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kiln.cmd_sign import _key_args, _public_keys, _signer
from kiln.output import Output, UsageError
from manifests.atomic import atomic_write
from manifests.digest import Digest
from manifests.durations import DurationError, parse_duration
from manifests.errors import KilnError, VerificationError
from manifests.release import MAX_RELEASE_BYTES, Release, format_utc_time, load_release, parse_utc_time
from manifests.trustroot import MAX_ROOT_BYTES, ImageKey, ImageRule, ImageRules, ReleaseRole, Role, TrustRoot
from signing.dsse import Envelope, sign_envelope
from signing.errors import SigningError
from signing.release import RELEASE_PAYLOAD_TYPE, add_signature, check_release, open_release_envelope
from signing.root import ROOT_PAYLOAD_TYPE, check_root_keys, envelope_cap, load_root, open_envelope
from signing.root import verify_root_update as _verify_root_update

__all__ = ["register"]

_DOCUMENT_SUFFIXES = (".yaml", ".yml", ".toml")
_DEFAULT_ROOT_LIFETIME = timedelta(days=365)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = sub.add_parser("release", help="sign, verify and publish release manifests")
    rel = release.add_subparsers(dest="release_verb", metavar="ACTION", required=True)
    p = rel.add_parser("sign", help="sign a release (or add a signature to a signed one)")
    _sign_args(p, "RELEASE.yaml|ENVELOPE")
    p.set_defaults(handler=cmd_release_sign)
    p = rel.add_parser("verify", help="verify a signed release against a trust root (exit 3 when refused)")
    p.add_argument("--root", type=Path, required=True, metavar="ROOT", help="trust root (YAML or envelope)")
    p.add_argument("--channel", help="the channel this host follows")
    p.add_argument(
        "--highest-accepted", type=_version_arg, metavar="N", help="highest version accepted so far"
    )
    p.add_argument(
        "--current-digest",
        type=_digest_arg,
        metavar="DIGEST",
        help="payload digest of that accepted release (sha256:HEX)",
    )
    p.add_argument("--at", metavar="TIME", help="verify as of this RFC 3339 time (default: now)")
    p.add_argument("envelope", type=Path, metavar="ENVELOPE")
    p.set_defaults(handler=cmd_release_verify)
    p = rel.add_parser(
        "publish", help="push a signed release as an OCI artifact, tagged CHANNEL and CHANNEL-VERSION"
    )
    p.add_argument("envelope", type=Path, metavar="ENVELOPE")
    p.add_argument("dest", metavar="DEST", help="HOST[:PORT]/REPO or oci:DIR")
    p.add_argument(
        "--insecure", action="store_true", help="plain http to a registry on loopback (never elsewhere)"
    )
    p.add_argument("--force", action="store_true", help="move the channel tag even to a lower version")
    p.set_defaults(handler=cmd_release_publish)

    root = sub.add_parser("root", help="create, sign and rotate trust roots")
    rt = root.add_subparsers(dest="root_verb", metavar="ACTION", required=True)
    p = rt.add_parser("init", help="write a first trust root (YAML) from public keys")
    p.add_argument("--root-key", type=Path, action="append", required=True, metavar="PUB")
    p.add_argument("--release-key", type=Path, action="append", required=True, metavar="PUB")
    p.add_argument("--image-key", type=Path, action="append", required=True, metavar="PUB")
    p.add_argument(
        "--image-repository", action="append", metavar="GLOB", help="repositories the image keys sign (**)"
    )
    p.add_argument("--channel", action="append", metavar="GLOB", help="channels releases may use (*)")
    p.add_argument("--threshold", type=int, default=1, help="root and release keys required (default 1)")
    p.add_argument("--release-threshold", type=int, help="release keys required (default: --threshold)")
    p.add_argument("--version", type=int, default=1, dest="root_version")
    p.add_argument("--expires", metavar="TIME|DURATION", help="RFC 3339 time or a duration (8760h)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(handler=cmd_root_init)
    p = rt.add_parser("sign", help="sign a trust root (or add a signature to a signed one)")
    _sign_args(p, "ROOT.yaml|ENVELOPE")
    p.set_defaults(handler=cmd_root_sign)
    p = rt.add_parser("verify", help="check a rotation: NEW signed by OLD's root keys (exit 3 when refused)")
    p.add_argument(
        "--old", type=Path, required=True, metavar="OLD", help="the trusted root (YAML or envelope)"
    )
    p.add_argument("--at", metavar="TIME", help="verify as of this RFC 3339 time (default: now)")
    p.add_argument("new", type=Path, metavar="NEW", help="the new root's envelope")
    p.set_defaults(handler=cmd_root_verify)


def _sign_args(p: argparse.ArgumentParser, what: str) -> None:
    _key_args(p)
    p.add_argument("--append", type=Path, metavar="ENVELOPE", help="add a signature to ENVELOPE, in place")
    p.add_argument("-o", "--output", type=Path, help="envelope to write (default with an envelope: in place)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("input", type=Path, nargs="?", metavar=what)


# -- the two kinds of signed documents --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Kind:
    noun: str
    payload_type: str
    cap: int
    load: Callable[[Path], bytes]  # a document people wrote -> canonical payload
    check: Callable[[bytes], str]  # a payload about to be signed -> one-line summary (or raise)


def _load_release(path: Path) -> bytes:
    return load_release(path).to_bytes()


def _check_release(payload: bytes) -> str:
    release = Release.from_payload(payload)
    if release.expired(datetime.now(UTC)):
        raise SigningError(
            f"release {release.channel} v{release.version} expired at {format_utc_time(release.expires)}",
            hint="set a later expires",
        )
    images = ", ".join(f"{s.name}={s.image}" for s in release.services)
    return (
        f"release {release.channel} v{release.version} (expires {format_utc_time(release.expires)}): {images}"
    )


def _load_root_doc(path: Path) -> bytes:
    root = load_root(_read(path, MAX_ROOT_BYTES, "trust root"), source=str(path))
    return root.to_bytes()


def _check_root(payload: bytes) -> str:
    root = TrustRoot.from_payload(payload)
    check_root_keys(root)
    return (
        f"trust root v{root.version} (expires {format_utc_time(root.expires)}): "
        f"root {root.root.threshold} of {len(root.root.key_ids)}, "
        f"releases {root.releases.threshold} of {len(root.releases.key_ids)}"
    )


_RELEASE = _Kind(
    noun="release",
    payload_type=RELEASE_PAYLOAD_TYPE,
    cap=MAX_RELEASE_BYTES,
    load=_load_release,
    check=_check_release,
)
_ROOT = _Kind(
    noun="trust root",
    payload_type=ROOT_PAYLOAD_TYPE,
    cap=MAX_ROOT_BYTES,
    load=_load_root_doc,
    check=_check_root,
)


def _read(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit + 1`` bytes, so a too-large input is refused by its parser, not read whole."""
    try:
        with path.open("rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise KilnError(f"{what} {str(path)!r}: {exc.strerror or exc}") from None


def _read_envelope(path: Path, kind: _Kind) -> Envelope:
    data = _read(path, envelope_cap(kind.cap), f"{kind.noun} envelope")
    return open_envelope(data, payload_type=kind.payload_type, payload_cap=kind.cap, what=str(path))


def _is_document(path: Path) -> bool:
    return path.suffix.lower() in _DOCUMENT_SUFFIXES


def _sign(args: argparse.Namespace, out: Output, kind: _Kind) -> int:
    source: Path | None = args.input
    envelope: Envelope | None = None
    payload = b""
    if args.append is not None:
        envelope = _read_envelope(args.append, kind)
        target: Path = args.output or args.append
        if source is not None:
            given = kind.load(source) if _is_document(source) else _read_envelope(source, kind).payload
            if given != envelope.payload:
                raise KilnError(
                    f"{args.append}: its payload is not the {kind.noun} in {source}",
                    hint="every signer signs the same bytes: check you reviewed the right version",
                )
    elif source is None:
        raise UsageError(f"nothing to sign: give a {kind.noun} file or --append ENVELOPE")
    elif _is_document(source):
        if args.output is None:
            raise UsageError("where should the envelope go?", hint="pass -o FILE.dsse.json")
        target = args.output
        payload = kind.load(source)
    else:
        envelope = _read_envelope(source, kind)
        target = args.output or source
    in_place = envelope is not None and target in (args.append, source)
    if target.exists() and not in_place and not args.force:
        raise KilnError(f"{target} exists", hint="use --force to replace it, or --append to add a signature")
    if envelope is not None:
        payload = envelope.payload
    out.progress(f"signing {kind.check(payload)}")
    signer = _signer(args)
    if envelope is not None:
        signed = add_signature(envelope, signer)
    else:
        signed = sign_envelope([signer], kind.payload_type, payload)
    atomic_write(target, signed.to_bytes())
    digest = Digest.of(payload)
    out.result(
        f"Signed the {kind.noun} {digest} with key {signer.public_key.key_id}: "
        f"{len(signed.signatures)} signature(s) in {target}",
        {
            "payload_digest": str(digest),
            "key_id": signer.public_key.key_id,
            "signatures": len(signed.signatures),
            "envelope": str(target),
        },
    )
    return 0


def cmd_release_sign(args: argparse.Namespace, out: Output) -> int:
    return _sign(args, out, _RELEASE)


def cmd_root_sign(args: argparse.Namespace, out: Output) -> int:
    return _sign(args, out, _ROOT)


# -- verification -----------------------------------------------------------------------------------


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    when = parse_utc_time(text)
    if when is None:
        raise KilnError(
            f"invalid time {text!r}", hint="write an RFC 3339 UTC time such as 2026-12-31T00:00:00Z"
        )
    return when


def _refused(exc: VerificationError) -> VerificationError:
    """The same refusal, its reason word in front (what the agent logs)."""
    return VerificationError(f"refused ({exc.reason}): {exc.message}", reason=exc.reason, hint=exc.hint)


def _version_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a release version is not negative: {n}")
    return n


def _digest_arg(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except KilnError:
        raise argparse.ArgumentTypeError(
            f"not a digest: {text[:80]!r} (expected sha256: followed by 64 lowercase hex digits)"
        ) from None


def cmd_release_verify(args: argparse.Namespace, out: Output) -> int:
    if args.current_digest is not None and args.highest_accepted is None:
        raise UsageError(
            "--current-digest names the release accepted at --highest-accepted: give both",
            hint="or neither, to verify without a history",
        )
    now = _now(args.at)
    root = load_root(_read(args.root, envelope_cap(MAX_ROOT_BYTES), "trust root"), source=str(args.root))
    data = _read(args.envelope, envelope_cap(MAX_RELEASE_BYTES), "release envelope")
    try:
        verified = check_release(
            data,
            root=root,
            channel=args.channel,
            now=now,
            highest_accepted=args.highest_accepted,
            current_payload_digest=None if args.current_digest is None else str(args.current_digest),
        )
    except VerificationError as exc:
        raise _refused(exc) from None
    release = verified.release
    services: list[dict[str, Any]] = [
        {
            "name": s.name,
            "image": str(s.image),
            "repository": s.image.repository,
            "digest": str(s.image.digest),
            "replicas": s.replicas,
            "listen": str(s.listen) if s.listen is not None else None,
            "strategy": s.strategy.kind.value,
        }
        for s in release.services
    ]
    width = max(len(s.name) for s in release.services)
    lines = [
        f"Verified release {release.channel} v{release.version} ({verified.payload_digest})",
        f"expires {format_utc_time(release.expires)}; signed by {len(verified.key_ids)} release key(s) "
        f"of trust root v{root.version}",
        *(f"  {s.name:<{width}}  {s.image}" for s in release.services),
    ]
    out.result(
        "\n".join(lines),
        {
            "channel": release.channel,
            "release_version": release.version,
            "expires": format_utc_time(release.expires),
            "payload_digest": str(verified.payload_digest),
            "key_ids": sorted(verified.key_ids),
            "root_version": root.version,
            "services": services,
        },
    )
    return 0


def cmd_release_publish(args: argparse.Namespace, out: Output) -> int:
    from publisher.release_artifact import open_release_endpoint, publish_release

    data = _read(args.envelope, envelope_cap(MAX_RELEASE_BYTES), "release envelope")
    Release.from_payload(open_release_envelope(data).payload)  # refuse a bad envelope before DEST exists
    with open_release_endpoint(args.dest, insecure=args.insecure, create=True) as endpoint:
        published = publish_release(endpoint, data, force=args.force)
    for change in published.tags:
        out.progress(f"{args.dest}:{change.tag} ({change.action})")
    out.result(
        f"Published release {published.channel} v{published.release_version} as {published.reference}",
        published.to_dict(),
    )
    return 0


def cmd_root_verify(args: argparse.Namespace, out: Output) -> int:
    now = _now(args.at)
    old = load_root(_read(args.old, envelope_cap(MAX_ROOT_BYTES), "trust root"), source=str(args.old))
    data = _read(args.new, envelope_cap(MAX_ROOT_BYTES), "trust root envelope")
    try:
        new = _verify_root_update(old, data, now=now)
    except VerificationError as exc:
        raise _refused(exc) from None
    out.result(
        f"Trust root v{new.version} ({new.digest}) follows v{old.version}; "
        f"expires {format_utc_time(new.expires)}",
        {
            "root_version": new.version,
            "previous_version": old.version,
            "digest": str(new.digest),
            "expires": format_utc_time(new.expires),
            "root_keys": list(new.root.key_ids),
            "release_keys": list(new.releases.key_ids),
        },
    )
    return 0


# -- root init --------------------------------------------------------------------------------------


def _expires(text: str | None, now: datetime) -> datetime:
    if text is None:
        return (now + _DEFAULT_ROOT_LIFETIME).replace(microsecond=0)
    when = parse_utc_time(text)
    if when is not None:
        if when <= now:  # every host would refuse it at once: a typo in the year, most likely
            raise UsageError(
                f"--expires {text} is already past",
                hint="a later RFC 3339 UTC time, or a duration such as 8760h",
            )
        return when
    try:
        seconds = parse_duration(text)
    except DurationError:
        raise UsageError(
            f"invalid --expires {text!r}", hint="an RFC 3339 UTC time or a duration such as 8760h"
        ) from None
    return (now + timedelta(seconds=seconds)).replace(microsecond=0)


def _role(paths: list[Path], threshold: int, what: str) -> tuple[Role, dict[str, str]]:
    keys = {k.key_id: k.to_pem().decode("ascii") for k in _public_keys(paths)}
    if not 1 <= threshold <= len(keys):
        raise UsageError(f"{what} threshold {threshold} needs 1 to {len(keys)} distinct keys")
    return Role(key_ids=tuple(sorted(keys)), threshold=threshold), keys


# Which flag of ``root init`` writes which field of the root (for its errors).
_ROOT_FLAGS = (
    ("releases.channels", "--channel"),
    ("images.rules", "--image-repository"),
    ("expires", "--expires"),
    ("threshold", "--threshold/--release-threshold"),
    ("version", "--version"),
)


def _field_problem(message: str) -> str:
    """``<root init>:14:5: releases.channels[0]: invalid ...`` -> ``releases.channels[0]: invalid ...``."""
    _, sep, rest = message.partition("<root init>")
    if not sep:
        return message
    return rest.lstrip(":0123456789 ")


def cmd_root_init(args: argparse.Namespace, out: Output) -> int:
    if args.output.exists() and not args.force:
        raise KilnError(f"{args.output} exists", hint="use --force to replace it")
    if args.root_version < 1:
        raise UsageError("--version must be at least 1")
    now = datetime.now(UTC)
    root_role, root_pems = _role(args.root_key, args.threshold, "root")
    release_threshold = args.release_threshold if args.release_threshold is not None else args.threshold
    release_role, release_pems = _role(args.release_key, release_threshold, "release")
    image_keys = tuple(
        ImageKey(name=f"image-{i + 1}", public_key=k.to_pem().decode("ascii"), algorithm=k.algorithm.value)
        for i, k in enumerate(_public_keys(args.image_key))
    )
    images = ImageRules(
        keys=image_keys,
        rules=(
            ImageRule(
                repositories=tuple(args.image_repository or ["**"]), keys=tuple(k.name for k in image_keys)
            ),
        ),
    )
    root = TrustRoot(
        version=args.root_version,
        expires=_expires(args.expires, now),
        root=root_role,
        releases=ReleaseRole(
            key_ids=release_role.key_ids,
            threshold=release_role.threshold,
            channels=tuple(args.channel or ["*"]),
        ),
        images=images,
        keys=tuple(sorted({**root_pems, **release_pems}.items())),
    )
    # Through the parser once: what is written is exactly what hosts will load. A value it refuses
    # came from a flag: the error names the flag, not a line of a file that was never written.
    text = root.to_yaml()
    try:
        parsed = load_root(text.encode("utf-8"), source="<root init>")
    except KilnError as exc:  # ManifestError and the like: the generated text is the flags' values
        flags = " or ".join(flag for field, flag in _ROOT_FLAGS if field in exc.message) or "the flags"
        raise UsageError(f"{flags}: {_field_problem(exc.message)}", hint=exc.hint) from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, text.encode("utf-8"))
    out.result(
        f"Trust root v{parsed.version} written to {args.output} (expires {format_utc_time(parsed.expires)})",
        {"root": str(args.output), "root_version": parsed.version, "digest": str(parsed.digest)},
    )
    return 0
