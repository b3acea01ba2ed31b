"""``aggregate`` over a table bigger than one chunk runs as a ``ChunkedRead``: a step per loop
turn, on the rows as they were when it started, with the same result as in one go."""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from storeserver.aggregation import Metric, aggregate_steps
from storeserver.builds import CHUNK, ChunkedRead, release_steps
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


class _Row(dict[str, Any]):
    """A record that can be watched with a weak reference (a plain dict cannot)."""


def test_each_group_is_freed_once_its_row_is_made_not_all_at_the_end() -> None:
    # 50,000 groups take far more than one step's time to reduce, so the generator yields
    # while it makes their rows; by then the first group's rows must be gone (freeing all the
    # groups in the last step held the store 43-47 ms for 300,000 of them).
    watched: list[weakref.ref[_Row]] = []

    def chunks() -> Iterator[list[_Row]]:
        for start in range(0, 50_000, 1_000):
            chunk = [_Row(g=f"g{i}", v=i) for i in range(start, start + 1_000)]
            watched.append(weakref.ref(chunk[0]))
            yield chunk

    steps = aggregate_steps(chunks(), ["g"], [Metric("sum", "v", "s")], CHUNK)
    freed_before_the_end = False
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            groups = stop.value
            break
        freed_before_the_end = freed_before_the_end or watched[0]() is None
    assert freed_before_the_end
    assert len(groups) == 50_000
    assert groups[0] == {"g": "g0", "s": 0}
    assert groups[-1] == {"g": "g49999", "s": 49_999}


def test_release_steps_empties_a_long_list_over_several_steps_from_its_end() -> None:
    items = list(range(CHUNK * 40))
    steps = release_steps(items)
    lengths = []
    for _ in steps:
        lengths.append(len(items))
        assert items == list(range(len(items)))  # what is left is the head, untouched
    assert items == []
    assert lengths and lengths == sorted(lengths, reverse=True)


def test_release_steps_empties_a_short_list_at_once() -> None:
    items = list(range(CHUNK))
    assert list(release_steps(items)) == []
    assert items == []


def test_an_aggregate_over_many_groups_answers_the_same_after_freeing_them() -> None:
    engine = Engine(journal=False, max_batch=ROWS)
    ops = [{"op": "insert", "table": "t", "record": {"g": i, "v": i}} for i in range(ROWS)]
    engine.execute("batch", {"ops": ops})
    job = engine.execute(
        "aggregate",
        {
            "table": "t",
            "group_by": ["g"],
            "metrics": [{"op": "sum", "field": "v", "as": "s"}],
            "offset": 5,
            "limit": 3,
        },
    )
    assert isinstance(job, ChunkedRead)
    result = engine.run_job(job)
    assert result == {"items": [{"g": g, "s": g} for g in (5, 6, 7)], "total": ROWS}
