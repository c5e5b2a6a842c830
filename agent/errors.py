"""The agent's exceptions, under kiln's root in :mod:`manifests.errors`.

::

    KilnError
    └── AgentError                  the host agent
        ├── StoreError              the local content store (a blob is missing, cannot be written)
        ├── BundleError             a runtime bundle cannot be made (nothing to run, bad env override)
        ├── InstanceError           an instance id is malformed, unknown or already taken
        └── RuntimeFailure          runc, the docker engine or ``ip netns`` failed (also UnavailableError)

Bad or hostile input is never an ``AgentError``: a blob whose hash differs, a layer that tries to
escape its root, an image that wants uid 0 all raise :class:`manifests.errors.VerificationError`
(``reason`` ``digest``, ``unpack``, ``size`` or ``policy``), so a caller can tell "refused" from
"broken".
"""

from __future__ import annotations

from manifests.errors import KilnError, UnavailableError

__all__ = [
    "AgentError",
    "StoreError",
    "BundleError",
    "InstanceError",
    "RuntimeFailure",
    "STOP_FAILURES",
    "failure_detail",
]

# What stopping an instance can raise besides kiln's own errors: a bundle directory, mount or
# network namespace that will not go is an OSError, and the agent carries on past it all the same.
STOP_FAILURES: tuple[type[Exception], ...] = (KilnError, OSError)


def failure_detail(exc: BaseException) -> str:
    """The text an ``error`` event carries for ``exc``: a KilnError's message, else what it says."""
    return exc.message if isinstance(exc, KilnError) else str(exc) or type(exc).__name__


class AgentError(KilnError):
    """Base of the host agent's errors."""


class StoreError(AgentError):
    """The local content store cannot do what was asked (a blob is missing, a write failed)."""


class BundleError(AgentError):
    """An OCI runtime bundle cannot be made (nothing to run, a bad env override, a missing volume).

    A malformed ``dev.kiln.*`` label is a :class:`~manifests.errors.DocumentError`; an image that
    wants uid 0 is a :class:`~manifests.errors.VerificationError` with ``reason="policy"``.
    """


class InstanceError(AgentError):
    """An instance id is malformed, unknown to the runtime, or already in use."""


class RuntimeFailure(AgentError, UnavailableError):
    """A runtime tool failed: runc, the docker engine, ``ip netns``. Not the image's fault."""
