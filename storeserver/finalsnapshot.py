"""Stopping with writes only memory holds: the final snapshot, retried while it fails.

Separate from ``durability``, whose ``close`` calls it, because it is the one place where
stopping may wait, and the one that decides to report writes lost (``WritesLost``, exit 4).

Stopping: ``close`` flushes and writes a final snapshot. If that fails while writes are missing
from the files (``unsaved_writes``: a log write or fsync failed since the last snapshot that
recovered), exiting would drop them, acknowledged ones included (every write under
``everysec`` and ``no``). Redis refuses to shut down when its final save fails; here the
snapshot is retried every ``STOP_RETRY_INTERVAL`` for ``STOP_RETRY_SECONDS`` with a critical
line each time (free space and it saves and exits 0), then ``WritesLost``. When nothing is
missing (the logs hold every write) a failed final snapshot is raised at once: the next start
replays the logs.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import structlog

from .snapshots import ensure_snapshot_dir, write_snapshot

if TYPE_CHECKING:
    from .durability import Durability

log = structlog.get_logger("storeserver.finalsnapshot")

STOP_RETRY_SECONDS = 30.0
"""How long a stop retries a final snapshot that would save writes missing from the files.
deploy/supervisord.conf ``stopwaitsecs`` and compose's ``stop_grace_period`` must exceed it,
plus the snapshot's own time, or the launcher's SIGKILL ends the retries unannounced."""

STOP_RETRY_INTERVAL = 1.0


class WritesLost(Exception):
    """The store stopped with writes that only its memory held (the final snapshot never fit)."""

    def __init__(self, count: int, acknowledged: bool) -> None:
        kind = "acknowledged" if acknowledged else "unacknowledged"
        super().__init__(f"{count} {kind} writes lost")
        self.count = count


def write_final_snapshot(durability: Durability, generation: int) -> int:
    """Write the snapshot of a stopping store (its log of ``generation`` closed); retried
    while writes only memory holds would be lost (``Durability.unsaved_writes``)."""
    deadline: float | None = None
    while True:
        try:
            ensure_snapshot_dir(durability.dir.snapshot)
            return write_snapshot(
                durability.dir.snapshot, generation, durability.engine.iter_state()
            )
        except OSError as exc:
            unsaved = durability.unsaved_writes
            if not unsaved:
                raise  # the logs hold every write: the next start replays them
            acknowledged = durability.policy != "always"  # ``always`` aborted their replies
            now = time.monotonic()
            if deadline is None:
                deadline = now + STOP_RETRY_SECONDS
            if now >= deadline:
                lost = WritesLost(unsaved, acknowledged)
                log.critical(
                    "writes_lost",
                    message=str(lost),
                    writes=unsaved,
                    acknowledged=acknowledged,
                    error=str(exc),
                    data_dir=str(durability.dir.root),
                )
                raise lost from exc
            kind = "acknowledged" if acknowledged else "unacknowledged"
            log.critical(
                "final_snapshot_failed",
                message=f"{unsaved} {kind} writes are not on disk: free space in"
                f" {durability.dir.root} within {math.ceil(deadline - now)} s and the store"
                " saves them and stops; otherwise they are lost",
                writes=unsaved,
                acknowledged=acknowledged,
                error=str(exc),
                data_dir=str(durability.dir.root),
                retry_for_s=round(deadline - now, 1),
            )
            time.sleep(STOP_RETRY_INTERVAL)
