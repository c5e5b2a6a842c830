"""The OCI distribution client and publishing semantics (immutable version tags, channels).

May import: manifests, signing.

Modules:

- ``publisher.client``: :class:`~publisher.client.RegistryClient`, blobs (HEAD-skip, mount, monolithic
  or chunked resumable upload, verified streaming pull), manifests, tags, referrers with the
  ``sha256-<hex>`` tag fallback, concurrent pushes.
- ``publisher.transfer``: blob sources and results, byte-range bodies, the verified streaming download.
- ``publisher.session``: one registry's HTTP session: auth, bounded retries, capped reads.
- ``publisher.auth``: credentials (environment, Docker config, credential helpers), challenges, tokens.
- ``publisher.reference``: ``registry/repository[:tag][@digest]`` parsing and name rules.
- ``publisher.retry``: backoff with jitter and ``Retry-After``.
- ``publisher.errors``: the publisher's exception tree and the registry error-body translation.
- ``publisher.endpoint``: the ``Endpoint`` protocol (one repository, registry or ``oci:DIR``) and
  location parsing.
- ``publisher.layoutstore``: ``oci:DIR`` as one repository (the embedded default), locked tag updates.
- ``publisher.registrystore``: a registry repository as an ``Endpoint`` and as signing's ArtifactStore.
- ``publisher.copy``: an image's closure (platform manifests, blobs, ``.sig``/``.att``, referrers)
  copied byte for byte.
- ``publisher.publish``: publishing rules: immutable version tags, moving channel tags.
"""
