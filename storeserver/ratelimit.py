"""Fixed-window rate counters shared by every API worker (``rate_hit``, ``rate_refund``).

A window opens at the first hit of a key and lasts ``window`` seconds; exactly ``limit`` hits
are allowed in it, refused hits do not count. Counters are not journaled: they are ephemeral.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

SWEEP_MAX = 1000
"""Ended windows removed per call at most (each ``hit`` sweeps)."""


class FixedWindowCounters:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, list[Any]] = {}  # key -> [ends_at, hits]
        self._ends: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        # At most SWEEP_MAX per call: windows opened together (a burst of new clients) end
        # together, and removing 100k at once would hold the store. An ended window still
        # present is never used (``hit`` opens a new one), so the rest can wait a call.
        ends, windows = self._ends, self._windows
        if not ends or ends[0][0] > now:
            return  # the common case: nothing ended (every request's rate_hit comes here)
        for _ in range(SWEEP_MAX):
            if not ends or ends[0][0] > now:
                break
            ends_at, key = heapq.heappop(ends)
            state = windows.get(key)
            if state is not None and state[0] == ends_at:
                del windows[key]

    def hit(self, key: str, limit: int, window: float) -> dict[str, Any]:
        now = self._clock()
        self._sweep(now)
        state = self._windows.get(key)
        if state is None or now >= state[0]:
            state = [now + window, 0]
            self._windows[key] = state
            heapq.heappush(self._ends, (state[0], key))
        allowed = state[1] < limit
        if allowed:
            state[1] += 1
        return {"allowed": allowed, "remaining": max(limit - state[1], 0), "reset": state[0]}

    def refund(self, key: str, ends_at: float | None = None) -> bool:
        """Take back one counted hit of ``key``'s current window; with ``ends_at`` (the
        ``reset`` its hit was answered), only if that is the window the hit was counted in.

        Windows of one key end at strictly increasing times, so ``ends_at`` names one: a hit
        counted in a window that has ended since is not taken from the next one (whose hits
        may be someone else's). ``True`` if a hit was taken back."""
        state = self._windows.get(key)
        if state is None or self._clock() >= state[0] or state[1] == 0:
            return False
        if ends_at is not None and state[0] != ends_at:
            return False
        state[1] -= 1
        return True
