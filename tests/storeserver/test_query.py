"""Unit tests of storeserver.query: equality, mixed-type order, conditions, sorts, pages."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storeserver.errors import BadRequest, LimitExceeded
from storeserver.filters import compile_predicate, parse_where
from storeserver.query import (
    Condition,
    SortField,
    compile_getter,
    index_key,
    parse_sort,
    sort_key,
    sort_key_function,
    top,
    values_equal,
)
from tests.storeserver.reference import ref_cmp, ref_eq
from tests.support.calls import count_calls

# -- a reference order, written independently of query.sort_key -----------------------------


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False, width=16),
    st.decimals(-5, 5, places=1, allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "a", "A", "b", "ab", "é"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xyz"), inner, max_size=2)
    ),
    max_leaves=5,
)


def test_mixed_type_order_is_the_documented_one() -> None:
    ordered = [
        None,
        False,
        True,
        -2,
        Decimal("-1.5"),
        0,
        0.5,
        Decimal("1"),
        3,
        "",
        "A",
        "a",
        [1],
        {"k": 1},
    ]
    shuffled = list(reversed(ordered))
    assert sorted(shuffled, key=sort_key) == ordered


def test_decimal_and_float_compare_exactly() -> None:
    # 0.1 as a float is slightly above one tenth, so it sorts after Decimal("0.1")
    assert sorted([0.1, Decimal("0.1")], key=sort_key) == [Decimal("0.1"), 0.1]
    assert sort_key(Decimal("2")) == sort_key(2) == sort_key(2.0)


@settings(max_examples=200)
@given(st.lists(values, max_size=8))
def test_sort_key_agrees_with_the_reference_order_and_never_raises(items: list[Any]) -> None:
    mine = sorted(items, key=sort_key)
    ref = sorted(items, key=functools.cmp_to_key(ref_cmp))
    assert [ref_cmp(a, b) for a, b in zip(mine, ref, strict=True)] == [0] * len(items)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, Decimal("1.00"), True),
        (Decimal("0.1"), 0.1, False),
        (True, 1, False),
        (False, 0, False),
        (None, None, True),
        ("a", "A", False),
        ("1", 1, False),
        ([1, "x"], [1.0, "x"], True),
        ([1], [True], False),
        ({"a": [1]}, {"a": [Decimal(1)]}, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
    ],
)
def test_values_equal_and_index_key_agree(a: Any, b: Any, equal: bool) -> None:
    assert values_equal(a, b) is equal
    assert (index_key(a) == index_key(b)) is equal
    if equal:
        assert hash(index_key(a)) == hash(index_key(b))


# Numbers as the wire carries them: int64/uint64, any finite float, Decimals of up to 100
# digits (some of them exactly an int or a float), and containers of them.
_P = 2**61 - 1  # Python hashes every number by its value modulo this prime
wide_numbers = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False).filter(
        lambda d: len(d.as_tuple()[1]) <= 100
    ),
    st.integers(-(2**63), 2**64 - 1).map(Decimal),
    st.floats(allow_nan=False, allow_infinity=False).map(Decimal),
    st.integers(-50, 50).map(lambda k: Decimal(k * _P)),
    st.integers(-50, 50).map(lambda k: Decimal(k * _P).scaleb(-3)),
)
wide_values = st.recursive(
    st.one_of(wide_numbers, st.none(), st.booleans(), st.sampled_from(["", "1", "i1;", "s1:a"])),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xy"), inner, max_size=2)
    ),
    max_leaves=6,
)


@settings(max_examples=500)
@given(wide_values, wide_values)
def test_index_keys_are_equal_exactly_when_the_values_are(a: Any, b: Any) -> None:
    assert (index_key(a) == index_key(b)) is ref_eq(a, b)
    if ref_eq(a, b):
        assert hash(index_key(a)) == hash(index_key(b))


@settings(max_examples=200)
@given(wide_values)
def test_an_index_key_equals_the_key_of_each_equal_spelling(value: Any) -> None:
    """The same number as an int, a float and Decimals with trailing zeros: one key."""
    if type(value) in (int, float, Decimal):
        sign, digits, exponent = Decimal(value).as_tuple()
        assert type(exponent) is int
        spellings = [Decimal(value), Decimal((sign, (*digits, 0, 0), exponent - 2))]
        if float(value) == value:
            spellings.append(float(value))
        if type(value) is not float and Decimal(value) == int(value) and abs(value) < 2**64:
            spellings.append(int(value))
        for other in spellings:
            assert index_key(other) == index_key(value)
            assert hash(index_key(other)) == hash(index_key(value))


def test_numbers_a_client_picks_to_share_a_hash_get_keys_that_do_not() -> None:
    """QA: every multiple of 2**61 - 1 hashes as 0, so Decimals a client picked made an
    index's lookups (and an ``in`` list's) walk all of them. Counted in hashes, not timed."""
    multiples = [Decimal(k * _P) for k in range(1, 2_001)]
    assert len({hash(m) for m in multiples}) == 1  # what the store must not key them by
    hashes = {hash(index_key(m)) for m in multiples}
    # the multiples under 10**20 are ints, and int64/uint64s share a hash a dozen at a time
    assert len(hashes) >= len(multiples) - 50
    # tuples of keys would collide wherever every item does: 8 uint64s share hash 1
    ones = [1 + k * _P for k in range(8)]
    lists = [[a, b, c, d] for a in ones for b in ones for c in ones for d in ones]
    assert len({hash(tuple(v)) for v in lists}) == 1
    assert len({hash(index_key(v)) for v in lists}) == len(lists)
    maps = [{"a": a, "b": [b, c]} for a in ones for b in ones for c in ones]
    assert len({hash(index_key(v)) for v in maps}) == len(maps)


def test_getter_reads_dotted_paths() -> None:
    record = {"a": {"b": {"c": 3}}, "s": "text", "x.y": 1}
    assert compile_getter("a.b.c")(record) == 3
    assert compile_getter("a.b")(record) == {"c": 3}
    assert compile_getter("a.z.c")(record) is None
    assert compile_getter("s.len")(record) is None  # through a non-map
    assert compile_getter("missing")(record) is None


def _matches(value: Any, op: str, arg: Any) -> bool:
    predicate = compile_predicate([Condition("f", op, arg)])
    assert predicate is not None
    return predicate({"f": value} if value is not ... else {})


@pytest.mark.parametrize(
    ("value", "op", "arg", "expected"),
    [
        (1, "eq", 1.0, True),
        (Decimal("2.50"), "eq", 2.5, True),
        (True, "eq", 1, False),
        (1, "eq", True, False),
        (None, "eq", None, True),
        (..., "eq", None, True),  # missing reads as None
        ("a", "eq", "A", False),
        ([1, 2], "eq", [1, 2], True),
        (1, "ne", 2, True),
        (..., "ne", 1, True),
        (1, "ne", 1.0, False),
        (2, "gt", 1, True),
        (Decimal("1.5"), "gt", 1, True),
        (1, "gte", Decimal("1.0"), True),
        (0.5, "lt", Decimal("0.6"), True),
        (1, "lte", 0, False),
        ("b", "gt", "a", True),
        ("a", "gt", 1, False),  # incomparable kinds: false, not an error
        (1, "lt", "a", False),
        (None, "lt", 1, False),
        (..., "gte", 0, False),
        (True, "gt", False, True),
        (True, "gt", 0, False),
        ([1], "gt", [0], False),
        (1, "gt", None, False),
        (2, "in", [1, 2.0], True),
        (True, "in", [1], False),
        (None, "in", [None], True),
        ("x", "in", [], False),
        ("hello", "contains", "ell", True),
        ("hello", "contains", 1, False),
        (["a", 2], "contains", Decimal(2), True),
        (["a", 2], "contains", "b", False),
        ([[1, 2], {"k": 1}], "contains", [1, 2.0], True),
        ([[1, 2], {"k": 1}], "contains", {"k": Decimal(1)}, True),
        ([[1, 2], {"k": 1}], "contains", {"k": 2}, False),
        ([{"k": 1}], "contains", [["k", 1]], False),
        ([True], "contains", 1, False),
        (5, "contains", 5, False),
        (..., "contains", "a", False),
    ],
)
def test_condition_semantics(value: Any, op: str, arg: Any, expected: bool) -> None:
    assert _matches(value, op, arg) is expected


def test_contains_keys_its_operand_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a map or list operand was keyed again for every item of every row (5,000 items
    against a 5,000-key map held the loop 4.9 s). Counted in calls, not timed."""
    from storeserver import query

    keyed = count_calls(monkeypatch, query, "index_key")
    operand = {f"k{n}": n for n in range(500)}
    predicate = compile_predicate([Condition("a", "contains", operand)])
    assert predicate is not None
    assert not predicate({"a": list(range(500))})  # no item of its kind: none keyed
    assert predicate({"a": [*range(500), dict(operand)]})
    assert keyed.calls < 2_000  # the operand once, the one map item once (each with its 500 values)


def test_casefold_fields_compare_equality_ignoring_case() -> None:
    fields = frozenset({"email"})

    def matches(value: Any, op: str, arg: Any) -> bool:
        predicate = compile_predicate([Condition("email", op, arg)], fields)
        assert predicate is not None
        return predicate({"email": value})

    assert matches("Anna@X.com", "eq", "anna@x.COM")
    assert matches("Straße@x", "eq", "STRASSE@x")
    assert not matches("anna@x", "ne", "ANNA@X")
    assert matches("anna@x", "in", ["bob@x", "ANNA@X"])
    assert not matches("anna@x", "eq", "anna@y")
    assert matches(None, "eq", None) and not matches(1, "eq", "1")
    assert not matches("Anna", "contains", "ann")  # other operators stay exact
    assert matches("anna", "gt", "B")  # ranges compare exactly: "a" > "B" by code point
    exact = compile_predicate([Condition("email", "eq", "a@x")])
    assert exact is not None and not exact({"email": "A@x"})


def test_conditions_are_anded() -> None:
    for n in (2, 3):
        conds = [Condition("a", "gte", 1), Condition("a", "lte", 3), Condition("b", "eq", "x")][:n]
        predicate = compile_predicate(conds)
        assert predicate is not None
        assert predicate({"a": 2, "b": "x"})
        assert not predicate({"a": 4, "b": "x"})
    assert compile_predicate([]) is None
    predicate = compile_predicate(
        [Condition("a", "gte", 1), Condition("a", "lte", 3), Condition("b", "eq", "x")]
    )
    assert predicate is not None and not predicate({"a": 2, "b": "y"})


@pytest.mark.parametrize(
    "where",
    [
        "a",
        [["a", "eq"]],
        [("a", "eq", 1, 2)],
        [[1, "eq", 1]],
        [["", "eq", 1]],
        [["a..b", "eq", 1]],
        [["a", "like", 1]],
        [["a", "in", 1]],
        [["a", "eq", float("nan")]],
        [["a", "in", [Decimal("NaN")]]],
        [["a", "eq", b"bytes"]],
        [["a", "eq", {1: 2}]],
        [["a", "startswith", 1]],
        [["a", "exists", "yes"]],
        {"a": 1},
    ],
)
def test_parse_where_refuses_malformed_conditions(where: Any) -> None:
    with pytest.raises(BadRequest):
        parse_where(where, frozenset(), False, 10)


def test_parse_where_limits_in_lists_and_guards_hidden_fields() -> None:
    with pytest.raises(LimitExceeded):
        parse_where([["a", "in", list(range(11))]], frozenset(), False, 10)
    assert parse_where([["a", "in", list(range(10))]], frozenset(), False, 10)
    for field in ("secret", "secret.inner"):
        with pytest.raises(BadRequest) as info:
            parse_where([[field, "eq", "x"]], frozenset({"secret"}), False, 10)
        assert info.value.details["field"] == field
        assert parse_where([[field, "eq", "x"]], frozenset({"secret"}), True, 10)
    assert parse_where(None, frozenset(), False, 10) == []


@pytest.mark.parametrize(
    "sort",
    ["a", [["a"]], [["a", "up"]], [["", "asc"]], [[None, "desc"]], [("a", "asc", 1)]],
)
def test_parse_sort_refuses_malformed_entries(sort: Any) -> None:
    with pytest.raises(BadRequest):
        parse_sort(sort, frozenset(), False)


def test_parse_sort_checks_allowed_and_hidden_fields() -> None:
    assert parse_sort([["a", "desc"]], frozenset(), False) == [SortField("a", True)]
    with pytest.raises(BadRequest):
        parse_sort([["b", "asc"]], frozenset(), False, allowed=["a"])
    with pytest.raises(BadRequest):
        parse_sort([["pw", "asc"]], frozenset({"pw"}), False)


records = st.lists(
    st.fixed_dictionaries({}, optional={"a": scalars, "b": scalars, "c": values}), max_size=12
)
sort_specs = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), min_size=1, max_size=3
)


def _reference_sorted(
    items: list[dict[str, Any]], spec: list[tuple[str, bool]]
) -> list[dict[str, Any]]:
    def cmp(x: dict[str, Any], y: dict[str, Any]) -> int:
        for field, desc in spec:
            c = ref_cmp(x.get(field), y.get(field))
            if c:
                return -c if desc else c
        return 0

    return sorted(items, key=functools.cmp_to_key(cmp))


@settings(max_examples=200)
@given(records, sort_specs, st.integers(0, 14), st.integers(1, 14))
def test_sort_and_top_match_a_reference_stable_sort(
    items: list[dict[str, Any]], spec: list[tuple[str, bool]], offset: int, limit: int
) -> None:
    key, reverse = sort_key_function([SortField(f, d) for f, d in spec])
    expected = _reference_sorted(items, spec)[offset : offset + limit]
    got = top(items, len(items), key, reverse, offset, limit)
    # identity, not equality: ties must keep input (creation) order
    assert [id(x) for x in got] == [id(x) for x in expected]


def test_top_uses_a_heap_for_small_pages_of_many_items() -> None:
    items = [{"n": (i * 7919) % 1000} for i in range(1000)]
    key, reverse = sort_key_function([SortField("n", True)])
    assert [r["n"] for r in top(items, len(items), key, reverse, 5, 3)] == [994, 993, 992]
