"""kiln's front door: the ``kiln`` command, output formatting and exit codes."""

from manifests.version import VERSION as __version__

__all__ = ["__version__"]
