"""Coordination between hosts: rollout slots and waves on etcd, the FleetLock protocol, fleet status.

Nothing about who holds what lives outside etcd: slots are keys under a lease, progress and halts
are plain keys, and every agent decides for itself from one consistent read (:mod:`fleet.waves`).
"""
