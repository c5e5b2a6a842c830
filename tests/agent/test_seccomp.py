"""kiln's default seccomp profile as data: deny by default, the allowlist, the argument filters."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from agent.errors import BundleError
from agent.seccomp import (
    ALLOWED_SYSCALLS,
    CLONE_NAMESPACE_FLAGS,
    PERSONALITY_ALLOWED,
    seccomp_profile,
)

# Calls a service must not make (each would need a capability, reaches outside the instance's
# namespaces, or is a large attack surface): none may be allowed, with or without arguments.
REFUSED = (
    "add_key", "keyctl", "request_key", "mount", "umount2", "pivot_root", "unshare", "setns", "bpf",
    "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "fsopen", "fsmount", "move_mount", "open_tree", "lookup_dcookie", "quotactl", "syslog",
    "uselib", "vhangup", "sethostname", "setdomainname", "chroot",
)  # fmt: skip


def allowed_names(profile: dict[str, Any]) -> set[str]:
    return {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]}


@pytest.mark.parametrize(
    ("machine", "arches", "extra"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], {"arch_prctl", "modify_ldt"}),
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], {"arch_prctl"}),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], set()),
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], set()),
    ],
)
def test_profile_denies_by_default_with_eperm(machine: str, arches: list[str], extra: set[str]) -> None:
    profile = seccomp_profile(machine)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    assert profile["architectures"] == arches
    names = allowed_names(profile)
    assert extra <= names
    if not extra:
        assert "arch_prctl" not in names
    for call in ("read", "write", "openat", "execve", "futex", "epoll_pwait", "accept4", "exit_group"):
        assert call in names


@pytest.mark.parametrize("call", REFUSED)
def test_refused_calls_are_not_in_the_allowlist(call: str) -> None:
    assert call not in allowed_names(seccomp_profile("x86_64"))


def test_argument_filters() -> None:
    rules = seccomp_profile("x86_64")["syscalls"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        for name in rule["names"]:
            by_name.setdefault(name, []).append(rule)
    # clone only without namespace flags; clone3 says ENOSYS so libc falls back to clone.
    assert by_name["clone"] == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    assert by_name["clone3"] == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    values = [r["args"][0]["value"] for r in by_name["personality"]]
    assert values == list(PERSONALITY_ALLOWED)
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in by_name["personality"])
    assert 0x0040000 not in values  # ADDR_NO_RANDOMIZE: refused
    assert by_name["socket"][0]["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    # Nothing filtered by argument is also allowed unconditionally.
    unconditional = {
        n for r in rules if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r for n in r["names"]
    }
    assert not unconditional & {"clone", "clone3", "personality", "socket"}


def test_allowlist_is_sorted_unique_and_plausible() -> None:
    assert list(ALLOWED_SYSCALLS) == sorted(set(ALLOWED_SYSCALLS))
    assert 250 < len(ALLOWED_SYSCALLS) < 400
    assert all(name.replace("_", "").isalnum() and name == name.lower() for name in ALLOWED_SYSCALLS)


def test_profile_is_a_fresh_value_each_time() -> None:
    a = seccomp_profile("x86_64")
    a["syscalls"].clear()
    assert seccomp_profile("x86_64")["syscalls"]


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(BundleError, match="no seccomp profile for the riscv64 architecture"):
        seccomp_profile("riscv64")
