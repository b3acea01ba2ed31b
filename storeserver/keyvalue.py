"""Expiring keys (``kv_*`` commands): token revocations, one-off flags, small shared state.

A key is expired when ``clock() >= expires_at``. Expired keys are invisible at once, removed
when read, and swept from a heap of deadlines on every ``kv_*`` call (amortised O(log n)), at
most ``SWEEP_MAX`` per call: keys written together (a burst of logins) expire together, and
removing them all in one call would hold the store.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

SWEEP_MAX = 1000


class KeyValueStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._values: dict[str, tuple[Any, float | None]] = {}
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._values)

    def sweep(self) -> None:
        now = self._clock()
        deadlines, values = self._deadlines, self._values
        for _ in range(SWEEP_MAX):
            if not deadlines or deadlines[0][0] > now:
                break
            expires_at, key = heapq.heappop(deadlines)
            entry = values.get(key)
            if entry is not None and entry[1] == expires_at:
                del values[key]
        if len(deadlines) > 2 * len(values) + 1024:  # stale deadlines of rewritten keys
            self._deadlines = [(e, k) for k, (_, e) in values.items() if e is not None]
            heapq.heapify(self._deadlines)

    def get(self, key: str) -> Any:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] is not None and self._clock() >= entry[1]:
            del self._values[key]
            return None
        return entry[0]

    def contains(self, key: str) -> bool:
        entry = self._values.get(key)
        return entry is not None and (entry[1] is None or self._clock() < entry[1])

    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        self._values[key] = (value, expires_at)
        if expires_at is not None:
            heapq.heappush(self._deadlines, (expires_at, key))

    def entry(self, key: str) -> tuple[Any, float | None] | None:
        """The live ``(value, expires_at)`` of ``key``, for ``restore`` (a batch's undo)."""
        return self._values[key] if self.contains(key) else None

    def restore(self, key: str, entry: tuple[Any, float | None] | None) -> None:
        """Put back what ``entry`` read (``None``: no key), undoing a write in a failed batch."""
        if entry is None:
            self._values.pop(key, None)
        else:
            self.set(key, *entry)

    def items(self) -> Iterator[tuple[str, Any, float | None]]:
        """Live keys as (key, value, expires_at), for snapshots."""
        now = self._clock()
        for key, (value, expires_at) in self._values.items():
            if expires_at is None or now < expires_at:
                yield key, value, expires_at

    def delete(self, key: str) -> bool:
        existed = self.contains(key)
        self._values.pop(key, None)
        return existed
