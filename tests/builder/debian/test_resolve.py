"""The Packages parser and the resolver on small synthetic indexes: relations, alternatives,
virtual packages, architectures, exclusions, and the messages of what cannot be resolved."""

from __future__ import annotations

import pytest

from builder.debian.index import PackageIndex, Relation, parse_relations, parse_stanza
from builder.debian.resolve import resolve, satisfies
from builder.errors import SourceError

SHA = "0" * 64


def stanza(name: str, version: str = "1.0", arch: str = "amd64", **fields: str) -> str:
    lines = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    lines += [
        "Description: a package",
        " with a long description",
        " .",
        f"Filename: pool/{name}_{version}_{arch}.deb",
        "Size: 10",
        f"SHA256: {SHA}",
    ]
    return "\n".join(lines) + "\n"


def index(*stanzas: str, arch: str = "amd64") -> PackageIndex:
    idx = PackageIndex(arch)
    idx.add_text("\n".join(stanzas), where="Packages")
    return idx


def names(idx: PackageIndex, *requested: str, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {c.record.name: c.record.version for c in resolve(idx, requested, exclude).choices}


def test_relations_parse_alternatives_versions_and_qualifiers() -> None:
    got = parse_relations("a (>= 1.0), b:any | c (<< 2~), d [amd64], e:native (= 1:2-3)", where="x")
    assert got == (
        (Relation("a", ">=", "1.0"),),
        (Relation("b"), Relation("c", "<<", "2~")),
        (Relation("d"),),
        (Relation("e", "=", "1:2-3"),),
    )
    with pytest.raises(SourceError, match="cannot read the relation"):
        parse_relations("a (>= )", where="x")


@pytest.mark.parametrize(
    ("version", "op", "wanted", "ok"),
    [
        ("1.0-1", ">=", "1.0", True),
        ("1.0~rc1", ">=", "1.0", False),
        ("1:0.1", ">>", "9.9", True),
        ("2.0", "<<", "2.0", False),
        ("2.0", "<=", "2.0", True),
        ("2.0+b1", "=", "2.0", False),
        ("2.0", None, None, True),
    ],
)
def test_version_relations(version: str, op: str | None, wanted: str | None, ok: bool) -> None:
    assert satisfies(version, op, wanted) is ok


def test_other_architectures_are_skipped_and_all_is_kept() -> None:
    idx = index(stanza("a", arch="arm64"), stanza("b", arch="all"), stanza("c"))
    assert sorted(idx.packages) == ["b", "c"]


def test_highest_satisfying_version_wins() -> None:
    idx = index(
        stanza("app", Depends="lib (<< 3)"), stanza("lib", "1.0"), stanza("lib", "2.0"), stanza("lib", "3.0")
    )
    assert names(idx, "app") == {"app": "1.0", "lib": "2.0"}


def test_first_satisfiable_alternative_wins_and_a_chosen_one_satisfies() -> None:
    idx = index(
        stanza("app", Depends="missing | second | third"),
        stanza("second"),
        stanza("third"),
        stanza("both", Depends="third | second"),
    )
    assert names(idx, "app") == {"app": "1.0", "second": "1.0"}
    # "both" wants third | second: second is already chosen, so nothing more comes in.
    assert names(idx, "app", "both") == {"app": "1.0", "second": "1.0", "both": "1.0"}


def test_virtual_packages_versioned_and_by_name() -> None:
    idx = index(
        stanza("app", Depends="virt (>= 2)"),
        stanza("p-unversioned", Provides="virt"),
        stanza("p-old", Provides="virt (= 1)"),
        stanza("z-new", Provides="virt (= 2)"),
        stanza("tool", Depends="virt"),
    )
    assert names(idx, "app") == {"app": "1.0", "z-new": "1.0"}
    # Unversioned: the provider already chosen is preferred over the first by name.
    assert names(idx, "app", "tool") == {"app": "1.0", "z-new": "1.0", "tool": "1.0"}
    assert names(idx, "tool") == {"tool": "1.0", "p-old": "1.0"}


def test_resolution_is_independent_of_index_order() -> None:
    parts = [
        stanza("app", Depends="v, lib"),
        stanza("b-prov", Provides="v"),
        stanza("a-prov", Provides="v"),
        stanza("lib", "1"),
        stanza("lib", "2"),
    ]
    assert names(index(*parts), "app") == names(index(*reversed(parts)), "app")


def test_excluded_names_drop_their_groups() -> None:
    idx = index(
        stanza("app", Depends="debconf | debconf-2.0, lib"),
        stanza("cdebconf", Provides="debconf-2.0"),
        stanza("debconf"),
        stanza("lib"),
    )
    result = resolve(idx, ["app"], ["debconf"])
    assert [c.record.name for c in result.choices] == ["app", "lib"]
    assert result.dropped == ("app Depends: debconf | debconf-2.0",)


def test_reasons_are_recorded() -> None:
    idx = index(stanza("app", Pre_Depends="pre", Depends="lib (>= 1)"), stanza("pre"), stanza("lib"))
    reasons = {c.record.name: c.reason for c in resolve(idx, ["app"]).choices}
    assert reasons == {"app": "requested", "pre": "app Depends: pre", "lib": "app Depends: lib (>= 1)"}


@pytest.mark.parametrize(
    ("stanzas", "requested", "exclude", "message"),
    [
        ([stanza("a")], ["b"], (), "package b is not in the archive (architecture amd64)"),
        ([stanza("a")], ["a"], ("a",), "package a is excluded"),
        (
            [stanza("a", Depends="lib (>= 2)"), stanza("lib", "1")],
            ["a"],
            (),
            "a 1.0 depends on lib (>= 2), which nothing in the archive satisfies (architecture amd64)",
        ),
    ],
)
def test_unresolvable(
    stanzas: list[str], requested: list[str], exclude: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SourceError) as info:
        resolve(index(*stanzas), requested, exclude)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Package: a\nArchitecture: amd64\n", "a stanza (a) lacks Version, Filename, SHA256"),
        (stanza("a").replace("Size: 10", "Size: ten"), "Size 'ten' is not a number"),
        (stanza("a").replace(SHA, "xyz"), "SHA256 is not 64 hex digits"),
        (stanza("a").replace("Package: a", "Package: ../a"), "invalid package name '../a'"),
    ],
)
def test_malformed_index_stanzas(text: str, message: str) -> None:
    with pytest.raises(SourceError, match="Packages") as info:
        index(text)
    assert message in str(info.value)


def test_parse_stanza_keeps_continuations() -> None:
    fields = parse_stanza("Suite: x\nSHA256:\n aa 1 main/p\n bb 2 main/q\nDate: d\n")
    assert fields["SHA256"].splitlines()[1:] == [" aa 1 main/p", " bb 2 main/q"]
    assert fields["Date"] == "d"
