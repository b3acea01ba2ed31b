"""The store's resident memory, read cheaply enough to check before every write."""

from __future__ import annotations

import os
import resource
import time

import structlog

log = structlog.get_logger("storeserver.memory")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> int:
    """Resident set size of this process in bytes (from /proc, else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryGauge:
    """RSS against a limit, re-read at most every ``refresh_s`` so writes stay cheap.

    Like Redis's ``noeviction`` policy: past the limit, writes are refused and reads go on.
    A limit of 0 means none.
    """

    def __init__(self, limit_bytes: int, refresh_s: float = 0.1) -> None:
        self.limit = limit_bytes
        self._refresh_s = refresh_s
        self._rss = read_rss()
        self._read_at = time.monotonic()
        self._over = False  # at the last check

    def rss(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= self._refresh_s:
            self._rss = read_rss()
            self._read_at = now
        return self._rss

    def over_limit(self) -> bool:
        """Whether writes that add data are refused; the first refusal after any accepted
        check, and the first accepted check after refusals, are logged (once per crossing:
        an operator sees the state change, not one line per refused write)."""
        over = self.limit > 0 and self.rss() >= self.limit
        if over != self._over:
            self._over = over
            if over:
                log.warning("memory_limit_reached", rss=self._rss, max_memory=self.limit)
            else:
                log.info("memory_limit_cleared", rss=self._rss, max_memory=self.limit)
        return over
