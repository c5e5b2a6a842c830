"""``kiln verify --policy`` and the agent give the same answer for the same policy and image.

Both call :func:`signing.image.verify_image`. The policy document is written once as a file (for the
CLI) and put, parsed by the same :mod:`manifests.trustpolicy`, into the agent's trust root as its
``images:`` section. Images are a single manifest and an index of two platform manifests, so an
unsigned child of an index is refused by both (the agent used to judge only the pinned digest).

The agent side runs :meth:`agent.prepare.Preparer.prepare` against an image source whose blob side
raises :class:`_Pulled`: an image that verifies reaches the pull, one that does not never does.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.metrics import Metrics
from agent.prepare import Preparer
from agent.sources import ImageLocation
from kiln import cli
from manifests.canonical import canonical_json
from manifests.errors import VerificationError
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex
from manifests.trustpolicy import parse_trust_policy
from signing.attestation import STATEMENT_V1, PredicateKind
from signing.cosign import signature_tag
from signing.image import attest_image, sign_image
from signing.signer import LocalSigner
from signing.store import LayoutStore
from tests.agent.agentkit import make_release, make_root, service_yaml
from tests.signing.conftest import p256, write_image

REPO = "reg.example/team/app"
ALICE, BOB = p256(0xA11CE), p256(0xB0B)


class _Pulled(Exception):
    """Verification passed: the agent went on to pull the image."""


class _NoPull:
    def pull_image(self, *args: object, **kwargs: object) -> None:
        raise _Pulled


@dataclass
class _Source:
    layout: Path

    @contextlib.contextmanager
    def open_images(self, repository: str) -> Iterator[ImageLocation]:
        yield ImageLocation(display=str(self.layout), blobs=None, artifacts=LayoutStore.open(self.layout))  # type: ignore[arg-type]


def _indent(signer: LocalSigner) -> str:
    return textwrap.indent(signer.public_key.to_pem().decode(), "      ")


def policy_text(
    *, keys: str = "alice", threshold: int = 1, attest: bool = False, repos: str = "reg.example/**"
) -> str:
    text = (
        "version: 1\nkeys:\n"
        f"  alice:\n    algorithm: ecdsa-p256\n    public_key: |\n{_indent(ALICE)}"
        f"  bob:\n    public_key: |\n{_indent(BOB)}"
        f"rules:\n  - repositories: ['{repos}']\n    keys: [{keys}]\n    threshold: {threshold}\n"
    )
    return text + ("    attestations: [slsaprovenance]\n" if attest else "")


def make_image(root: Path, *, index: bool) -> tuple[Path, Descriptor, tuple[Descriptor, ...]]:
    layout = OCILayout.create(root)
    if not index:
        desc = write_image(layout)
        layout.tag(desc, "v1")
        return root, layout.resolve("v1"), ()
    children = (
        write_image(layout, layer=b"amd", arch="amd64"),
        write_image(layout, layer=b"arm", arch="arm64"),
    )
    raw = OCIIndex(manifests=children).to_bytes()
    layout.tag(Descriptor(media_type=MediaType.OCI_INDEX, digest=layout.write_blob(raw), size=len(raw)), "v1")
    return root, layout.resolve("v1"), children


def attest(layout: Path, desc: Descriptor, signer: LocalSigner) -> None:
    statement = canonical_json(
        {
            "_type": STATEMENT_V1,
            "subject": [{"name": REPO, "digest": {"sha256": desc.digest.hex}}],
            "predicateType": PredicateKind.SLSAPROVENANCE.predicate_type,
            "predicate": {"buildDefinition": {"buildType": "https://kiln.dev/test"}},
        }
    )
    attest_image(LayoutStore.open(layout), desc, [signer], statement)


def cli_answer(layout: Path, policy: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = cli.main(["verify", "--policy", str(policy), "--identity", REPO, f"oci:{layout}:v1"])
    err = capsys.readouterr().err
    if code == 0:
        return "accepted"
    assert code == 3, err
    return err


def agent_answer(layout: Path, policy: str, tmp: Path) -> str:
    root = replace(make_root(), images=parse_trust_policy(policy.encode(), source="policy.yaml"))
    desc = OCILayout.open(layout).resolve("v1")
    release = make_release(1, [service_yaml("web", f"{REPO}@{desc.digest}")])
    preparer = Preparer(
        store=_NoPull(),  # type: ignore[arg-type]
        roots_dir=tmp / "roots",
        metrics=Metrics(),
        wall=lambda: datetime.now(UTC),
        source=lambda: _Source(layout),  # type: ignore[arg-type,return-value]
    )
    try:
        preparer.prepare(release, root=root, fetch=True)
    except _Pulled:
        return "accepted"
    except VerificationError as exc:
        return exc.message
    raise AssertionError("prepare neither pulled nor refused")


# (name, index image?, how it is signed, policy keyword arguments, expected: accepted or refused)
CASES = [
    ("signed", False, "alice", {}, True),
    ("index signed", True, "alice", {}, True),
    ("index child unsigned", True, "alice-but-arm", {}, False),
    ("wrong key", True, "bob", {}, False),
    ("threshold met", True, "alice+bob", {"keys": "alice, bob", "threshold": 2}, True),
    ("threshold short", True, "alice", {"keys": "alice, bob", "threshold": 2}, False),
    ("attestation missing", False, "alice", {"attest": True}, False),
    ("attested", False, "alice+att", {"attest": True}, True),
    ("index attested", True, "alice+att", {"attest": True}, True),  # kiln attest attests the index
    ("index not attested", True, "alice", {"attest": True}, False),
    ("repository not covered", False, "alice", {"repos": "other.example/**"}, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_and_agent_agree(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, bool, str, dict[str, object], bool],
) -> None:
    _, index, signing, policy, accepted = case
    layout, desc, children = make_image(tmp_path / "img", index=index)
    store = LayoutStore.open(layout)
    for who, signer in (("alice", ALICE), ("bob", BOB)):
        if who in signing:
            sign_image(store, desc, signer, reference=f"{REPO}:v1")
    if "but-arm" in signing:
        OCILayout.open(layout).untag(signature_tag(children[1].digest))
    if "+att" in signing:
        attest(layout, desc, ALICE)
    text = policy_text(**policy)  # type: ignore[arg-type]
    (tmp_path / "policy.yaml").write_text(text)

    by_cli = cli_answer(layout, tmp_path / "policy.yaml", capsys)
    by_agent = agent_answer(layout, text, tmp_path)

    assert (by_cli == "accepted") is accepted, by_cli
    assert (by_agent == "accepted") is accepted, by_agent
    if not accepted:
        assert by_agent in by_cli  # the same refusal, word for word
