"""kiln's front door: the ``kiln`` command, output formatting and exit codes."""

import sys

from manifests.version import VERSION as __version__

# httpx's __init__ loads its own command-line tool (httpx._main) whenever click, pygments and rich
# are installed, and they are here (rich draws kiln's progress bars): about 100 modules that no
# kiln command uses, loaded by every one that talks to a registry. A ``None`` entry in sys.modules
# makes that one import fail with ImportError, and httpx then defines a stub ``main`` instead.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__all__ = ["__version__"]
