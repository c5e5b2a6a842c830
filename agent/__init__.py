"""The host agent: content store, safe unpack, runtimes, rollouts, journal, reconcile loop.

May import: manifests, signing, publisher.
"""
