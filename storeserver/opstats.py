"""Per-command latency statistics: count, cumulative seconds and a fixed-bucket histogram.

The server adds one entry per command it answers (``StoreServer._account``) and reads them
back for the ``stats`` command, which the API turns into metrics. Kept apart from the server
because it is plain arithmetic on counters, with no I/O and no event loop, testable alone.
"""

from __future__ import annotations

import math
from typing import Any

_BUCKETS_PER_DOUBLING = 4
_BUCKET_OFFSET = 128.0  # 2**-32 s and below would be bucket 0; add() adds 1 ns: no clamping
_BUCKETS = 256  # up to 2**32 s


class _CommandStats:
    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * _BUCKETS


class OpStats:
    """Count, cumulative seconds and a latency histogram per command, for stats and metrics.

    The histogram has fixed buckets, four per doubling of the duration (each about 19 % wide),
    so ``add`` costs one ``log2`` and a list increment; percentiles are read off it (to the
    bucket's middle) only when ``stats`` asks.
    """

    __slots__ = ("by_command",)

    def __init__(self) -> None:
        self.by_command: dict[str, _CommandStats] = {}

    def add(self, command: str, elapsed: float) -> None:
        entry = self.by_command.get(command)
        if entry is None:
            entry = self.by_command[command] = _CommandStats()
        entry.count += 1
        entry.seconds += elapsed
        # 4.0 is _BUCKETS_PER_DOUBLING (a literal: this line runs for every command)
        entry.buckets[int(_log2(elapsed + 1e-9) * 4.0 + _BUCKET_OFFSET)] += 1

    def as_dict(self) -> dict[str, Any]:
        out = {}
        for name, entry in self.by_command.items():
            p50, p95, p99 = _percentiles(entry.buckets, entry.count, (0.5, 0.95, 0.99))
            out[name] = {
                "count": entry.count,
                "seconds": round(entry.seconds, 6),
                "p50": p50,
                "p95": p95,
                "p99": p99,
            }
        return out


_log2 = math.log2


def _percentiles(buckets: list[int], count: int, quantiles: tuple[float, ...]) -> list[float]:
    out = []
    seen = 0
    wanted = iter(quantiles)
    quantile = next(wanted, None)
    for bucket, n in enumerate(buckets):
        seen += n
        while quantile is not None and n and seen >= quantile * count:
            middle = (bucket - _BUCKET_OFFSET + 0.5) / _BUCKETS_PER_DOUBLING
            out.append(float(f"{2.0**middle:.3g}"))
            quantile = next(wanted, None)
    return out + [0.0] * (len(quantiles) - len(out))
