"""Filter trees of query bodies: pure functions, no server."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from api.errors import ApiError
from api.filters import MAX_DEPTH, MAX_NODES, parse_filter_tree
from api.queries import FINER_THAN_STORED
from api.services import orders


def refused(tree: Any, reserve: int = 0) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_filter_tree(tree, orders.FIELDS, reserve=reserve)
    return info.value


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", "2026-11-22T20:25:09.8989885Z"),
        ("ne", "2026-11-22T20:25:09.8989885Z"),
        ("in", ["2026-11-22T20:25:09.898988Z", "2026-11-22T20:25:09.8989885Z"]),
    ],
)
def test_an_equality_finer_than_a_microsecond_is_a_422(op: str, value: Any) -> None:
    error = refused({"field": "order_date", "op": op, "value": value})
    assert (error.status_code, error.code) == (422, "VALIDATION_ERROR")
    assert error.details[0]["message"] == FINER_THAN_STORED
    expected = "body.filter.value.1" if op == "in" else "body.filter.value"
    assert error.details[0]["field"] == expected


def test_a_range_finer_than_a_microsecond_still_rounds_exactly() -> None:
    tree = {"field": "created_at", "op": "gte", "value": "2026-11-22T20:25:09.8989885Z"}
    assert parse_filter_tree(tree, orders.FIELDS) == [
        ["created_at", "gte", "2026-11-22T20:25:09.898989Z"]
    ]


@pytest.mark.parametrize(
    "value", ["\u0661\u0660\u0660", "\uff11\uff10\uff10", "1_0_0", "NaN", "Infinity", float("inf")]
)
def test_decimal_values_take_ascii_digits_only(value: Any) -> None:
    error = refused({"field": "total_price", "op": "eq", "value": value})
    assert (error.status_code, error.details[0]["field"]) == (422, "body.filter.value")


@pytest.mark.parametrize(
    ("value", "expected"), [("100", "100"), (100, "100"), (0.5, "0.5"), ("-1e2", "-1E+2")]
)
def test_decimal_values_in_ascii_notation(value: Any, expected: str) -> None:
    tree = {"field": "total_price", "op": "gt", "value": value}
    assert parse_filter_tree(tree, orders.FIELDS) == [["total_price", "gt", Decimal(expected)]]


def _nested(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"field": "quantity", "op": "gt", "value": 0}
    for _ in range(levels - 1):
        tree = {"not": tree}
    return tree


def test_a_scoped_limit_says_what_the_api_takes_of_the_stores() -> None:
    """The store's limits hold for the tree with the owner condition in it (storeserver.filters
    has the same 8 and 100), so a user's own share is 7 levels and 98 nodes."""
    parse_filter_tree(_nested(MAX_DEPTH - 1), orders.FIELDS, reserve=1)
    depth = refused(_nested(MAX_DEPTH), reserve=1)
    assert (depth.status_code, depth.code) == (400, "LIMIT_EXCEEDED")
    assert depth.details[0]["message"] == (
        "at most 7 levels of nesting: of the store's 8, the condition the API adds"
        " (your own records only) takes 1"
    )
    leaves = [{"field": "quantity", "op": "eq", "value": i} for i in range(MAX_NODES - 2)]
    nodes = refused({"or": leaves}, reserve=1)
    assert nodes.details[0]["message"].startswith("at most 98 nodes: of the store's 100,")
    assert refused(_nested(MAX_DEPTH + 1)).details[0]["message"] == "at most 8 levels of nesting"
