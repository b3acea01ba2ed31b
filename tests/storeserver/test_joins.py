"""``join`` over big tables runs as a ``ChunkedRead`` (a chunk per loop turn): without an
index on the right field, the temporary hash of the right table is built in chunks too. The
pairs are the rows as they were when read, and writes between steps break nothing."""

from __future__ import annotations

from typing import Any

from storeserver.builds import CHUNK, ChunkedRead
from storeserver.engine import Engine
from tests.storeserver.jobs import finish

RIGHT_ROWS = CHUNK * 2 + 7


def _engine(*, left_rows: int) -> Engine:
    engine = Engine(journal=False, max_batch=RIGHT_ROWS)
    left = [
        {"op": "insert", "table": "l", "record": {"id": f"l{i}", "key": f"k{i}"}}
        for i in range(left_rows)
    ]
    # Right rows point at left keys k0..k9 (ten rows each), every other row at nothing.
    right = [
        {
            "op": "insert",
            "table": "r",
            "record": {"id": f"r{i}", "ref": f"k{i % 10}" if i % 1000 < 10 else f"none{i}"},
        }
        for i in range(RIGHT_ROWS)
    ]
    engine.execute("batch", {"ops": left})
    engine.execute("batch", {"ops": right})
    return engine


JOIN: dict[str, Any] = {"left": "l", "right": "r", "left_field": "key", "right_field": "ref"}


def _pairs(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["id"], b["id"]) for a, b in result["items"]]


def test_an_unindexed_join_builds_its_hash_in_chunks_and_reads_the_rows_as_they_were() -> None:
    engine = _engine(left_rows=20)
    expected_total = sum(1 for i in range(RIGHT_ROWS) if i % 1000 < 10)
    job = engine.execute("join", {**JOIN, "limit": 1000})
    assert isinstance(job, ChunkedRead)
    done, _ = engine.advance(job)
    assert not done
    # Between steps: a right row that matches goes, a new one comes; the join reads its start.
    engine.execute("delete", {"table": "r", "id": "r0"})
    engine.execute("insert", {"table": "r", "record": {"id": "late", "ref": "k0"}})
    steps, result = finish(engine, job)
    assert steps >= 2
    assert result["total"] == expected_total
    assert ("l0", "r0") in _pairs(result) and ("l0", "late") not in _pairs(result)

    # The same join now, run to the end at once, sees the writes.
    now = engine.run_job(engine.execute("join", {**JOIN, "limit": 1000}))
    assert ("l0", "r0") not in _pairs(now) and ("l0", "late") in _pairs(now)
    assert now["total"] == expected_total


def test_a_join_over_many_left_rows_runs_in_chunks_through_the_index() -> None:
    engine = _engine(left_rows=RIGHT_ROWS)
    engine.run_job(engine.execute("create_index", {"table": "r", "field": "ref"}))
    job = engine.execute("join", {**JOIN, "limit": 5, "offset": 3})
    assert isinstance(job, ChunkedRead)
    done, _ = engine.advance(job)
    assert not done
    engine.execute("delete", {"table": "r", "id": "r5000"})  # a write between steps
    _, result = finish(engine, job)
    # k0 is matched by r0, r1000, ..., r20000 (in creation order): the page skips three.
    assert _pairs(result) == [("l0", f"r{i}000") for i in range(3, 8)]
    # Every match is of l0..l9, in the first chunk, counted before the delete.
    assert result["total"] == sum(1 for i in range(RIGHT_ROWS) if i % 1000 < 10)


def test_small_joins_answer_at_once() -> None:
    engine = _engine(left_rows=20)
    small = engine.execute("join", {**JOIN, "right": "l", "right_field": "key"})
    assert isinstance(small, dict) and small["total"] == 20


def _big_left_engine(unique: bool = False) -> Engine:
    """``l``: RIGHT_ROWS rows keyed ``k<i>``; ``r``: a small table with an index on ``ref``
    (a unique one: a single row ``x``; else ``x`` and ``y``), both on ``k15000``."""
    engine = Engine(journal=False, max_batch=RIGHT_ROWS)
    engine.execute(
        "batch",
        {
            "ops": [
                {"op": "insert", "table": "l", "record": {"id": f"l{i}", "key": f"k{i}"}}
                for i in range(RIGHT_ROWS)
            ]
        },
    )
    engine.execute("create_table", {"table": "r", "indexes": [{"field": "ref", "unique": unique}]})
    for rid in ("x",) if unique else ("x", "y"):
        engine.execute("insert", {"table": "r", "record": {"id": rid, "ref": "k15000"}})
    return engine


def test_chunked_join_survives_the_right_index_being_dropped_between_steps() -> None:
    """A right index dropped between steps is no longer kept up to date: the join stops using
    it (a row deleted afterwards once made it raise ``KeyError``)."""
    engine = _big_left_engine()
    job = engine.execute("join", JOIN)
    assert isinstance(job, ChunkedRead)
    assert engine.advance(job) == (False, None)  # l0..l9999 done; k15000 is in a later chunk
    engine.execute("drop_index", {"table": "r", "field": "ref"})
    engine.execute("delete", {"table": "r", "id": "x"})
    _, result = finish(engine, job)
    assert [(a["id"], b["id"]) for a, b in result["items"]] in (
        [("l15000", "x"), ("l15000", "y")],  # the right rows as they were at the start
        [("l15000", "y")],  # or as they are when read
    )


def test_chunked_join_pairs_still_match_after_the_right_index_is_dropped() -> None:
    """Nor does a stale index pair rows whose fields no longer match."""
    engine = _big_left_engine()
    job = engine.execute("join", JOIN)
    engine.advance(job)
    engine.execute("drop_index", {"table": "r", "field": "ref"})
    engine.execute("patch", {"table": "r", "id": "y", "changes": {"ref": "other"}})
    _, result = finish(engine, job)
    for left, right in result["items"]:
        assert left["key"] == right["ref"], (left["id"], right)


def test_chunked_join_with_a_unique_right_index_dropped_between_steps() -> None:
    """The same for a unique index."""
    engine = _big_left_engine(unique=True)
    job = engine.execute("join", JOIN)
    engine.advance(job)
    engine.execute("drop_index", {"table": "r", "field": "ref"})
    engine.execute("delete", {"table": "r", "id": "x"})
    _, result = finish(engine, job)
    assert [(a["id"], b["id"]) for a, b in result["items"]] in ([("l15000", "x")], [])


def test_a_chunked_join_reads_the_rows_an_index_picked_as_they_are_at_its_first_step() -> None:
    """The ids of an ``in`` over several index buckets are a list picked when the command is
    read; the job's first step runs a loop turn later, after other clients' commands (QA: a
    row deleted in between failed the join with a KeyError, an HTTP 500)."""
    engine = _engine(left_rows=RIGHT_ROWS)
    engine.run_job(engine.execute("create_index", {"table": "l", "field": "key"}))
    picked = ["k0", "k1", "k2", "k3"]
    call = {**JOIN, "where": [["key", "in", picked]], "limit": 1000}
    job = engine.execute("join", call)
    assert isinstance(job, ChunkedRead)
    engine.execute("delete", {"table": "l", "id": "l0"})  # picked, then gone
    engine.execute("patch", {"table": "l", "id": "l1", "changes": {"key": "k5"}})  # no longer in
    _, result = finish(engine, job)
    lefts = {a["id"] for a, _ in result["items"]}
    assert lefts == {"l2", "l3"}
    assert result == engine.run_job(engine.execute("join", call))  # as the same join now


def _members() -> Engine:
    """``users`` with a casefold unique ``email``; ``subs`` and ``notes`` keyed by email in
    other cases (``notes.email`` with a plain hash index, ``subs.email`` with none)."""
    engine = Engine(journal=False)
    engine.execute(
        "create_table",
        {"table": "users", "indexes": [{"field": "email", "unique": True, "casefold": True}]},
    )
    engine.execute("create_table", {"table": "notes", "indexes": [{"field": "email"}]})
    engine.execute("insert", {"table": "users", "record": {"id": "u1", "email": "Ann@X.io"}})
    engine.execute("insert", {"table": "users", "record": {"id": "u2", "email": "bob@x.io"}})
    for table, rid, email in [("subs", "s1", "ANN@x.IO"), ("subs", "s2", "carl@x.io")]:
        engine.execute("insert", {"table": table, "record": {"id": rid, "email": email}})
    engine.execute("insert", {"table": "notes", "record": {"id": "n1", "email": "BOB@X.IO"}})
    return engine


def _email_pairs(engine: Engine, left: str, right: str) -> list[tuple[str, str]]:
    args = {"left": left, "right": right, "left_field": "email", "right_field": "email"}
    result = engine.execute("join", args)
    assert isinstance(result, dict)
    return [(a["id"], b["id"]) for a, b in result["items"]]


def test_a_join_on_a_casefold_unique_field_ignores_case_as_eq_does() -> None:
    """QA: a join on users.email matched only the exact case, where ``eq`` on it (and so
    ``GET /users?email=``) finds the user in any case. Either side's casefold field folds it,
    whatever indexes the other side has."""
    engine = _members()
    assert engine.execute("count", {"table": "users", "where": [["email", "eq", "ANN@X.IO"]]}) == 1
    assert _email_pairs(engine, "subs", "users") == [("s1", "u1")]  # probes the casefold index
    assert _email_pairs(engine, "users", "subs") == [("u1", "s1")]  # builds a folded hash
    assert _email_pairs(engine, "users", "notes") == [("u2", "n1")]  # the hash index is not folded
    assert _email_pairs(engine, "subs", "notes") == []  # neither field folds: exact case
    engine.execute("insert", {"table": "subs", "record": {"id": "ann@x.io"}})
    by_id = {"left": "users", "right": "subs", "left_field": "email", "right_field": "id"}
    assert engine.execute("join", by_id)["total"] == 0  # ids compare exactly, as get does
    engine.execute("insert", {"table": "subs", "record": {"id": "Ann@X.io"}})
    assert engine.execute("join", by_id)["total"] == 1
