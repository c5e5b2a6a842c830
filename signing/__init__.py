"""Keys, signatures, DSSE envelopes and trust policy. Verification is pure: bytes in, None out or
an exception.

May import: manifests.
"""
