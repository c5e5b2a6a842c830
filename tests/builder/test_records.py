"""The streamed SBOM and provenance (builder.records) are byte for byte the documents built through
spdx-tools' model and in-toto-attestation (builder.attestations), and the SBOM validates."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.attestations import FileRecord as ModelFile
from builder.attestations import Input, SbomPackage, slsa_provenance, spdx_document
from builder.records import write_provenance, write_spdx
from builder.tarwriter import FileRecord
from manifests.canonical import canonical_json
from manifests.digest import Digest

IMG = Digest("aa" * 32)
MAN = Digest("bb" * 32)
FILES = [
    FileRecord(path="/usr/bin/hello", sha256=Digest("11" * 32), size=10, sha1="22" * 20),
    FileRecord(path='/etc/é "quoted"\\\x01', sha256=Digest("33" * 32), size=0, sha1="44" * 20),
    FileRecord(path="/a b/c", sha256=Digest("55" * 32), size=7, sha1=""),  # no SHA1 known
]
INPUTS = [
    Input(
        kind="closure", uri="/lib/x86_64-linux-gnu/libc.so.6", sha256="33" * 32, package="libc6:amd64 2.36"
    ),
    Input(kind="tree", uri="/usr/share/zoneinfo/UTC", sha256="34" * 32, package="tzdata"),
    Input(kind="files", uri="héllo", sha256="44" * 32),
    Input(kind="package", uri="pkg:deb/debian/x@1", sha256="45" * 32),
    Input(kind="files", uri="https://example.org/a", sha256="46" * 32),
]
PACKAGES = [
    SbomPackage(
        name="libc6",
        version="2.36",
        purl="pkg:deb/debian/libc6@2.36?arch=amd64",
        download_location="http://deb.debian.org/x.deb",
        sha256="66" * 32,
    ),
    SbomPackage(name="bare"),
]


def _model_files(files: list[FileRecord]) -> list[ModelFile]:
    return [ModelFile(path=f.path, sha256=f.sha256.hex, size=f.size, sha1=f.sha1 or None) for f in files]


def _streamed_spdx(
    name: str, version: str, files: list[FileRecord], inputs: list[Input], **kw: object
) -> bytes:
    out = io.BytesIO()
    write_spdx(out, name, version, IMG, files, inputs, "1970-01-01T00:00:05Z", **kw)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize("files", [FILES, FILES[:1], []], ids=["three", "one", "none"])
@pytest.mark.parametrize("inputs", [INPUTS, []], ids=["inputs", "no-inputs"])
@pytest.mark.parametrize("packages", [PACKAGES, []], ids=["packages", "no-packages"])
@pytest.mark.parametrize(
    ("name", "version"), [("hello", "1.0"), ("reg.example:5000/Team/app", "1.0+é~rc1")], ids=["plain", "odd"]
)
def test_the_streamed_sbom_is_the_model_documents_bytes(
    files: list[FileRecord], inputs: list[Input], packages: list[SbomPackage], name: str, version: str
) -> None:
    model = spdx_document(
        name, version, IMG, _model_files(files), inputs, "1970-01-01T00:00:05Z",
        tool_version="9.9", packages=packages, arch="arm64",
    )  # fmt: skip
    streamed = _streamed_spdx(
        name, version, files, inputs, tool_version="9.9", packages=packages, arch="arm64"
    )
    assert streamed == canonical_json(model)


def test_an_unparsable_creation_time_is_the_epoch_as_in_the_model() -> None:
    model = canonical_json(spdx_document("n", "v", IMG, _model_files(FILES), [], "not a time"))
    out = io.BytesIO()
    write_spdx(out, "n", "v", IMG, FILES, [], "not a time")
    assert out.getvalue() == model
    assert json.loads(out.getvalue())["creationInfo"]["created"] == "1970-01-01T00:00:00Z"


def test_spdx_tools_validates_a_streamed_sbom() -> None:
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    files = [f for f in FILES if f.sha1]  # SPDX 2.3 wants a SHA1 of every file; the builder has them
    raw = json.loads(_streamed_spdx("hello", "1.0", files, INPUTS, packages=PACKAGES))
    document = JsonLikeDictParser().parse(raw)
    assert validate_full_spdx_document(document) == []
    assert len(document.files) == len(files)


@settings(max_examples=60, deadline=None)
@given(
    paths=st.lists(
        st.text(min_size=1, max_size=12).filter(lambda p: "\x00" not in p), max_size=6, unique=True
    ),
    sizes=st.integers(0, 10**12),
)
def test_any_path_streams_to_the_model_bytes(paths: list[str], sizes: int) -> None:
    files = [
        FileRecord(path="/" + p, sha256=Digest(f"{i:02x}" * 32), size=sizes, sha1=f"{i:02x}" * 20)
        for i, p in enumerate(paths)
    ]
    model = spdx_document("n", "v", IMG, _model_files(files), INPUTS, "1970-01-01T00:00:05Z")
    assert _streamed_spdx("n", "v", files, INPUTS) == canonical_json(model)


@pytest.mark.parametrize("epoch", [None, 0, 1_700_000_000])
@pytest.mark.parametrize("inputs", [INPUTS, []], ids=["inputs", "none"])
def test_the_streamed_provenance_is_the_model_statements_bytes(
    epoch: int | None, inputs: list[Input]
) -> None:
    model = slsa_provenance(
        "reg.example/hello:1",
        IMG,
        MAN,
        inputs,
        "0.1.0",
        source_date_epoch=epoch,
        manifest_uri="m.yaml",
        arch="arm64",
    )
    out = io.BytesIO()
    write_provenance(
        out,
        "reg.example/hello:1",
        IMG,
        MAN,
        inputs,
        "0.1.0",
        source_date_epoch=epoch,
        manifest_uri="m.yaml",
        arch="arm64",
    )
    assert out.getvalue() == canonical_json(model)


def test_a_dependency_the_message_refuses_stops_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.protobuf.json_format import ParseError

    import builder.records

    def odd(i: Input, arch: str) -> dict[str, object]:
        del arch
        return {"name": i.uri, "digest": {"sha256": i.sha256}, "annotations": {}, "colour": "blue"}

    monkeypatch.setattr(builder.records, "dependency", odd)
    with pytest.raises(ParseError, match="colour"):
        write_provenance(io.BytesIO(), "n", IMG, MAN, INPUTS, "0.1.0")
