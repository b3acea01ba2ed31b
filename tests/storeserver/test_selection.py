"""``find``/``count`` over more than ``CHUNK`` rows: a chunk per step, with the results of
sorting and filtering in one go (ties in creation order), on the rows as they were."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from storeserver.builds import CHUNK, ChunkedRead, run_steps
from storeserver.engine import Engine
from storeserver.filters import parse_where, weight
from storeserver.query import SortField, sort_key_function
from storeserver.selection import count_steps, rows_per_step, select_steps
from tests.storeserver.jobs import finish

values = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", "c"]))
records = st.lists(st.fixed_dictionaries({"a": values, "b": values}), max_size=40)
sorts = st.lists(
    st.builds(SortField, st.sampled_from(["a", "b"]), st.booleans()),
    max_size=2,
    unique_by=lambda s: s.field,
)


def reference(
    rows: list[dict[str, Any]],
    keep: Any,
    sort: list[SortField],
    descending: bool,
    start: int,
    size: int,
) -> tuple[list[dict[str, Any]], int]:
    matches = [r for r in rows if keep is None or keep(r)]
    if descending:
        matches.reverse()
    if sort:
        key, reverse = sort_key_function(sort)
        matches = sorted(matches, key=key, reverse=reverse)
    return matches[start : start + size], len(matches)


@settings(max_examples=300, deadline=None)
@given(
    rows=records,
    sort=sorts,
    descending=st.booleans(),
    threshold=st.none() | st.integers(-3, 3),
    start=st.integers(0, 12),
    size=st.integers(1, 12),
    chunk=st.integers(1, 9),
)
def test_any_chunk_size_gives_the_one_go_answer(
    rows, sort, descending, threshold, start, size, chunk
) -> None:
    rows = [{"id": str(i), **r} for i, r in enumerate(rows)]  # distinct objects, in order
    keep = None if threshold is None else (lambda r: type(r["a"]) is int and r["a"] >= threshold)
    descending = descending and not sort  # only creation order runs newest first
    got = run_steps(select_steps(list(rows), keep, sort, descending, start, size, chunk))
    want = reference(rows, keep, sort, descending, start, size)
    assert [r["id"] for r in got[0]] == [r["id"] for r in want[0]]
    assert got[1] == want[1]
    if keep is not None:
        assert run_steps(count_steps(list(rows), keep, chunk)) == want[1]


ROWS = CHUNK * 2 + 7


def _engine() -> Engine:
    engine = Engine(journal=False, max_batch=ROWS)
    ops = [
        {"op": "insert", "table": "t", "record": {"id": f"r{i}", "n": i % 100, "g": i % 3}}
        for i in range(ROWS)
    ]
    engine.execute("batch", {"ops": ops})
    return engine


def test_a_big_sorted_filtered_find_runs_in_steps_on_the_rows_as_they_were() -> None:
    engine = _engine()
    args = {"table": "t", "where": [["g", "eq", 1]], "sort": [["n", "desc"]], "limit": 3}
    job = engine.execute("find", args)
    assert isinstance(job, ChunkedRead)
    done, _ = engine.advance(job)
    assert not done
    engine.execute("delete", {"table": "t", "id": "r99"})  # n=99, g=0: not a match anyway
    engine.execute("patch", {"table": "t", "id": "r199", "changes": {"n": 1000}})  # g=1
    steps, result = finish(engine, job)
    assert steps >= 2
    # n=99 with g=1: i = 199, 499, 799, ... (i % 3 == 1); the patch came after the start.
    assert [r["id"] for r in result["items"]] == ["r199", "r499", "r799"]
    assert result["items"][0]["n"] == 99
    assert result["total"] == sum(1 for i in range(ROWS) if i % 3 == 1)

    now = engine.run_job(engine.execute("find", args))
    assert now["items"][0]["id"] == "r199" and now["items"][0]["n"] == 1000


def test_a_big_filtered_count_and_a_newest_first_page_run_in_steps() -> None:
    engine = _engine()
    job = engine.execute("count", {"table": "t", "where": [["n", "lt", 10]]})
    assert isinstance(job, ChunkedRead)
    assert finish(engine, job)[1] == sum(1 for i in range(ROWS) if i % 100 < 10)
    newest = engine.execute(
        "find", {"table": "t", "where": [["n", "eq", 5]], "sort": [["created_at", "desc"]]}
    )
    assert isinstance(newest, ChunkedRead)
    items = finish(engine, newest)[1]["items"]
    assert [r["id"] for r in items[:2]] == [
        f"r{(ROWS - 1) // 100 * 100 + 5}",
        f"r{(ROWS - 1) // 100 * 100 - 95}",
    ]


def test_small_and_cheap_finds_answer_at_once() -> None:
    engine = _engine()
    assert isinstance(engine.execute("find", {"table": "t", "limit": 5}), dict)  # a page
    assert isinstance(engine.execute("count", {"table": "t"}), int)
    engine.execute("insert", {"table": "s", "record": {"n": 1}})
    assert isinstance(engine.execute("find", {"table": "s", "sort": [["n", "asc"]]}), dict)


def test_rows_per_step_shrink_with_the_cost_of_testing_and_sorting_a_row() -> None:
    """A 100-node filter took ~0.3 s per 10,000 rows, a 10-field sort ~0.24 s: such steps
    read fewer rows, so a step stays near a simple filter's cost."""
    simple = parse_where([["a", "eq", 1]], frozenset(), False, 10)
    assert rows_per_step(simple) == CHUNK
    assert rows_per_step([], [SortField("a", False)]) == CHUNK
    assert rows_per_step(simple, [SortField("a", False)]) == CHUNK * 4 // 5
    wide = parse_where({"or": [["a", "eq", i] for i in range(99)]}, frozenset(), False, 10)
    assert weight(wide) == 100
    assert rows_per_step(wide) == CHUNK * 4 // 100
    sort = [SortField(f"f{i}", False) for i in range(10)]
    assert rows_per_step([], sort) == CHUNK // 10
    assert rows_per_step(wide, sort) == CHUNK // 35


def test_a_costly_filter_runs_as_a_job_over_fewer_rows_than_a_chunk() -> None:
    engine = Engine(journal=False, max_batch=CHUNK)
    engine.execute(
        "batch", {"ops": [{"op": "insert", "table": "t", "record": {"n": i}} for i in range(1000)]}
    )
    wide = {"or": [["n", "eq", i] for i in range(99)]}
    job = engine.execute("count", {"table": "t", "where": wide})
    assert isinstance(job, ChunkedRead)  # 1000 rows, 400 per step
    assert engine.run_job(job) == 99
    assert engine.execute("count", {"table": "t", "where": [["n", "lt", 99]]}) == 99  # inline


def test_a_scan_with_a_costly_filter_examines_fewer_ids_per_call() -> None:
    engine = Engine(journal=False, max_batch=CHUNK)
    engine.execute(
        "batch", {"ops": [{"op": "insert", "table": "t", "record": {"n": i}} for i in range(600)]}
    )
    wide = {"or": [["n", "eq", i] for i in range(0, 7 * 99, 7)]}  # 100 nodes: 200 ids a call
    page = engine.execute("scan", {"table": "t", "where": wide, "limit": 1000})
    assert [r["n"] for r in page["items"]] == list(range(0, 200, 7))
    seen = [r["n"] for r in page["items"]]
    while page["cursor"] is not None:
        page = engine.execute("scan", {"cursor": page["cursor"], "limit": 1000})
        seen += [r["n"] for r in page["items"]]
    assert seen == list(range(0, 600, 7))
