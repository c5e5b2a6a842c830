"""The fleet package's errors.

::

    KilnError
    └── FleetError                  coordination failed or was refused
        ├── EtcdUnavailable         etcd did not answer, or answered with an error (UnavailableError)
        └── EtcdResponseError       etcd's answer was not what its API promises (DocumentError)
"""

from __future__ import annotations

from manifests.errors import DocumentError, KilnError, UnavailableError

__all__ = ["FleetError", "EtcdUnavailable", "EtcdResponseError"]


class FleetError(KilnError):
    """Fleet coordination failed or was refused."""


class EtcdUnavailable(FleetError, UnavailableError):
    """etcd could not be reached, or refused the request."""


class EtcdResponseError(FleetError, DocumentError):
    """etcd answered with something its API does not produce."""
