"""POST /data/{table}/query, /users/query and /orders/query: filter trees through the API.

Hypothesis generates records and filter trees; every answer is checked against a reference
evaluator written here from the documented semantics (docs/STORE.md), independently of the
store's code.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.auth import register
from tests.support.factories import assert_error, create_order, create_user, token

pytestmark = pytest.mark.integration

FIELDS = ("n", "s", "b", "tags", "meta.k", "gone")
NUMBERS = st.sampled_from([-2, 0, 1, 2, 1.0, 2.5])
STRINGS = st.sampled_from(["", "a", "ab", "abc", "b", "ba"])
SCALARS = st.one_of(NUMBERS, STRINGS, st.booleans(), st.none())


# -- the reference evaluator ----------------------------------------------------------------


def _rank(value: Any) -> int:
    """0 null, 1 bool, 2 number, 3 string, 4 list, 5 map."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float | Decimal):
        return 2
    if isinstance(value, str):
        return 3
    return 4 if isinstance(value, list) else 5


def _equal(a: Any, b: Any) -> bool:
    if _rank(a) != _rank(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _read(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def matches(record: dict[str, Any], node: dict[str, Any]) -> bool:
    if "and" in node:
        return all(matches(record, child) for child in node["and"])
    if "or" in node:
        return any(matches(record, child) for child in node["or"])
    if "not" in node:
        return not matches(record, node["not"])
    x, op = _read(record, node["field"]), node["op"]
    arg: Any = node.get("value")
    if op == "eq":
        return _equal(x, arg)
    if op == "ne":
        return not _equal(x, arg)
    if op == "in":
        return any(_equal(x, a) for a in arg)
    if op == "contains":
        if isinstance(x, str):
            return isinstance(arg, str) and arg in x
        return isinstance(x, list) and any(_equal(e, arg) for e in x)
    if op == "startswith":
        return isinstance(x, str) and x.startswith(arg)
    if op == "exists":
        return (x is not None) == arg
    if _rank(x) != _rank(arg) or _rank(x) not in (1, 2, 3):
        return False
    return {"gt": x > arg, "gte": x >= arg, "lt": x < arg, "lte": x <= arg}[op]


# -- strategies -----------------------------------------------------------------------------


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if draw(st.booleans()):
        record["n"] = draw(st.one_of(NUMBERS, st.none(), STRINGS))
    if draw(st.booleans()):
        record["s"] = draw(st.one_of(STRINGS, NUMBERS))
    if draw(st.booleans()):
        record["b"] = draw(st.booleans())
    if draw(st.booleans()):
        record["tags"] = draw(st.lists(st.one_of(STRINGS, NUMBERS), max_size=3))
    if draw(st.booleans()):
        record["meta"] = {"k": draw(SCALARS)}
    return record


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    op = draw(
        st.sampled_from(
            ["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "exists"]
        )
    )
    if op == "in":
        value: Any = draw(st.lists(SCALARS, max_size=4))
    elif op == "startswith":
        value = draw(STRINGS)
    elif op == "exists":
        value = draw(st.booleans())
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.one_of(NUMBERS, STRINGS, st.booleans()))
    else:
        value = draw(SCALARS)
    return {"field": field, "op": op, "value": value}


trees = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.builds(lambda c: {"and": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"or": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=6,
)


# -- tests ----------------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(records(), min_size=1, max_size=25), filters=st.lists(trees, max_size=4))
def test_filter_trees_match_the_reference(
    client: httpx.Client, rows: list[dict[str, Any]], filters: list[dict[str, Any]]
) -> None:
    table = f"qt_{token()}"
    created = client.post(f"/api/v1/data/{table}", json={"data": rows})
    assert created.status_code == 201, created.text
    stored = created.json()["data"]
    for tree in filters:
        response = client.post(
            f"/api/v1/data/{table}/query", json={"filter": tree, "per_page": 100}
        )
        assert response.status_code == 200, (tree, response.text)
        body = response.json()
        expected = [r["id"] for r in stored if matches(r, tree)]
        assert [r["id"] for r in body["data"]] == expected, tree
        assert body["meta"]["total"] == len(expected)
        count = client.post(f"/api/v1/data/{table}/aggregate", json={"filter": tree})
        assert count.json()["data"] == [{"count": len(expected)}]


def test_sort_page_and_projection(client: httpx.Client) -> None:
    table = f"qt_{token()}"
    rows: list[dict[str, Any]] = [
        {"name": f"r{i}", "n": i % 4, "meta": {"c": i, "d": "x"}} for i in range(10)
    ]
    client.post(f"/api/v1/data/{table}", json={"data": rows})
    body = {
        "filter": {"and": [{"field": "n", "op": "gte", "value": 1}]},
        "sort": "n:desc,name:asc",
        "page": 2,
        "per_page": 3,
        "fields": ["name", "meta.c"],
    }
    response = client.post(f"/api/v1/data/{table}/query", json=body)
    assert response.status_code == 200, response.text
    page = response.json()
    expected = sorted((r for r in rows if r["n"] >= 1), key=lambda r: (-r["n"], r["name"]))
    assert [r["name"] for r in page["data"]] == [r["name"] for r in expected[3:6]]
    assert page["meta"] == {"page": 2, "per_page": 3, "total": len(expected)}
    for item in page["data"]:
        assert set(item) == {"id", "name", "meta"} and set(item["meta"]) == {"c"}
    assert response.headers["etag"].startswith('W/"')


def test_a_projection_of_50_fields_is_accepted(client: httpx.Client) -> None:
    """The documented 50 names, plus the version the API asks the store for (its ETag)."""
    table = f"qt_{token()}"
    made = client.post(f"/api/v1/data/{table}", json={"data": {"f0": 1, "f49": 2}})
    record = made.json()["data"]
    with_version = ["version", *(f"f{i}" for i in range(49))]
    for names, expected in [
        ([f"f{i}" for i in range(50)], {"id": record["id"], "f0": 1, "f49": 2}),
        (with_version, {"id": record["id"], "f0": 1, "version": 1}),
    ]:
        response = client.post(f"/api/v1/data/{table}/query", json={"fields": names})
        assert response.status_code == 200, response.text
        assert response.json()["data"] == [expected]
        assert response.headers["etag"].startswith('W/"')


def test_a_path_into_a_scalar_projects_nothing_even_into_the_version(
    client: httpx.Client,
) -> None:
    """QA: ``version.x`` answered the record's version, which the API reads for the ETag; a
    path through a number is nothing, as ``n.x`` is."""
    table = f"qt_{token()}"
    made = client.post(f"/api/v1/data/{table}", json={"data": {"n": 5, "meta": {"c": 1}}})
    record_id = made.json()["data"]["id"]
    url = f"/api/v1/data/{table}/query"
    for names, expected in [
        (["version.x"], {"id": record_id}),
        (["n.x", "version.x", "meta.c"], {"id": record_id, "meta": {"c": 1}}),
        (["version", "version.x"], {"id": record_id, "version": 1}),
    ]:
        response = client.post(url, json={"fields": names})
        assert response.status_code == 200, response.text
        assert response.json()["data"] == [expected], names


@pytest.mark.parametrize("kind", ["data", "users", "orders", "data/users"])
def test_a_query_tag_depends_on_its_projection_and_a_post_that_hits_is_412(
    client: httpx.Client, kind: str
) -> None:
    """QA: /users/query gave two projections of one page the same tag."""
    if kind == "data":
        table = f"qt_{token()}"
        rows = [{"n": i, "k": -i} for i in range(3)]
        client.post(f"/api/v1/data/{table}", json={"data": rows})
        url, first, second, where = f"/api/v1/data/{table}/query", "n", "k", None
    elif kind == "orders":
        user = create_user(client)
        create_order(client, user["id"])
        url, first, second = "/api/v1/orders/query", "quantity", "product_name"
        where = {"field": "user_id", "op": "eq", "value": user["id"]}
    else:
        user = create_user(client)
        url, first, second = f"/api/v1/{kind}/query", "email", "full_name"
        where = {"field": "id", "op": "eq", "value": user["id"]}
    by_first = client.post(url, json={"filter": where, "fields": [first]})
    by_second = client.post(url, json={"filter": where, "fields": [second]})
    whole = client.post(url, json={"filter": where})
    tags = {r.headers["etag"] for r in (by_first, by_second, whole)}
    assert len(tags) == 3  # same records and versions, three different bodies
    # RFC 9110: a failed If-None-Match on a method other than GET/HEAD is 412, never 304.
    tag = {"If-None-Match": by_first.headers["etag"]}
    again = client.post(url, json={"filter": where, "fields": [first]}, headers=tag)
    assert_error(again, 412, "PRECONDITION_FAILED")
    assert again.headers["etag"] == by_first.headers["etag"]
    other = client.post(url, json={"filter": where, "fields": [second]}, headers=tag)
    assert other.status_code == 200 and other.json()["data"][0].keys() == {"id", second}


def test_no_filter_lists_everything(client: httpx.Client) -> None:
    table = f"qt_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": [{"i": i} for i in range(3)]})
    response = client.post(f"/api/v1/data/{table}/query", json={})
    assert [r["i"] for r in response.json()["data"]] == [0, 1, 2]


def test_typed_tables_check_fields_and_types(client: httpx.Client) -> None:
    user = create_user(client, age=41)
    create_order(client, user["id"], total_price="12.50", quantity=3)
    create_order(client, user["id"], total_price="7.25", quantity=1)
    mine = {"field": "user_id", "op": "eq", "value": user["id"]}
    tree = {"and": [mine, {"field": "total_price", "op": "gte", "value": "10"}]}
    found = client.post("/api/v1/orders/query", json={"filter": tree}).json()
    assert [o["total_price"] for o in found["data"]] == ["12.50"]
    tree = {"and": [mine, {"field": "created_at", "op": "gte", "value": "2000-01-01"}]}
    found = client.post("/api/v1/data/orders/query", json={"filter": tree}).json()
    assert found["meta"]["total"] == 2

    by_email = {"field": "email", "op": "eq", "value": user["email"].upper()}
    users = client.post("/api/v1/users/query", json={"filter": by_email, "fields": ["age"]})
    assert users.json()["data"] == [{"id": user["id"], "age": 41}]

    error = assert_error(
        client.post(
            "/api/v1/users/query", json={"filter": {"field": "password_hash", "op": "exists"}}
        ),
        400,
        "BAD_QUERY",
    )
    assert error["details"][0]["field"] == "body.filter.field"
    bad_type = {"or": [mine, {"field": "quantity", "op": "gt", "value": "three"}]}
    error = assert_error(
        client.post("/api/v1/orders/query", json={"filter": bad_type}), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "body.filter.or.1.value"
    assert error["details"][0]["path"] == ["or", 1, "value"]
    error = assert_error(
        client.post(
            "/api/v1/orders/query",
            json={"filter": {"field": "quantity", "op": "startswith", "value": "1"}},
        ),
        400,
        "BAD_QUERY",
    )
    assert error["details"][0]["field"] == "body.filter.op"
    projection = client.post("/api/v1/users/query", json={"fields": ["password_hash"]})
    assert_error(projection, 400, "BAD_QUERY")


def test_users_query_is_for_admins(anon: httpx.Client) -> None:
    account = register(anon)
    assert_error(anon.post("/api/v1/users/query", json={}), 401)
    assert_error(anon.post("/api/v1/users/query", json={}, headers=account.headers), 403)


def test_orders_query_shows_a_user_only_their_own(client: httpx.Client, anon: httpx.Client) -> None:
    me, other = register(anon), register(anon)
    mine = create_order(client, me.id, product_name="mine")
    create_order(client, other.id, product_name="theirs")
    everything = {
        "or": [
            {"field": "user_id", "op": "eq", "value": other.id},
            {"field": "product_name", "op": "startswith", "value": ""},
        ]
    }
    response = anon.post(
        "/api/v1/orders/query", json={"filter": everything, "expand": "user"}, headers=me.headers
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [o["id"] for o in data] == [mine["id"]]
    assert data[0]["user"]["id"] == me.id and "password_hash" not in data[0]["user"]
    deep: dict[str, Any] = {"field": "quantity", "op": "gt", "value": 0}
    for _ in range(7):
        deep = {"not": deep}
    # 8 levels is the limit; a user's query keeps one for their own-orders condition.
    assert client.post("/api/v1/orders/query", json={"filter": deep}).status_code == 200
    limited = anon.post("/api/v1/orders/query", json={"filter": deep}, headers=me.headers)
    assert_error(limited, 400, "LIMIT_EXCEEDED")


@pytest.mark.parametrize(
    ("tree", "status", "code", "field"),
    [
        ({"field": "a", "op": "like", "value": 1}, 400, "BAD_QUERY", "body.filter.op"),
        (
            {
                "or": [
                    {"field": "a", "op": "eq", "value": 1},
                    {"field": "a b", "op": "eq", "value": 1},
                ]
            },
            400,
            "BAD_QUERY",
            "body.filter.or.1.field",
        ),
        ({"and": []}, 422, "VALIDATION_ERROR", "body.filter.and"),
        ({"and": [{"xor": []}]}, 422, "VALIDATION_ERROR", "body.filter.and.0"),
        ({"not": [1]}, 422, "VALIDATION_ERROR", "body.filter.not"),
        ({"field": "a", "op": "eq"}, 422, "VALIDATION_ERROR", "body.filter.value"),
        ({"field": "a", "op": "eq", "value": 1, "x": 2}, 422, "VALIDATION_ERROR", "body.filter.x"),
        ({"field": "a", "op": "in", "value": 3}, 422, "VALIDATION_ERROR", "body.filter.value"),
        (
            {"field": "a", "op": "in", "value": list(range(101))},
            400,
            "LIMIT_EXCEEDED",
            "body.filter.value",
        ),
        (
            {"field": "a", "op": "exists", "value": "yes"},
            422,
            "VALIDATION_ERROR",
            "body.filter.value",
        ),
        (
            {"field": "a", "op": "startswith", "value": 1},
            422,
            "VALIDATION_ERROR",
            "body.filter.value",
        ),
        ({"field": "a", "op": "gt", "value": None}, 422, "VALIDATION_ERROR", "body.filter.value"),
        ({"field": "a", "op": "eq", "value": 2**70}, 422, "VALIDATION_ERROR", "body.filter.value"),
        (
            {"field": "created_at", "op": "gt", "value": "yesterday"},
            422,
            "VALIDATION_ERROR",
            "body.filter.value",
        ),
        (
            {"or": [{"field": "a", "op": "eq", "value": i} for i in range(100)]},
            400,
            "LIMIT_EXCEEDED",
            "body.filter.or.99",
        ),
        ("a = 1", 422, "VALIDATION_ERROR", "body.filter"),
    ],
)
def test_bad_trees_name_the_bad_node(
    client: httpx.Client, tree: Any, status: int, code: str, field: str
) -> None:
    response = client.post(f"/api/v1/data/qt_{token()}/query", json={"filter": tree})
    error = assert_error(response, status, code)
    assert error["details"][0]["field"] == field, error


def test_depth_limit(client: httpx.Client) -> None:
    tree: dict[str, Any] = {"field": "a", "op": "eq", "value": 1}
    for _ in range(7):
        tree = {"not": tree}
    table = f"qt_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": {"a": 2}})
    assert client.post(f"/api/v1/data/{table}/query", json={"filter": tree}).status_code == 200
    error = assert_error(
        client.post(f"/api/v1/data/{table}/query", json={"filter": {"not": tree}}),
        400,
        "LIMIT_EXCEEDED",
    )
    assert error["details"][0]["path"] == ["not"] * 8


def test_too_many_in_values_are_the_same_400_in_a_body_and_in_a_query_string(
    client: httpx.Client,
) -> None:
    table = f"qt_{token()}"
    client.post(f"/api/v1/data/{table}", json={"data": {"a": 2}})
    many = list(range(101))
    in_body = client.post(
        f"/api/v1/data/{table}/query", json={"filter": {"field": "a", "op": "in", "value": many}}
    )
    in_query = client.get(f"/api/v1/data/{table}", params={"a__in": ",".join(map(str, many))})
    for response in (in_body, in_query):
        error = assert_error(response, 400, "LIMIT_EXCEEDED")
        assert "at most 100 values" in error["details"][0]["message"], error
    assert (
        client.get(f"/api/v1/data/{table}", params={f"f{i}": 1 for i in range(21)}).json()["error"][
            "code"
        ]
        == "LIMIT_EXCEEDED"
    )
    hundred = {"filter": {"field": "a", "op": "in", "value": many[:100]}}
    assert client.post(f"/api/v1/data/{table}/query", json=hundred).json()["meta"]["total"] == 1


def test_query_body_errors(client: httpx.Client) -> None:
    url = f"/api/v1/data/qt_{token()}/query"
    assert_error(client.post(url, json={"per_page": 101}), 422, "VALIDATION_ERROR")
    # JSON numbers only: a string or a float page is the client's type error, not coerced.
    for loose in ({"page": "2"}, {"per_page": "5"}, {"page": 2.0}, {"page": True}):
        error = assert_error(client.post(url, json=loose), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == f"body.{next(iter(loose))}", error
        aggregate = client.post(url.replace("/query", "/aggregate"), json=loose)
        assert_error(aggregate, 422, "VALIDATION_ERROR")
    assert_error(client.post(url, json={"fields": ["a"] * 51}), 422, "VALIDATION_ERROR")
    assert_error(client.post(url, json={"sort": "a:sideways"}), 400, "BAD_QUERY")
    assert_error(client.post(url, json={"bogus": 1}), 422, "VALIDATION_ERROR")
    assert_error(client.post(url, content=b"{", headers={"Content-Type": "application/json"}), 422)
    assert_error(client.post(url, json={}), 404, "NOT_FOUND")
    assert_error(client.post("/api/v1/data/_x/query", json={}), 400, "INVALID_TABLE_NAME")


def test_a_users_limit_says_what_the_owner_condition_takes(anon: httpx.Client) -> None:
    """The store's 8 levels hold with the owner condition in the tree: a user's 8 would be
    refused by the store anyway, so the 400 says where the eighth went."""
    me = register(anon)
    deep: dict[str, Any] = {"field": "quantity", "op": "gt", "value": 0}
    for _ in range(7):
        deep = {"not": deep}
    response = anon.post("/api/v1/orders/query", json={"filter": deep}, headers=me.headers)
    error = assert_error(response, 400, "LIMIT_EXCEEDED")
    assert error["details"][0]["field"] == "body.filter" + ".not" * 7
    assert "the condition the API adds (your own records only) takes 1" in error["message"]
    aggregate = anon.post(
        "/api/v1/orders/aggregate",
        json={"filter": deep, "metrics": [{"op": "count", "as": "n"}]},
        headers=me.headers,
    )
    assert "of the store's 8" in assert_error(aggregate, 400, "LIMIT_EXCEEDED")["message"]
