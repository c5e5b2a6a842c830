"""Image manifest → artifacts on disk: sources, the normalized file tree, deterministic layers,
compression, OCI layouts and archives, the build cache.

May import: manifests, signing.
"""
