"""A settable clock for engine tests (``Engine(clock=...)`` reads time only through it)."""

from __future__ import annotations

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250000Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
