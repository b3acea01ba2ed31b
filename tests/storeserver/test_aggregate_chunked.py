"""``aggregate`` over a table bigger than one chunk runs as a ``ChunkedRead``: a step per loop
turn, on the rows as they were when it started, with the same result as in one go."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from storeserver.builds import CHUNK, ChunkedRead
from storeserver.engine import Engine

ROWS = CHUNK * 2 + 7


def _engine() -> Engine:
    engine = Engine(journal=False, max_batch=ROWS)
    ops = [
        {
            "op": "insert",
            "table": "orders",
            "record": {
                "user_id": f"u{i % 37}" if i % 11 else None,
                "price": Decimal(i % 1000) / 100,
                "qty": i % 5 if i % 13 else 1.5,
            },
        }
        for i in range(ROWS)
    ]
    engine.execute("batch", {"ops": ops})
    return engine


ARGS: dict[str, Any] = {
    "table": "orders",
    "group_by": ["user_id"],
    "metrics": [
        {"op": "sum", "field": "price", "as": "revenue"},
        {"op": "count", "as": "n"},
        {"op": "max", "field": "qty", "as": "most"},
    ],
    "sort": [["revenue", "desc"]],
    "limit": 1000,
}


def test_chunked_aggregate_matches_a_python_reference_and_sees_a_snapshot() -> None:
    engine = _engine()
    rows = list(engine.execute("find", {"table": "orders", "limit": 1})["items"])
    assert rows
    job = engine.execute("aggregate", ARGS)
    assert isinstance(job, ChunkedRead)
    done, result = engine.advance(job)
    assert not done
    # A write between steps is not seen: the read works on the rows as they were.
    engine.execute("insert", {"table": "orders", "record": {"user_id": "u1", "price": 1000}})
    steps = 1
    while not done:
        done, result = engine.advance(job)
        steps += 1
    assert steps > 2

    groups: dict[Any, dict[str, Any]] = defaultdict(lambda: {"revenue": 0, "n": 0, "most": None})
    for i in range(ROWS):
        group = groups[f"u{i % 37}" if i % 11 else None]
        group["revenue"] += Decimal(i % 1000) / 100
        group["n"] += 1
        qty = i % 5 if i % 13 else 1.5
        group["most"] = qty if group["most"] is None else max(group["most"], qty)
    expected = sorted(
        ({"user_id": k, **v} for k, v in groups.items()), key=lambda g: g["revenue"], reverse=True
    )
    assert result["total"] == len(expected)
    assert result["items"] == expected
    assert (
        engine.run_job(engine.execute("aggregate", {**ARGS, "offset": 3, "limit": 2}))["items"]
        == sorted(
            ({"user_id": k, **v} for k, v in _after_insert(groups).items()),
            key=lambda g: g["revenue"],
            reverse=True,
        )[3:5]
    )


def _after_insert(groups: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    out = {k: dict(v) for k, v in groups.items()}
    out["u1"]["revenue"] += 1000
    out["u1"]["n"] += 1
    return out


def test_a_filtered_aggregate_filters_a_chunk_per_step() -> None:
    """An unindexed filter over a big table is evaluated with the chunks, not all at once
    before the first step; the result is the one of the filter applied in one go."""
    engine = _engine()
    where = [["qty", "gte", 3]]
    args = {"table": "orders", "where": where, "metrics": [{"op": "count", "as": "n"}]}
    job = engine.execute("aggregate", args)
    assert isinstance(job, ChunkedRead)
    done, result = engine.advance(job)
    assert not done  # the first step read one chunk, not the table
    while not done:
        done, result = engine.advance(job)
    expected = sum(1 for i in range(ROWS) if (i % 5 if i % 13 else 1.5) >= 3)
    assert result["items"] == [{"n": expected}]
    assert engine.run_job(engine.execute("count", {"table": "orders", "where": where})) == expected
