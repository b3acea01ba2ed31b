"""``GET /admin/stats``: the store's own stats, plus an estimate of each table's memory.

The store reports its resident memory as a whole. Per table, the estimate is the number of
rows times the in-memory size of an average row, measured on a small sample read through
``find`` (the decoded records are the same kind of Python objects the store holds). Hidden
fields are not read, so tables with them are slightly underestimated; indexes are not counted.
Rows too big for a sample of ``SAMPLE_ROWS`` to fit in one store reply are sampled one at a
time (a record is at most half a reply); a table whose first row still does not fit (kept by
an older store, before the record limit) has no estimate (``None``), nor has a table dropped
between the stats and its sample (QA: a table dropped at that moment made the whole answer a
404 naming it, to an operator who never asked for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from api.store import Store
from storeserver.errors import LimitExceeded, NotFound

SAMPLE_ROWS = 20


async def read_stats(store: Store) -> dict[str, Any]:
    """Tables (rows, estimated memory, indexes), store memory and limit, operations with
    counts and latency percentiles, slow operations, clients, persistence, uptime, version."""
    stats: dict[str, Any] = await store.call("stats", {})
    tables: dict[str, dict[str, Any]] = stats.get("tables", {})
    missing = [name for name, info in tables.items() if "estimated_bytes" not in info]
    sizes = await asyncio.gather(*(_estimate(store, name, tables[name]) for name in missing))
    for name, size in zip(missing, sizes, strict=True):
        tables[name]["estimated_bytes"] = size
    return stats


async def _estimate(store: Store, table: str, info: dict[str, Any]) -> int | None:
    rows = int(info.get("rows", 0))
    if rows == 0:
        return 0
    sample = await _sample(store, table)
    if sample is None:
        return None
    if not sample:
        return 0
    average = sum(deep_size(record) for record in sample) / len(sample)
    return round(average * rows)


async def _sample(store: Store, table: str) -> list[dict[str, Any]] | None:
    """The table's first rows; ``None`` when not even one fits in a store reply, or when
    the table is gone (dropped since the stats were read)."""
    for size in (SAMPLE_ROWS, 1):
        with contextlib.suppress(LimitExceeded):  # rows too big for that many in one reply
            try:
                found = await store.call("find", {"table": table, "limit": size})
            except NotFound:
                return None
            items: list[dict[str, Any]] = found["items"]
            return items
    return None


def deep_size(value: Any) -> int:
    """Bytes of ``value`` and everything it holds (shared small ints and strings counted too)."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k) + deep_size(v) for k, v in value.items())
    elif isinstance(value, list):
        size += sum(deep_size(item) for item in value)
    return size
