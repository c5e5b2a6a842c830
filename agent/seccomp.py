"""kiln's default seccomp profile: the system calls an instance may make, everything else EPERM.

The semantics are Docker's default profile (deny by default with ``EPERM``, an allowlist of the
calls ordinary services make, argument filters on ``clone`` and ``personality``, ``clone3``
answered with ``ENOSYS`` so the C library falls back to the filtered ``clone``). The list is kiln's
own, grouped by what the calls are for, and stricter where kiln's sandbox makes a call useless or
risky: instances hold no capabilities, so every call Docker allows only with a capability
(``mount``, ``unshare``, ``setns``, ``bpf``, ``perf_event_open``, ``reboot``, module loading,
clock setting, ...) is simply absent; so are ``ptrace``, ``process_vm_readv``/``writev`` and
``pidfd_getfd`` (debugging another process is no service's job), the keyring calls
(``add_key``, ``keyctl``, ``request_key``: not namespaced), ``io_uring`` (a large kernel attack
surface) and ``userfaultfd``. ``socket`` is allowed for every family but ``AF_VSOCK`` (a channel
to the hypervisor host).

:func:`seccomp_profile` returns the OCI runtime-spec ``linux.seccomp`` object for the machine's
architecture; the docker engine takes the same JSON document through ``security_opt``. Names a
kernel or libseccomp does not know are skipped by runc, so one list serves x86_64 and arm64.
See docs/adr/0012-instance-sandbox.md for the choices.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

from agent.errors import BundleError

__all__ = [
    "ALLOWED_SYSCALLS",
    "ARCH_SYSCALLS",
    "CLONE_NAMESPACE_FLAGS",
    "PERSONALITY_ALLOWED",
    "seccomp_profile",
]

# -- what any process needs to exist --------------------------------------------------------------
_PROCESS = (
    "execve execveat exit exit_group fork vfork wait4 waitid waitpid getpid getppid gettid getpgid "
    "getpgrp getsid setpgid setsid set_tid_address set_robust_list get_robust_list rseq "
    "restart_syscall prctl prlimit64 getrlimit setrlimit ugetrlimit getrusage times sysinfo uname "
    "getcpu getpriority setpriority ioprio_get ioprio_set umask seccomp membarrier"
)
# -- identities: a process may change among ids it already holds (no capability to do more)
_IDS = (
    "getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid getresuid32 "
    "getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32 setreuid setreuid32 "
    "setregid setregid32 setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid "
    "setfsgid32 setgroups setgroups32 capget capset"
)
# -- signals
_SIGNALS = (
    "kill tkill tgkill rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_tgsigqueueinfo "
    "rt_sigreturn sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 sigaltstack "
    "sigprocmask signalfd signalfd4 pidfd_open pidfd_send_signal pause"
)
# -- memory
_MEMORY = (
    "brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 munlock mlockall "
    "munlockall remap_file_pages memfd_create memfd_secret pkey_alloc pkey_free pkey_mprotect "
    "map_shadow_stack process_mrelease"
)
# -- threads, futexes, scheduling
_THREADS = (
    "futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue sched_yield sched_getaffinity "
    "sched_setaffinity sched_getattr sched_setattr sched_getparam sched_setparam sched_getscheduler "
    "sched_setscheduler sched_get_priority_max sched_get_priority_min sched_rr_get_interval "
    "sched_rr_get_interval_time64 get_thread_area set_thread_area"
)
# -- time (reading it, sleeping, timers; setting the clock needs CAP_SYS_TIME)
_TIME = (
    "time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep "
    "clock_nanosleep_time64 nanosleep alarm getitimer setitimer timer_create timer_delete "
    "timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create "
    "timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64"
)
# -- files and directories
_FILES = (
    "open openat openat2 creat close close_range read readv pread64 preadv preadv2 write writev "
    "pwrite64 pwritev pwritev2 lseek _llseek dup dup2 dup3 fcntl fcntl64 flock fsync fdatasync "
    "sync syncfs sync_file_range sync_file_range2 fadvise64 fadvise64_64 arm_fadvise64_64 readahead "
    "fallocate truncate truncate64 ftruncate ftruncate64 sendfile sendfile64 splice tee vmsplice "
    "copy_file_range stat stat64 lstat lstat64 fstat fstat64 newfstatat fstatat64 statx statfs "
    "statfs64 fstatfs fstatfs64 access faccessat faccessat2 getcwd chdir fchdir getdents getdents64 "
    "mkdir mkdirat rmdir rename renameat renameat2 link linkat unlink unlinkat symlink symlinkat "
    "readlink readlinkat chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32 lchown lchown32 "
    "fchownat utime utimes utimensat utimensat_time64 futimesat mknod mknodat name_to_handle_at "
    "getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr listxattr llistxattr flistxattr "
    "removexattr lremovexattr fremovexattr ioctl cachestat"
)
# -- waiting for events
_EVENTS = (
    "select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create epoll_create1 "
    "epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2 "
    "inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark pipe pipe2 "
    "io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64"
)
# -- sockets (``socket`` itself is filtered below)
_NETWORK = (
    "socketpair bind listen accept accept4 connect shutdown getsockname getpeername getsockopt "
    "setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 socketcall"
)
# -- System V and POSIX IPC (namespaced: the instance has its own ipc namespace)
_IPC = (
    "ipc shmget shmat shmdt shmctl semget semop semtimedop semtimedop_time64 semctl msgget msgsnd "
    "msgrcv msgctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive "
    "mq_timedreceive_time64 mq_notify mq_getsetattr"
)
# -- a process may sandbox itself further
_SELF_SANDBOX = "landlock_create_ruleset landlock_add_rule landlock_restrict_self"

ALLOWED_SYSCALLS: tuple[str, ...] = tuple(
    sorted(
        {
            name
            for group in (
                _PROCESS,
                _IDS,
                _SIGNALS,
                _MEMORY,
                _THREADS,
                _TIME,
                _FILES,
                _EVENTS,
                _NETWORK,
                _IPC,
                _SELF_SANDBOX,
            )
            for name in group.split()
        }
    )
)

# Calls that exist only on some architectures (the TLS and segment calls of x86).
ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": (),
}

# platform.machine() -> the seccomp architectures a process of that machine may use (64-bit
# kernels run the 32-bit ABIs too; the filter must cover them or a 32-bit call would bypass it).
_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}

# clone() is allowed unless it asks for a new namespace: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC
# | NEWUSER | NEWPID | NEWNET (0x7e020000). (The flags are clone's first argument on x86_64 and
# arm64.) clone3 passes its flags in memory a filter cannot read, so it answers ENOSYS and the C
# library falls back to clone.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(): only the default persona, the 32-bit one, their UNAME26 variants, and queries.
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_AF_VSOCK = 40


def _machine(machine: str | None) -> str:
    name = (machine or platform.machine()).lower()
    name = _MACHINES.get(name, name)
    if name not in _ARCHES:
        raise BundleError(
            f"no seccomp profile for the {name} architecture",
            hint="kiln's default profile covers x86_64 and aarch64",
        )
    return name


def seccomp_profile(machine: str | None = None) -> dict[str, Any]:
    """The ``linux.seccomp`` object of an OCI ``config.json`` (also docker's profile format)."""
    name = _machine(machine)
    allowed = sorted({*ALLOWED_SYSCALLS, *ARCH_SYSCALLS[name]})
    rules: list[dict[str, Any]] = [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    rules.append(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    )
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    rules += [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
        }
        for value in PERSONALITY_ALLOWED
    ]
    rules.append(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}],
        }
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": list(_ARCHES[name]),
        "syscalls": rules,
    }
