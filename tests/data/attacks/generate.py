"""Write the hostile layer tarballs in this directory, one per attack, named after it.

Run ``python tests/data/attacks/generate.py`` to regenerate them; ``tests/agent/test_unpack.py``
checks the committed files are byte-identical to what this writes. Every file is a single
uncompressed layer (``.tar``) or a gzip one (``.tar.gz``, for the bombs that are small only when
compressed). A tarball that plants something outside the root aims at
``/tmp/kiln-attack-planted`` so the tests can check nothing was written there.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLANTED = "/tmp/kiln-attack-planted"


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def _tar(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"pwned\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, size=len(data), mode=mode), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = _info(name, kind, mode=0o777)
    info.linkname = target
    return info, b""


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = _info(name, kind, mode=0o666)
    info.devmajor, info.devminor = (1, 3) if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (0, 0)
    return info, b""


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def dotdot_path() -> bytes:
    return _tar(_file("../../../../../../tmp/kiln-attack-planted"))


def dotdot_inner_path() -> bytes:
    return _tar(_file("usr/../../../../../../tmp/kiln-attack-planted"))


def absolute_path() -> bytes:
    return _tar(_file(PLANTED))


def pax_path_traversal() -> bytes:
    info, data = _file("harmless")
    info.pax_headers = {"path": "../../../../../../tmp/kiln-attack-planted"}
    return _tar((info, data), fmt=tarfile.PAX_FORMAT)


def gnu_longname_traversal() -> bytes:
    return _tar(_file("a" * 120 + "/../../../../../../../tmp/kiln-attack-planted"))


def absolute_symlink_write_through() -> bytes:
    # The link itself is allowed; writing through it is not.
    return _tar(_link("escape", "/"), _file("escape/tmp/kiln-attack-planted"))


def relative_symlink_escape() -> bytes:
    return _tar(_link("etc/up", "../../../../../../tmp"))


def inside_symlink_write_through() -> bytes:
    # Even a link that stays inside the root is never written through.
    return _tar((_info("real", tarfile.DIRTYPE, mode=0o755), b""), _link("alias", "real"), _file("alias/f"))


def hardlink_outside() -> bytes:
    return _tar(_link("passwd", "../../../../../../etc/passwd", tarfile.LNKTYPE))


def hardlink_absolute() -> bytes:
    return _tar(_link("passwd", "/etc/passwd", tarfile.LNKTYPE))


def hardlink_through_symlink() -> bytes:
    return _tar(_link("hostetc", "/etc"), _link("passwd", "hostetc/passwd", tarfile.LNKTYPE))


def hardlink_to_directory() -> bytes:
    return _tar((_info("d", tarfile.DIRTYPE, mode=0o755), b""), _link("h", "d", tarfile.LNKTYPE))


def device_node() -> bytes:
    return _tar(_special("dev/mem", tarfile.CHRTYPE))


def block_device() -> bytes:
    return _tar(_special("dev/sda", tarfile.BLKTYPE))


def fifo() -> bytes:
    return _tar(_special("run/pipe", tarfile.FIFOTYPE))


def setuid_without_label() -> bytes:
    return _tar(_file("usr/bin/su", b"\x7fELF", mode=0o4755))


def setgid_without_label() -> bytes:
    return _tar(_file("usr/bin/wall", b"\x7fELF", mode=0o2755))


def size_bomb() -> bytes:
    # 2 MiB of zeros in one file (the tests cap files at 1 MiB): about 2 KiB compressed.
    return _gz(_tar(_file("bomb", b"\0" * (2 << 20))))


def too_many_entries() -> bytes:
    # 2000 empty files (the tests cap an image at 1000 entries).
    return _gz(_tar(*(_file(f"f{i:05d}", b"") for i in range(2000))))


def whiteout_through_symlink() -> bytes:
    # Tries to delete /tmp/kiln-attack-planted on the host through an absolute link.
    return _tar(_link("escape", "/tmp"), (_info("escape/.wh.kiln-attack-planted"), b""))


def whiteout_dotdot() -> bytes:
    return _tar((_info("../.wh.kiln-attack-planted"), b""))


def whiteout_parent() -> bytes:
    return _tar((_info("etc/.wh.."), b""))


def pax_header_bomb() -> bytes:
    # A PAX extended header announcing 64 MiB (over the 1 MiB cap) that the stream never delivers.
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % (64 << 20)
    header[136:148] = b"00000000000\0"
    header[156:157] = b"x"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"\0" * 1024


def unsupported_type() -> bytes:
    info, data = _file("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    return _tar((info, data))


ATTACKS: dict[str, Callable[[], bytes]] = {
    "dotdot-path.tar": dotdot_path,
    "dotdot-inner-path.tar": dotdot_inner_path,
    "absolute-path.tar": absolute_path,
    "pax-path-traversal.tar": pax_path_traversal,
    "gnu-longname-traversal.tar": gnu_longname_traversal,
    "absolute-symlink-write-through.tar": absolute_symlink_write_through,
    "relative-symlink-escape.tar": relative_symlink_escape,
    "inside-symlink-write-through.tar": inside_symlink_write_through,
    "hardlink-outside.tar": hardlink_outside,
    "hardlink-absolute.tar": hardlink_absolute,
    "hardlink-through-symlink.tar": hardlink_through_symlink,
    "hardlink-to-directory.tar": hardlink_to_directory,
    "device-node.tar": device_node,
    "block-device.tar": block_device,
    "fifo.tar": fifo,
    "setuid-without-label.tar": setuid_without_label,
    "setgid-without-label.tar": setgid_without_label,
    "size-bomb.tar.gz": size_bomb,
    "too-many-entries.tar.gz": too_many_entries,
    "whiteout-through-symlink.tar": whiteout_through_symlink,
    "whiteout-dotdot.tar": whiteout_dotdot,
    "whiteout-parent.tar": whiteout_parent,
    "pax-header-bomb.tar": pax_header_bomb,
    "unsupported-type.tar": unsupported_type,
}


def main() -> int:
    for name, make in ATTACKS.items():
        (HERE / name).write_bytes(make())
    sys.stderr.write(f"wrote {len(ATTACKS)} attack files to {HERE}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
