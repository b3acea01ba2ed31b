"""List filters through the API: values no stored record can equal, decimal notation, repeated
date bounds, and the documented edges of the filter semantics (README, "Lists")."""

from __future__ import annotations

import httpx
import pytest

from api.queries import FINER_THAN_STORED
from tests.support.auth import register
from tests.support.factories import assert_error, create_order, create_record, create_user, token

pytestmark = pytest.mark.integration


def _finer(stamp: str) -> str:
    """The same microsecond plus half of one: ``...09.898988Z`` → ``...09.8989885Z``."""
    return stamp[:-1] + "5Z"


@pytest.mark.parametrize("key", ["created_at", "created_at__ne", "order_date__in"])
def test_an_order_equality_finer_than_a_microsecond_is_a_422(
    client: httpx.Client, key: str
) -> None:
    order = create_order(client, create_user(client)["id"])
    stamp = order[key.partition("__")[0]]
    response = client.get("/api/v1/orders", params={key: _finer(stamp)})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"] == [{"field": f"query.{key}", "message": FINER_THAN_STORED}]
    exact = client.get("/api/v1/orders", params={key.partition("__")[0]: stamp})
    assert [o["id"] for o in exact.json()["data"]] == [order["id"]]


@pytest.mark.parametrize("key", ["created_after", "order_date__gte"])
def test_seconds_since_1970_as_a_time_bound_is_a_422(client: httpx.Client, key: str) -> None:
    """QA: 1704110400 (2024-01-01T12:00Z in seconds, a notation POST /orders takes for an
    order_date) was read as the date 1704-11-04, so a 2020 order passed ``>= 2024``."""
    create_order(client, create_user(client)["id"], order_date="2020-06-01T00:00:00Z")
    error = assert_error(client.get("/api/v1/orders", params={key: "1704110400"}), 422)
    assert error["details"][0]["field"] == f"query.{key}"
    tree = {"field": "order_date", "op": "gte", "value": "1704110400"}
    response = client.post("/api/v1/orders/query", json={"filter": tree})
    assert assert_error(response, 422)["details"][0]["field"] == "body.filter.value"


def test_a_query_body_equality_finer_than_a_microsecond_is_a_422(client: httpx.Client) -> None:
    order = create_order(client, create_user(client)["id"])
    tree = {"field": "created_at", "op": "eq", "value": _finer(order["created_at"])}
    response = client.post("/api/v1/orders/query", json={"filter": tree})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.filter.value"
    assert error["details"][0]["message"] == FINER_THAN_STORED


def test_an_orders_user_id_filter_takes_any_spelling_of_the_uuid(client: httpx.Client) -> None:
    """QA: an order written with its user_id in capitals is stored in lower case, but filters
    compared the text as sent: ``?user_id=<CAPITALS>`` found nothing, and ``?user_id=x`` was a
    200 with nothing rather than a 422."""
    user_id = create_user(client)["id"]
    order = create_order(client, user_id.upper())
    assert order["user_id"] == user_id
    for sent in (user_id, user_id.upper(), "{" + user_id.upper() + "}"):
        listed = client.get("/api/v1/orders", params={"user_id": sent}).json()
        assert [o["id"] for o in listed["data"]] == [order["id"]], sent
        tree = {"field": "user_id", "op": "in", "value": [sent]}
        queried = client.post("/api/v1/orders/query", json={"filter": tree}).json()
        assert [o["id"] for o in queried["data"]] == [order["id"]], sent
    error = assert_error(client.get("/api/v1/orders", params={"user_id": "x"}), 422)
    assert error["details"][0] == {"field": "query.user_id", "message": "expected a UUID"}
    tree = {"field": "user_id", "op": "eq", "value": "x"}
    error = assert_error(client.post("/api/v1/orders/query", json={"filter": tree}), 422)
    assert error["details"][0]["field"] == "body.filter.value"


def test_a_generic_tables_created_at_equality_finer_than_a_microsecond_is_a_422(
    client: httpx.Client,
) -> None:
    table = f"lf_{token()}"
    record = create_record(client, table, n=1)
    response = client.get(
        f"/api/v1/data/{table}", params={"created_at": _finer(record["created_at"])}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "query.created_at"


@pytest.mark.parametrize("value", ["\u0661\u0660\u0660", "\uff11\uff10\uff10", "1_0_0"])
def test_decimal_filters_take_ascii_digits_only(client: httpx.Client, value: str) -> None:
    listed = client.get("/api/v1/orders", params={"total_price": value})
    error = assert_error(listed, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "query.total_price"
    tree = {"field": "total_price", "op": "eq", "value": value}
    queried = client.post("/api/v1/orders/query", json={"filter": tree})
    error = assert_error(queried, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.filter.value"


@pytest.mark.parametrize(
    ("bounds", "matches"),
    [
        ([("created_after", "2000-01-01"), ("created_after", "2999-01-01")], False),
        ([("created_after", "2999-01-01"), ("created_after", "2000-01-01")], False),
        ([("created_before", "2000-01-01"), ("created_before", "2999-01-01")], False),
        ([("created_after", "2000-01-01"), ("created_before", "2999-01-01")], True),
    ],
)
def test_repeated_created_bounds_are_anded(
    client: httpx.Client, bounds: list[tuple[str, str]], matches: bool
) -> None:
    user = create_user(client)
    order = create_order(client, user["id"])
    response = client.get("/api/v1/orders", params=[("user_id", user["id"]), *bounds])
    assert response.status_code == 200, response.text
    assert [o["id"] for o in response.json()["data"]] == ([order["id"]] if matches else [])


def test_documented_filter_edges(client: httpx.Client, anon: httpx.Client) -> None:
    """What the README's list section states about ties, case, ne, contains and ``__`` names."""
    table = f"lf_{token()}"
    rows = [create_record(client, table, **fields) for fields in ({"n": 1}, {"n": 1}, {"m": 2})]
    rows.append(create_record(client, table, n=None, s="abc", **{"a__b": 1}))
    url = f"/api/v1/data/{table}"

    def ids(**params: str) -> list[str]:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["data"]]

    # Ties keep creation order, ascending, whatever the direction.
    assert ids(sort="n:desc", n__exists="true") == [rows[0]["id"], rows[1]["id"]]
    # ne also matches a field that is missing or null.
    assert ids(n__ne="1") == [rows[2]["id"], rows[3]["id"]]
    # contains with an empty value matches every string.
    assert ids(s__contains="") == [rows[3]["id"]]
    # A name with __ in it needs its operator spelled out.
    assert ids(a__b__eq="1") == [rows[3]["id"]]
    assert_error(client.get(url, params={"a__b": "1"}), 400, "BAD_QUERY")
    # email: eq/ne/in ignore case; contains, startswith and ranges do not.
    account = register(anon, email=f"Case-{token()}@Example.com")
    email = account.user["email"]
    users = "/api/v1/users"
    for params in ({"email": email.lower()}, {"email__in": email.upper()}):
        assert [u["id"] for u in client.get(users, params=params).json()["data"]] == [account.id]
    assert client.get(users, params={"email__contains": email.lower()}).json()["data"] == []
    assert client.get(users, params={"email__startswith": email.lower()}).json()["data"] == []
    others = client.get(users, params={"email__ne": email.lower(), "id": account.id})
    assert others.json()["data"] == []


def test_a_range_with_a_null_operand_is_the_same_422_in_a_query_string_and_a_body(
    client: httpx.Client,
) -> None:
    """QA: ``?v__gt=null`` listed nothing (200) and counted 0 where the same condition in a
    query body is a 422: null has no place in an order, so every parser refuses it."""
    table = f"lf_{token()}"
    for fields in ({"v": 1}, {"v": None}, {}):
        create_record(client, table, **fields)
    url = f"/api/v1/data/{table}"
    for op in ("gt", "gte", "lt", "lte"):
        body = {"filter": {"field": "v", "op": op, "value": None}}
        error = assert_error(client.post(f"{url}/query", json=body), 422, "VALIDATION_ERROR")
        message = error["details"][0]["message"]
        assert message == f"'{op}' takes a number, string or boolean", error
        for key in (f"v__{op}", f"created_at__{op}", f"version__{op}"):
            for route in (url, f"{url}/count"):
                response = client.get(route, params={key: "null"})
                error = assert_error(response, 422, "VALIDATION_ERROR")
                assert error["details"] == [{"field": f"query.{key}", "message": message}]
    # On a typed field too (users.age), as its body says.
    response = client.get("/api/v1/users", params={"age__gte": "null"})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"] == [
        {"field": "query.age__gte", "message": "'gte' takes a number, string or boolean"}
    ]
    # A string field reads "null" as the text, in a body as in a query string.
    names = client.get("/api/v1/users", params={"full_name__gt": "null", "per_page": 1})
    assert names.status_code == 200, names.text


def test_null_in_an_in_list_is_none_on_a_number_or_time_field_as_in_a_body(
    client: httpx.Client,
) -> None:
    """QA: ``?age__in=null,41`` was a 422 "expected an integer" while ``age=null`` and a body's
    ``in: [null, 41]`` both match a user without an age."""
    tag = token()
    ageless = create_user(client, full_name=f"Ageless {tag}", age=None)
    aged = create_user(client, full_name=f"Aged {tag}", age=41)
    create_user(client, full_name=f"Other {tag}", age=42)
    both = [ageless["id"], aged["id"]]
    mine = {"full_name__contains": tag, "sort": "age:asc"}
    listed = client.get("/api/v1/users", params={**mine, "age__in": "null,41"})
    assert listed.status_code == 200, listed.text
    assert [u["id"] for u in listed.json()["data"]] == both
    tree = {
        "and": [
            {"field": "full_name", "op": "contains", "value": tag},
            {"field": "age", "op": "in", "value": [None, 41]},
        ]
    }
    queried = client.post("/api/v1/users/query", json={"filter": tree, "sort": "age:asc"})
    assert [u["id"] for u in queried.json()["data"]] == both

    # A generic table's created_at and version are typed as well.
    table = f"lf_{token()}"
    row = create_record(client, table, n=1)
    url = f"/api/v1/data/{table}"
    for key, raw in (("version__in", "null,1"), ("created_at__in", f"null,{row['created_at']}")):
        response = client.get(url, params={key: raw})
        assert response.status_code == 200, response.text
        assert [r["id"] for r in response.json()["data"]] == [row["id"]]
        count = client.get(f"{url}/count", params={key: raw})
        assert count.json()["data"] == {"count": 1}
    # "null" among other values is still not an integer where the field takes no null.
    error = assert_error(client.get(url, params={"version__in": "1,nul"}), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "query.version__in"
