"""Shared-memory transport between skald processes: the PCM ring (see ``shm.ring``)."""

from shm.ring import (
    HEADER_BYTES,
    LAYOUT_VERSION,
    MAGIC,
    MIN_CAPACITY_FRAMES,
    PcmRing,
    PeerDeadError,
    Role,
    pid_running,
)

__all__ = [
    "HEADER_BYTES",
    "LAYOUT_VERSION",
    "MAGIC",
    "MIN_CAPACITY_FRAMES",
    "PcmRing",
    "PeerDeadError",
    "Role",
    "pid_running",
]
