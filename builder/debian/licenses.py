"""Licenses of a Debian package, from its machine-readable ``copyright`` file (DEP-5).

Only files that declare the DEP-5 ``Format`` are read; each ``License:`` short name of a stanza
is mapped to an SPDX identifier where Debian's name has a known one. Names without a mapping are
left out (the SBOM says ``NOASSERTION`` when nothing is left), so the SBOM never carries an
expression the SPDX validator would reject.
"""

from __future__ import annotations

import re

__all__ = ["debian_licenses", "spdx_expression", "SPDX_IDS"]

SPDX_IDS = {
    "gpl-1": "GPL-1.0-only",
    "gpl-1+": "GPL-1.0-or-later",
    "gpl-2": "GPL-2.0-only",
    "gpl-2+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later",
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-2.1+": "LGPL-2.1-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
    "agpl-3": "AGPL-3.0-only",
    "agpl-3+": "AGPL-3.0-or-later",
    "gfdl-1.2+": "GFDL-1.2-or-later",
    "gfdl-1.3+": "GFDL-1.3-or-later",
    "apache-2.0": "Apache-2.0",
    "artistic": "Artistic-1.0-Perl",
    "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "expat": "MIT",
    "mit": "MIT",
    "isc": "ISC",
    "zlib": "Zlib",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "psf-2": "PSF-2.0",
    "python": "Python-2.0",
    "openssl": "OpenSSL",
    "curl": "curl",
    "x11": "X11",
    "cc0-1.0": "CC0-1.0",
    "ftl": "FTL",
    "ofl-1.1": "OFL-1.1",
    "sleepycat": "Sleepycat",
    "bsl-1.0": "BSL-1.0",
    "unicode": "Unicode-DFS-2016",
    "w3c": "W3C",
    "zpl-2.1": "ZPL-2.1",
    "gpl-2.0+": "GPL-2.0-or-later",
    "gpl-3.0+": "GPL-3.0-or-later",
    "lgpl-2.1-or-later": "LGPL-2.1-or-later",
}
_FORMAT = re.compile(r"^Format:\s*\S*copyright-format/1\.0", re.MULTILINE)
_LICENSE = re.compile(r"^License:[ \t]*([^\n]*)", re.MULTILINE)
_SPLIT = re.compile(r"\s+(?:or|and|,)\s+|\s*,\s*", re.IGNORECASE)


def debian_licenses(copyright_text: str) -> tuple[str, ...]:
    """The SPDX identifiers of the license names a DEP-5 copyright file uses (sorted)."""
    if not _FORMAT.search(copyright_text[:4096]):
        return ()
    found: set[str] = set()
    for m in _LICENSE.finditer(copyright_text):
        for name in _SPLIT.split(m.group(1).strip()):
            key = name.strip().lower().removesuffix(" with exception")
            key = re.sub(r"\s+with\s+.*$", "", key)
            spdx = SPDX_IDS.get(key)
            if spdx is not None:
                found.add(spdx)
    return tuple(sorted(found))


def spdx_expression(licenses: tuple[str, ...]) -> str:
    """``A AND B`` over the package's licenses, or ``NOASSERTION``."""
    return " AND ".join(licenses) if licenses else "NOASSERTION"
