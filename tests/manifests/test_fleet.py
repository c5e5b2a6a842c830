"""Fleet configuration and rollout waves: valid documents, and every problem with its position."""

from __future__ import annotations

import pytest

from manifests.errors import ManifestError
from manifests.fields import FieldChecker
from manifests.fleet import FleetConfig, GroupLimit, Rollout, Wave, check_rollout, parse_fleet_config
from manifests.source import parse_document

HEAD = b"apiVersion: kiln.dev/v1\nkind: FleetConfig\n"


def test_valid_config_and_its_stored_form() -> None:
    config = parse_fleet_config(
        HEAD + b"name: prod\ndefault_max: 2\ngroups:\n  canary: {max: 1}\nlease_ttl: 30s\n", source="f.yaml"
    )
    assert config == FleetConfig(
        name="prod", default_max=2, groups=(GroupLimit(name="canary", max=1),), lease_ttl=30
    )
    assert config.max_for("canary") == 1
    assert config.max_for("web") == 2
    assert FleetConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + b"name: prod\ngroups:\n  canary: {max: 0}\n  Web: {max: 1}\n  db: {mx: 1}\n"
            b"lease_ttl: 1s\nextra: 1\n",
            "fleet.yaml:5:12: groups.canary.max: out of range (1 to 100000)\n"
            "fleet.yaml:6:3: groups.Web: invalid group 'Web' (lowercase letters, digits, '.', '_', '-')\n"
            "fleet.yaml:7:3: groups.db.max: missing required key\n"
            "fleet.yaml:7:8: groups.db.mx: unknown key (did you mean 'max'?)\n"
            "fleet.yaml:8:1: lease_ttl: out of range (2s to 1h)\n"
            "fleet.yaml:9:1: extra: unknown key "
            "(expected one of: apiVersion, kind, name, default_max, groups, lease_ttl)",
        ),
        (
            b"apiVersion: kiln.dev/v1\nkind: Fleet\nname: Prod\n",
            "fleet.yaml:2:1: kind: wrong kind 'Fleet' (expected 'FleetConfig')\n"
            "fleet.yaml:3:1: name: invalid fleet name 'Prod' (lowercase letters, digits, '.', '_', '-')",
        ),
    ],
)
def test_invalid_configs(text: bytes, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_fleet_config(text, source="fleet.yaml")
    assert str(info.value) == expected


def rollout(text: bytes) -> Rollout | None:
    doc = parse_document(text, source="r.yaml", fmt="yaml", limit=10_000)
    checker = FieldChecker(doc)
    got = check_rollout(checker, doc.data["rollout"], "rollout")
    checker.finish()
    return got


def test_valid_rollout_round_trips() -> None:
    got = rollout(
        b"rollout:\n  waves:\n    - {group: canary, hosts: 1}\n    - {group: canary, soak: 10m}\n"
        b"    - {group: '*', max_parallel: 25%}\n    - {group: db, max_parallel: 2}\n"
    )
    assert got == Rollout(
        waves=(
            Wave(group="canary", hosts=1),
            Wave(group="canary", soak=600),
            Wave(group="*", max_parallel_percent=25),
            Wave(group="db", max_parallel=2),
        )
    )
    assert Rollout.from_dict(got.to_dict()) == got


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            b"rollout:\n  waves:\n    - {group: canary, hosts: 0}\n    - {group: '*', max_parallel: 150%}\n"
            b"    - {group: web, soak: 10}\n    - {grup: x}\n",
            "r.yaml:3:23: rollout.waves[0].hosts: out of range (1 to 100000)\n"
            "r.yaml:4:20: rollout.waves[1].max_parallel: invalid share '150%' "
            "(a number of hosts, or a percentage from 1% to 100%)\n"
            "r.yaml:5:20: rollout.waves[2].soak: expected a duration such as 10m, got integer "
            '(add a unit and quote it: soak: "10s")\n'
            "r.yaml:6:7: rollout.waves[3].group: missing required key\n"
            "r.yaml:6:8: rollout.waves[3].grup: unknown key (did you mean 'group'?)",
        ),
        (b"rollout: {waves: []}\n", "r.yaml:1:11: rollout.waves: must list at least one wave"),
        (
            b"rollout: {waves: [{group: Canary}]}\n",
            "r.yaml:1:20: rollout.waves[0].group: invalid group 'Canary' "
            "(lowercase letters, digits, '.', '_', '-', or '*')",
        ),
    ],
)
def test_invalid_rollouts(text: bytes, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        rollout(text)
    assert str(info.value) == expected
