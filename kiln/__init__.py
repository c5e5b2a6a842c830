"""kiln's front door: the ``kiln`` command, output formatting and exit codes."""

__version__ = "0.1.0"
