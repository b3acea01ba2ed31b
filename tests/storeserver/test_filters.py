"""``where`` trees (storeserver.filters): semantics against a reference evaluator, index use,
limits, and errors that name the bad node."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded, StoreError
from storeserver.filters import (
    MAX_DEPTH,
    MAX_NODES,
    And,
    Not,
    Or,
    compile_predicate,
    parse_where,
    plan,
)
from storeserver.query import Condition
from storeserver.tables import Table
from tests.storeserver.reference_filters import ref_where, size

NO_HIDDEN: frozenset[str] = frozenset()

# -- strategies -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2, -1]),
    st.sampled_from([1.0, 0.5]),
    st.sampled_from([Decimal("1"), Decimal("2.5")]),
    st.sampled_from(["", "a", "ab", "B", "ba"]),
)
records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "a": scalars,
            "b": scalars,
            "c": st.one_of(scalars, st.fixed_dictionaries({}, optional={"x": scalars})),
            "tags": st.lists(scalars, max_size=3),
        },
    ),
    max_size=10,
)
fields = st.sampled_from(["a", "b", "c.x", "tags", "z"])
leaves = st.one_of(
    st.tuples(fields, st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains"]), scalars),
    st.tuples(fields, st.just("in"), st.lists(scalars, max_size=3)),
    st.tuples(fields, st.just("startswith"), st.sampled_from(["", "a", "ab", "B"])),
    st.tuples(fields, st.just("exists"), st.booleans()),
).map(list)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda nodes: {"and": nodes}),
        st.lists(inner, max_size=3).map(lambda nodes: {"or": nodes}),
        inner.map(lambda node: {"not": node}),
    ),
    max_leaves=10,
)
wheres = st.one_of(trees.filter(lambda t: isinstance(t, dict)), st.lists(trees, max_size=3))


def within_limits(where: Any) -> bool:
    depth, nodes = size(where)
    return depth <= MAX_DEPTH and nodes <= MAX_NODES


# -- semantics --------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(records, wheres)
def test_tree_filters_match_the_reference(rows: list[dict[str, Any]], where: Any) -> None:
    if not within_limits(where):
        with pytest.raises(LimitExceeded):
            parse_where(where, NO_HIDDEN, False, 10)
        return
    predicate = compile_predicate(parse_where(where, NO_HIDDEN, False, 10))
    for row in rows:
        expected = ref_where(row, where)
        assert (True if predicate is None else predicate(row)) is expected, row


def _engine(indexed: bool) -> Engine:
    engine = Engine(clock=lambda: 1_700_000_000.0, journal=False)
    indexes = [{"field": "a"}, {"field": "b"}, {"field": "c.x"}] if indexed else []
    engine.execute("create_table", {"table": "t", "indexes": indexes})
    return engine


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(records, wheres, st.sampled_from([None, [["a", "asc"]], [["created_at", "desc"]]]))
def test_indexed_and_unindexed_tables_give_the_same_answers(
    rows: list[dict[str, Any]], where: Any, sort: Any
) -> None:
    if not within_limits(where):
        return
    engines = [_engine(True), _engine(False)]
    for i, row in enumerate(rows):
        for engine in engines:
            engine.execute("insert", {"table": "t", "record": {"id": f"r{i}", **row}})
    expected = [f"r{i}" for i, row in enumerate(rows) if ref_where(row, where)]
    answers = []
    for engine in engines:
        found = engine.execute("find", {"table": "t", "where": where, "sort": sort, "limit": 1000})
        count = engine.execute("count", {"table": "t", "where": where})
        answers.append((found, count))
        assert found["total"] == count == len(expected)
        if sort is None:
            assert [r["id"] for r in found["items"]] == expected
        else:
            assert sorted(r["id"] for r in found["items"]) == sorted(expected)
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("value", "op", "arg", "expected"),
    [
        ("abc", "startswith", "ab", True),
        ("abc", "startswith", "", True),
        ("abc", "startswith", "b", False),
        ("Abc", "startswith", "a", False),  # exact, even on casefold fields
        (["ab"], "startswith", "a", False),  # false for non-strings
        (12, "startswith", "1", False),
        (..., "startswith", "", False),
        (0, "exists", True, True),
        ("", "exists", True, True),
        (False, "exists", True, True),
        (None, "exists", True, False),
        (..., "exists", True, False),
        (None, "exists", False, True),
        (..., "exists", False, True),
        ([], "exists", False, False),
    ],
)
def test_new_operators(value: Any, op: str, arg: Any, expected: bool) -> None:
    predicate = compile_predicate([Condition("f", op, arg)], frozenset({"f"}))
    assert predicate is not None
    assert predicate({"f": value} if value is not ... else {}) is expected


def test_parse_gives_root_conjuncts_with_nested_ands_flattened() -> None:
    a, b, c = ["a", "eq", 1], ["b", "eq", 2], ["c", "exists", True]
    old = parse_where([a, b], NO_HIDDEN, False, 10)
    assert old == [Condition("a", "eq", 1), Condition("b", "eq", 2)]
    assert parse_where({"and": [a, b]}, NO_HIDDEN, False, 10) == old
    assert parse_where([{"and": [a, {"and": [b]}]}], NO_HIDDEN, False, 10) == old
    assert parse_where({"or": [a, c]}, NO_HIDDEN, False, 10) == [
        Or((Condition("a", "eq", 1), Condition("c", "exists", True)))
    ]
    assert parse_where({"not": {"and": [a]}}, NO_HIDDEN, False, 10) == [
        Not(And((Condition("a", "eq", 1),)))
    ]
    assert parse_where(None, NO_HIDDEN, False, 10) == []
    assert parse_where([], NO_HIDDEN, False, 10) == []
    assert parse_where({"and": []}, NO_HIDDEN, False, 10) == []
    never = compile_predicate(parse_where({"or": []}, NO_HIDDEN, False, 10))
    assert never is not None and not never({})


# -- limits and errors ------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any] | list[Any]:
    """A chain of ``depth`` nodes: ``not`` maps around one leaf."""
    node: Any = ["a", "eq", 1]
    for _ in range(depth - 1):
        node = {"not": node}
    return node


def test_depth_limit() -> None:
    parse_where(nested(MAX_DEPTH), NO_HIDDEN, False, 10)
    parse_where([nested(MAX_DEPTH - 1)], NO_HIDDEN, False, 10)  # the list is a level
    with pytest.raises(LimitExceeded) as info:
        parse_where(nested(MAX_DEPTH + 1), NO_HIDDEN, False, 10)
    assert info.value.details == {"arg": "where", "path": ["not"] * MAX_DEPTH, "max": MAX_DEPTH}
    with pytest.raises(LimitExceeded) as info:
        parse_where([nested(MAX_DEPTH)], NO_HIDDEN, False, 10)
    assert info.value.details["path"] == [0, *["not"] * (MAX_DEPTH - 1)]
    # far deeper than Python's recursion limit: refused at the limit, not by a RecursionError
    with pytest.raises(LimitExceeded):
        parse_where(nested(5000), NO_HIDDEN, False, 10)


def test_node_limit() -> None:
    leaf = ["a", "eq", 1]
    parse_where([leaf] * (MAX_NODES - 1), NO_HIDDEN, False, 10)
    parse_where({"or": [leaf] * (MAX_NODES - 1)}, NO_HIDDEN, False, 10)
    with pytest.raises(LimitExceeded) as info:
        parse_where([leaf] * MAX_NODES, NO_HIDDEN, False, 10)
    assert info.value.details == {"arg": "where", "path": [MAX_NODES - 1], "max": MAX_NODES}
    with pytest.raises(LimitExceeded) as info:
        parse_where({"or": [leaf] * 60 + [{"and": [leaf] * 60}]}, NO_HIDDEN, False, 10)
    assert info.value.details["path"] == ["or", 60, "and", 38]


@pytest.mark.parametrize(
    ("where", "error", "path"),
    [
        ("a", BadRequest, []),
        (5, BadRequest, []),
        ({"age": 1}, BadRequest, []),
        ({"and": [], "or": []}, BadRequest, []),
        ({"and": ["a", "eq", 1]}, BadRequest, ["and", 0]),
        ({"and": {"not": ["a", "eq", 1]}}, BadRequest, []),
        ({"or": [["a", "eq", 1], {"and": [["a", "like", 1]]}]}, BadRequest, ["or", 1, "and", 0]),
        ([["a", "eq", 1], ["a", "eq"]], BadRequest, [1]),
        ([{"not": ["", "eq", 1]}], BadRequest, [0, "not"]),
        ({"not": {"nor": []}}, BadRequest, ["not"]),
        ({"not": 3}, BadRequest, ["not"]),
        ({"or": [["a", "in", 1]]}, BadRequest, ["or", 0]),
        ({"or": [["a", "in", list(range(11))]]}, LimitExceeded, ["or", 0]),
        ({"or": [["a", "startswith", 1]]}, BadRequest, ["or", 0]),
        ({"or": [["a", "exists", 1]]}, BadRequest, ["or", 0]),
        ({"or": [["a", "exists", None]]}, BadRequest, ["or", 0]),
        ({"or": [["a", "eq", float("nan")]]}, BadRequest, ["or", 0]),
        ({"or": [["a", "eq", b"x"]]}, BadRequest, ["or", 0]),
        ({"or": [{"not": ["pw.x", "eq", "s"]}]}, BadRequest, ["or", 0, "not"]),
    ],
)
def test_errors_name_the_bad_node(where: Any, error: type[StoreError], path: list[Any]) -> None:
    with pytest.raises(error) as info:
        parse_where(where, frozenset({"pw"}), False, 10)
    assert type(info.value) is error
    assert info.value.details["arg"] == "where"
    assert info.value.details["path"] == path


def test_hidden_fields_anywhere_in_a_tree() -> None:
    where = {"or": [["a", "eq", 1], {"not": ["pw", "eq", "s"]}]}
    with pytest.raises(BadRequest) as info:
        parse_where(where, frozenset({"pw"}), False, 10)
    assert info.value.details == {"arg": "where", "path": ["or", 1, "not"], "field": "pw"}
    assert parse_where(where, frozenset({"pw"}), True, 10)


# -- through the engine: every command taking where, and index use ----------------------------


@pytest.fixture
def engine() -> Engine:
    engine = Engine(journal=False, max_in=5)
    engine.execute(
        "create_table",
        {"table": "users", "indexes": [{"field": "team"}], "hidden": ["pw"]},
    )
    engine.execute(
        "create_table",
        {"table": "orders", "foreign_keys": [{"field": "user_id", "table": "users"}]},
    )
    people = [("ann", "red", 31), ("bob", "blue", 25), ("cid", "red", None), ("dan", "green", 40)]
    for name, team, age in people:
        engine.execute(
            "insert",
            {"table": "users", "record": {"id": name, "team": team, "age": age, "pw": "s"}},
        )
        engine.execute("insert", {"table": "orders", "record": {"user_id": name, "n": 1}})
    return engine


TREE = {
    "and": [["team", "in", ["red", "green"]], {"or": [["age", "gt", 35], ["age", "exists", False]]}]
}


def test_every_command_taking_where_accepts_trees(engine: Engine) -> None:
    found = engine.execute("find", {"table": "users", "where": TREE})
    assert [r["id"] for r in found["items"]] == ["cid", "dan"] and found["total"] == 2
    assert engine.execute("count", {"table": "users", "where": TREE}) == 2
    grouped = engine.execute(
        "aggregate",
        {
            "table": "users",
            "where": TREE,
            "group_by": ["team"],
            "metrics": [{"op": "count", "as": "n"}],
        },
    )
    assert grouped["items"] == [{"team": "red", "n": 1}, {"team": "green", "n": 1}]
    joined = engine.execute(
        "join",
        {
            "left": "users",
            "right": "orders",
            "left_field": "id",
            "right_field": "user_id",
            "where": TREE,
        },
    )
    assert [a["id"] for a, _ in joined["items"]] == ["cid", "dan"] and joined["total"] == 2
    for command, args in [
        ("find", {"table": "users"}),
        ("count", {"table": "users"}),
        ("aggregate", {"table": "users"}),
        (
            "join",
            {"left": "users", "right": "orders", "left_field": "id", "right_field": "user_id"},
        ),
    ]:
        with pytest.raises(BadRequest) as info:
            engine.execute(command, {**args, "where": {"or": [["pw", "eq", "s"]]}})
        assert info.value.details["path"] == ["or", 0]


def test_index_serves_equality_under_the_root_and_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[Any] = []
    original = Table.candidates

    def spy(self: Table, conditions: list[Condition], **kw: Any) -> Any:
        result = original(self, conditions, **kw)
        chosen.append(result[1])
        return result

    monkeypatch.setattr(Table, "candidates", spy)

    def run(where: Any) -> list[str]:
        chosen.clear()
        found = engine.execute("find", {"table": "users", "where": where})
        return [r["id"] for r in found["items"]]

    assert run({"and": [{"and": [["team", "eq", "red"]]}, {"not": ["age", "eq", 31]}]}) == ["cid"]
    assert chosen == [Condition("team", "eq", "red")]
    assert run([["age", "exists", True], ["team", "in", ["blue", "green"]]]) == ["bob", "dan"]
    assert chosen == [Condition("team", "in", ["blue", "green"])]
    # An OR whose every child an index serves reads the union, in creation order...
    blue_or_green = [Condition("team", "eq", "blue"), Condition("team", "eq", "green")]
    assert run({"or": [["team", "eq", "blue"], ["team", "eq", "green"]]}) == ["bob", "dan"]
    assert chosen == blue_or_green
    # ...unless the index sizes add up to over half the table: then one pass reads it
    assert run({"or": [["team", "eq", "red"], ["team", "eq", "blue"]]}) == ["ann", "bob", "cid"]
    assert chosen == []
    both = {"and": [{"or": [["team", "eq", "blue"], ["team", "eq", "red"]]}, ["age", "lt", 40]]}
    assert run(both) == [r for r in run([["age", "lt", 40]]) if r in {"ann", "bob", "cid"}]
    # ...and one child no index serves makes it a scan (no index is looked up).
    assert run({"or": [["team", "eq", "red"], ["age", "eq", 31]]}) == ["ann", "cid"]
    assert chosen == []
    assert run({"not": ["team", "eq", "red"]}) == ["bob", "dan"]
    assert chosen == []


def test_plan_reads_the_union_for_an_or_of_indexed_leaves(engine: Engine) -> None:
    engine.execute("create_table", {"table": "p", "indexes": [{"field": "k"}]})
    made = [engine.execute("insert", {"table": "p", "record": {"k": n % 10}}) for n in range(100)]
    table = engine._catalog.tables["p"]

    def nodes(where: Any) -> Any:
        return parse_where(where, frozenset(), False, 100)

    ids, predicate = plan(table, nodes({"or": [["k", "eq", 3], ["k", "in", [7, 3]]]}))
    assert predicate is None  # the union meets the OR exactly: nothing left to test
    assert list(ids or []) == [r["id"] for r in made if r["k"] in (3, 7)]  # creation order
    ids, predicate = plan(table, nodes([{"or": [["k", "eq", 3], ["n", "eq", 1]]}]))
    assert ids is None and predicate is not None  # "n" has no index: scan and test
    ids, _ = plan(table, nodes({"or": [["k", "in", list(range(6))], ["k", "eq", 9]]}))
    assert ids is None  # 70 % of the table: one pass instead of sorting the union


def test_ids_from_many_buckets_past_union_max_are_not_merged_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``in`` or an ``or`` over several index buckets is merged and sorted into creation
    order in one command; past UNION_MAX ids (400k ids took ~0.5 s) the table is read
    instead, with the same answers. A ``count`` of an ``in`` adds up the bucket sizes."""
    monkeypatch.setattr("storeserver.tables.UNION_MAX", 5)
    monkeypatch.setattr("storeserver.filters.UNION_MAX", 5)
    engine = Engine(journal=False)
    engine.execute("create_table", {"table": "t", "indexes": [{"field": "k"}]})
    for i in range(30):
        engine.execute("insert", {"table": "t", "record": {"id": f"r{i:02}", "k": i % 5}})
    table = engine._catalog.tables["t"]
    small = parse_where([["k", "in", [1, 2]]], frozenset(), False, 10)  # 12 ids: too many
    assert plan(table, small)[0] is None
    tiny = parse_where({"or": [["k", "eq", 1]]}, frozenset(), False, 10)  # 6 ids
    assert plan(table, tiny)[0] is None
    monkeypatch.setattr("storeserver.tables.UNION_MAX", 12)
    monkeypatch.setattr("storeserver.filters.UNION_MAX", 12)
    assert plan(table, small)[0] is not None
    for where in (
        [["k", "in", [1, 2]]],
        {"or": [["k", "eq", 1], ["k", "eq", 2]]},
        [["k", "in", [1, 1.0, Decimal(2), 7]]],  # values sharing a key count once
    ):
        found = engine.execute("find", {"table": "t", "where": where, "limit": 100})
        assert [r["id"] for r in found["items"]] == [
            f"r{i:02}" for i in range(30) if i % 5 in (1, 2)
        ]
        assert engine.execute("count", {"table": "t", "where": where}) == 12
