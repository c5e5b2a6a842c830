"""What maintainer scripts would have done, applied declaratively (no script ever runs).

The list (docs/debian.md repeats it):

1. **merged /usr links**: ``/bin``, ``/sbin``, ``/lib`` and, where the packages ship them,
   ``/lib64``, ``/lib32``, ``/libx32`` become symlinks into ``/usr`` (what ``usrmerge`` and
   debootstrap do); on amd64 that gives the ``/lib64/ld-linux-x86-64.so.2`` path every
   executable names as its interpreter.
2. **dpkg status for scanners**: ``/var/lib/dpkg/status.d/<package>`` holds each package's control
   stanza (the distroless convention that syft, trivy and grype read).
3. **CA bundle**: with ``ca-certificates``, ``/etc/ssl/certs/ca-certificates.crt`` is the
   concatenation of every ``/usr/share/ca-certificates/**.crt`` in path order (what
   ``update-ca-certificates`` writes with the default configuration, which enables them all).
4. **alternatives**: the links ``update-alternatives`` would make for the packages' known
   alternatives (:data:`ALTERNATIVES`), highest priority first, pointing straight at the chosen
   program (no ``/etc/alternatives`` indirection).
5. **accounts**: ``/etc/passwd`` and ``/etc/group`` come from the manifest's ``accounts``
   (written by the builder as for every image), not from ``base-passwd``'s scripts.

Not done (and why): ``ldconfig`` (``/etc/ld.so.cache``; glibc searches the default directories
without it); byte-compiling Python (``py3compile``): a ``.pyc`` is specific to the interpreter
version, so kiln would run either the build host's interpreter (its version varies by machine) or
the image's (code from the packages at build time), and either breaks "same lock, same digest";
a read-only root runs from source. ``systemd``/``init`` hooks, ``debconf`` questions, users
created by ``adduser`` in postinst (the image runs as the manifest's account).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.debian.extract import PackageInfo, _Extractor

__all__ = ["ALTERNATIVES", "apply_effects"]

# (link, program, priority) per package, as the package's postinst registers them.
ALTERNATIVES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "mawk": (("/usr/bin/awk", "/usr/bin/mawk", 5), ("/usr/bin/nawk", "/usr/bin/mawk", 5)),
    "gawk": (("/usr/bin/awk", "/usr/bin/gawk", 10), ("/usr/bin/nawk", "/usr/bin/gawk", 10)),
    "original-awk": (("/usr/bin/awk", "/usr/bin/original-awk", 0),),
    "less": (("/usr/bin/pager", "/usr/bin/less", 77),),
    "vim-tiny": (("/usr/bin/vi", "/usr/bin/vim.tiny", 15), ("/usr/bin/editor", "/usr/bin/vim.tiny", 15)),
    "nano": (("/usr/bin/editor", "/usr/bin/nano", 40),),
    "netcat-openbsd": (
        ("/usr/bin/nc", "/usr/bin/nc.openbsd", 50),
        ("/usr/bin/netcat", "/usr/bin/nc.openbsd", 50),
    ),
    "python3-minimal": (),
}


def apply_effects(ex: _Extractor, packages: Sequence[PackageInfo], architecture: str) -> tuple[str, ...]:
    """Apply the effects to the root being extracted; returns a description of each one applied."""
    done: list[str] = []
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if ex.kinds.get(f"/usr/{top}", ("",))[0] == "dir" and f"/{top}" not in ex.kinds:
            ex.add_symlink(f"/{top}", f"usr/{top}")
            done.append(f"merged-usr /{top} -> usr/{top}")
    for info in packages:
        ex.add_generated(f"/var/lib/dpkg/status.d/{info.name}", info.control.encode())
    if packages:
        done.append(f"dpkg status.d entries for {len(packages)} packages")
    names = {p.name for p in packages}
    if "ca-certificates" in names:
        certs = sorted(
            p
            for p, (kind, _) in ex.kinds.items()
            if kind == "file" and p.startswith("/usr/share/ca-certificates/") and p.endswith(".crt")
        )
        bundle = b"".join((ex.read(p) or b"").rstrip(b"\n") + b"\n" for p in certs)
        ex.add_generated("/etc/ssl/certs/ca-certificates.crt", bundle)
        done.append(f"CA bundle from {len(certs)} certificates")
    links: dict[str, tuple[int, str]] = {}
    for name in sorted(names):
        for link, program, priority in ALTERNATIVES.get(name, ()):
            if ex.kinds.get(program, ("",))[0] not in ("file", "symlink"):
                continue
            best = links.get(link)
            if best is None or (priority, program) > best:
                links[link] = (priority, program)
    for link, (_, program) in sorted(links.items()):
        if link not in ex.kinds:
            ex.add_symlink(link, program)
            done.append(f"alternative {link} -> {program}")
    del architecture
    return tuple(done)
