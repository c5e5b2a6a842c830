"""The OCI distribution client and publishing semantics (immutable version tags, channels).

May import: manifests, signing.
"""
