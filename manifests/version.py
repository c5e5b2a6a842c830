"""kiln's version: the one place it is written (pyproject.toml reads it from here), cheap to import
from every package that records it in what it writes (SBOMs, provenance, User-Agent headers)."""

VERSION = "0.1.0"
