"""POST /data/{table}/aggregate against references computed here in Python."""

from __future__ import annotations

import decimal
import math
from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.auth import register
from tests.support.factories import assert_error, create_order, create_user, token

pytestmark = pytest.mark.integration

AGGREGATE = "/api/v1/data/{}/aggregate"


def test_revenue_per_user_is_exact(client: httpx.Client) -> None:
    people = [create_user(client)["id"] for _ in range(3)]
    prices = {
        people[0]: ["0.10", "0.20", "0.30", "19.99"],
        people[1]: ["1000000.01", "0.99"],
        people[2]: ["3.33", "3.33", "3.34"],
    }
    orders = [
        {"user_id": uid, "product_name": "p", "quantity": 1, "total_price": price}
        for uid, values in prices.items()
        for price in values
    ]
    assert client.post("/api/v1/data/orders", json={"data": orders}).status_code == 201
    body = {
        "group_by": ["user_id"],
        "metrics": [
            {"op": "sum", "field": "total_price", "as": "revenue"},
            {"op": "count", "as": "orders"},
            {"op": "avg", "field": "total_price", "as": "average"},
            {"op": "min", "field": "total_price", "as": "cheapest"},
            {"op": "max", "field": "total_price", "as": "dearest"},
            {"op": "sum", "field": "quantity", "as": "items"},
        ],
        "filter": {"field": "user_id", "op": "in", "value": people},
        "sort": "revenue:desc",
    }
    response = client.post(AGGREGATE.format("orders"), json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = []
    for uid, values in prices.items():
        amounts = [Decimal(v) for v in values]
        with decimal.localcontext(decimal.Context(prec=28)):
            average = sum(amounts) / len(amounts)
        expected.append((uid, sum(amounts), len(amounts), average, min(amounts), max(amounts)))
    expected.sort(key=lambda row: row[1], reverse=True)
    got = [
        (
            g["user_id"],
            Decimal(g["revenue"]),
            g["orders"],
            Decimal(g["average"]),
            Decimal(g["cheapest"]),
            Decimal(g["dearest"]),
        )
        for g in result["data"]
    ]
    assert got == expected
    assert all(isinstance(g["revenue"], str) for g in result["data"])  # exact, as strings
    assert result["data"][0]["revenue"] == "1000001.00"
    assert [g["items"] for g in result["data"]] == [2, 4, 3]
    assert result["meta"] == {"page": 1, "per_page": 20, "total": 3}

    second = client.post(AGGREGATE.format("orders"), json={**body, "page": 2, "per_page": 2})
    assert [g["user_id"] for g in second.json()["data"]] == [expected[2][0]]
    assert second.json()["meta"]["total"] == 3


VALUES = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b"]), st.booleans(), st.none())


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if draw(st.booleans()):
        row["g"] = draw(st.sampled_from(["x", "y", "z", None]))
    if draw(st.booleans()):
        row["v"] = draw(VALUES)
    if draw(st.booleans()):
        row["w"] = draw(st.floats(-100, 100, allow_nan=False).map(lambda f: round(f, 2)))
    return row


def _rank(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    return (3, value)


def reference(records: list[dict[str, Any]], threshold: int) -> list[dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        v = record.get("v")
        if isinstance(v, int) and not isinstance(v, bool) and v < threshold:
            continue  # the filter below: not (v lt threshold)
        groups[record.get("g")].append(record)
    out = []
    for key, members in groups.items():
        vs = [m.get("v") for m in members if m.get("v") is not None]
        numbers = [v for v in vs if isinstance(v, int) and not isinstance(v, bool)]
        ws = [m["w"] for m in members if "w" in m]
        out.append(
            {
                "g": key,
                "rows": len(members),
                "with_v": len(vs),
                "sum_v": sum(numbers),
                "avg_v": sum(numbers) / len(numbers) if numbers else None,
                "min_v": min(vs, key=_rank) if vs else None,
                "max_v": max(vs, key=_rank) if vs else None,
                "sum_w": sum(ws) if ws else 0,
            }
        )
    order = {None: 0, "x": 1, "y": 2, "z": 3}
    out.sort(key=lambda group: order[group["g"]])
    return out


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(rows(), min_size=1, max_size=30), threshold=st.integers(-3, 3))
def test_group_by_matches_python(
    client: httpx.Client, records: list[dict[str, Any]], threshold: int
) -> None:
    table = f"agg_{token()}"
    assert client.post(f"/api/v1/data/{table}", json={"data": records}).status_code == 201
    body = {
        "group_by": ["g"],
        "metrics": [
            {"op": "count", "as": "rows"},
            {"op": "count", "field": "v", "as": "with_v"},
            {"op": "sum", "field": "v", "as": "sum_v"},
            {"op": "avg", "field": "v", "as": "avg_v"},
            {"op": "min", "field": "v", "as": "min_v"},
            {"op": "max", "field": "v", "as": "max_v"},
            {"op": "sum", "field": "w", "as": "sum_w"},
        ],
        "filter": {"not": {"field": "v", "op": "lt", "value": threshold}},
        "sort": "g:asc",
        "per_page": 100,
    }
    response = client.post(AGGREGATE.format(table), json=body)
    assert response.status_code == 200, response.text
    got = response.json()["data"]
    expected = reference(records, threshold)
    assert [g["g"] for g in got] == [g["g"] for g in expected]
    for have, want in zip(got, expected, strict=True):
        sum_w = have.pop("sum_w")
        assert math.isclose(sum_w, want.pop("sum_w"), abs_tol=1e-6)
        avg_have, avg_want = have.pop("avg_v"), want.pop("avg_v")
        assert (avg_have is None) == (avg_want is None)
        if avg_want is not None:
            assert math.isclose(avg_have, avg_want)
        assert have == want


def test_aggregate_errors(client: httpx.Client, anon: httpx.Client) -> None:
    table = f"agg_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": [{"g": 1, "v": 2}]})
    url = AGGREGATE.format(table)

    def fails(body: dict[str, Any], status: int, code: str, field: str | None = None) -> None:
        error = assert_error(client.post(url, json=body), status, code)
        if field is not None:
            assert error["details"][0]["field"] == field, error

    fails({"metrics": [{"op": "median", "field": "v", "as": "m"}]}, 422, "VALIDATION_ERROR")
    fails({"metrics": [{"op": "sum", "as": "s"}]}, 422, "VALIDATION_ERROR", "body.metrics.0.field")
    fails({"metrics": [{"op": "sum", "field": "v", "as": "1x"}]}, 422, "VALIDATION_ERROR")
    fails(
        {"group_by": ["g"], "metrics": [{"op": "count", "as": "g"}]},
        422,
        "VALIDATION_ERROR",
        "body.metrics.0.as",
    )
    fails({"group_by": ["g", "g"]}, 422, "VALIDATION_ERROR", "body.group_by.1")
    fails({"group_by": ["a b"]}, 400, "BAD_QUERY", "body.group_by.0")
    fails({"group_by": ["g"], "sort": "v:desc"}, 400, "BAD_QUERY", "body.sort")
    fails({"filter": {"field": "v", "op": "near", "value": 1}}, 400, "BAD_QUERY", "body.filter.op")
    fails({"group_by": ["a", "b", "c", "d", "e"]}, 422, "VALIDATION_ERROR")
    fails({"per_page": 0}, 422, "VALIDATION_ERROR")
    assert_error(
        client.post(
            AGGREGATE.format("orders"),
            json={"metrics": [{"op": "sum", "field": "product_name", "as": "s"}]},
        ),
        400,
        "BAD_QUERY",
    )
    assert_error(
        client.post(AGGREGATE.format("users"), json={"group_by": ["password_hash"]}),
        400,
        "BAD_QUERY",
    )
    assert_error(client.post(AGGREGATE.format(f"agg_{token()}"), json={}), 404, "NOT_FOUND")
    assert_error(anon.post(url, json={}), 401)
    account = register(anon)
    assert_error(anon.post(url, json={}, headers=account.headers), 403)


def test_without_group_by_one_group(client: httpx.Client) -> None:
    table = f"agg_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": [{"v": 1}, {"v": 2}, {"v": 4}]})
    response = client.post(
        AGGREGATE.format(table),
        json={"metrics": [{"op": "sum", "field": "v", "as": "total"}, {"op": "count", "as": "n"}]},
    )
    assert response.json()["data"] == [{"total": 7, "n": 3}]


def test_orders_aggregate_covers_only_your_own_orders(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """POST /orders/aggregate: a user's groups are computed over their orders only, whatever
    their filter names; an admin's over everyone's."""
    me, other = register(anon), register(anon)
    mine = [("1.10", "kettle"), ("2.20", "kettle"), ("3.30", "toaster")]
    for price, product in mine:
        create_order(client, me.id, total_price=price, product_name=product)
    create_order(client, other.id, total_price="1000.00", product_name="kettle")
    body = {
        "group_by": ["product_name"],
        "metrics": [
            {"op": "sum", "field": "total_price", "as": "revenue"},
            {"op": "count", "as": "n"},
        ],
        "sort": "product_name:asc",
    }
    url = "/api/v1/orders/aggregate"
    response = anon.post(url, json=body, headers=me.headers)
    assert response.status_code == 200, response.text
    got = [(g["product_name"], Decimal(g["revenue"]), g["n"]) for g in response.json()["data"]]
    assert got == [("kettle", Decimal("3.30"), 2), ("toaster", Decimal("3.30"), 1)]
    assert response.json()["meta"]["total"] == 2

    # Naming someone else in the filter finds nothing of theirs: the scope is ANDed on.
    theirs = {**body, "filter": {"field": "user_id", "op": "eq", "value": other.id}}
    assert anon.post(url, json=theirs, headers=me.headers).json()["data"] == []
    both = {**body, "group_by": ["user_id"], "sort": "revenue:desc"}
    both["filter"] = {"field": "user_id", "op": "in", "value": [me.id, other.id]}
    admin_view = client.post(url, json=both).json()["data"]
    assert [(g["user_id"], g["n"]) for g in admin_view] == [(other.id, 1), (me.id, 3)]

    assert_error(anon.post(url, json=body), 401)
    bad = {"metrics": [{"op": "sum", "field": "product_name", "as": "s"}]}
    assert_error(anon.post(url, json=bad, headers=me.headers), 400, "BAD_QUERY")
    deep: dict[str, Any] = {"field": "quantity", "op": "gt", "value": 0}
    for _ in range(8):
        deep = {"not": deep}
    assert_error(anon.post(url, json={"filter": deep}, headers=me.headers), 400)


def test_a_decimal_sum_over_no_rows_is_a_decimal_string(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """QA: the sum of total_price came back "3.00" over an order and as the number 0 over a
    filter matching none: a client reading decimals as strings broke on empty sets."""
    me = register(anon)
    create_order(client, me.id, total_price="3.00", quantity=1)
    spent = {"metrics": [{"op": "sum", "field": "total_price", "as": "spent"}]}
    none = {**spent, "filter": {"field": "quantity", "op": "gt", "value": 100}}
    url = "/api/v1/orders/aggregate"
    assert anon.post(url, json=spent, headers=me.headers).json()["data"] == [{"spent": "3.00"}]
    assert anon.post(url, json=none, headers=me.headers).json()["data"] == [{"spent": "0"}]
    admin = client.post(AGGREGATE.format("orders"), json=none).json()["data"]
    assert admin == [{"spent": "0"}]
    # Over a generic table a field has no declared type: a sum of nothing stays the number 0.
    table = f"agg_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": {"price": "1.50"}})
    generic = client.post(AGGREGATE.format(table), json={**spent, "filter": none["filter"]})
    assert generic.json()["data"] == [{"spent": 0}]


def test_an_int_sum_beyond_64_bits_is_exact(client: httpx.Client) -> None:
    """Eleven nanosecond timestamps pass 2**64 - 1: the store answers a Decimal, which comes
    back exact (msgpack could not carry the int: a 500 before)."""
    table = f"agg_{token()}"
    stamp = 1_700_000_000_000_000_000  # well inside int64
    rows = [{"n": stamp} for _ in range(11)]
    assert client.post(f"/api/v1/data/{table}", json={"data": rows}).status_code == 201
    metrics = [
        {"op": "sum", "field": "n", "as": "total"},
        {"op": "avg", "field": "n", "as": "mean"},
        {"op": "max", "field": "n", "as": "top"},
    ]
    response = client.post(AGGREGATE.format(table), json={"metrics": metrics})
    assert response.status_code == 200, response.text
    [row] = response.json()["data"]
    assert str(row["total"]) == str(stamp * 11)
    assert row["mean"] == float(stamp) and row["top"] == stamp


def test_the_default_metric_steps_aside_for_a_group_field_named_count(
    client: httpx.Client,
) -> None:
    """QA: grouping by a field named ``count`` without metrics was a 422 blaming
    ``body.metrics.0.as``, a metric the client never sent. The default count takes a leading
    underscore per group field holding its name; every other body keeps ``count``."""
    table = f"agg_{token()}"
    rows = [{"count": 3}, {"count": 3}, {"count": 5}]
    assert client.post(f"/api/v1/data/{table}", json={"data": rows}).status_code == 201
    url = AGGREGATE.format(table)

    response = client.post(url, json={"group_by": ["count"], "sort": "_count:desc"})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"count": 3, "_count": 2}, {"count": 5, "_count": 1}]
    both = client.post(url, json={"group_by": ["count", "_count"], "sort": "count:asc"})
    assert both.status_code == 200, both.text
    assert both.json()["data"] == [
        {"count": 3, "_count": None, "__count": 2},
        {"count": 5, "_count": None, "__count": 1},
    ]
    assert client.post(url, json={}).json()["data"] == [{"count": 3}]
    by_other = client.post(url, json={"group_by": ["id"], "per_page": 1}).json()["data"]
    assert set(by_other[0]) == {"id", "count"}

    # A metric the client names itself still may not take a group field's name.
    clash = {"group_by": ["count"], "metrics": [{"op": "count", "as": "count"}]}
    error = assert_error(client.post(url, json=clash), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.metrics.0.as", error
