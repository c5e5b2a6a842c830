"""Keys, signatures, DSSE envelopes and trust policy. Verification is pure: bytes in, None out or
an exception.

Modules: ``keys`` (PublicKey, key ids = sha256 of the DER SPKI), ``keyfile`` (cosign encrypted
key files), ``signer`` (the Signer protocol; file, env:// and securesystemslib URIs), ``payload``
(simple-signing), ``dsse``, ``cosign`` (``.sig``/``.att`` manifests), ``verify``, ``attestation``,
``policy`` (trust policy), ``store`` (ArtifactStore, LayoutStore), ``image`` (sign/verify/attest
images in a store).

May import: manifests.
"""
