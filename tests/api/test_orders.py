"""/api/v1/orders against the real stack: exact decimals, foreign key, relationships, ETags."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest

from tests.support.factories import (
    assert_error,
    create_order,
    create_user,
    order_payload,
)

pytestmark = pytest.mark.integration
PUBLIC = {
    "id",
    "user_id",
    "product_name",
    "quantity",
    "total_price",
    "order_date",
    "created_at",
    "updated_at",
    "version",
}


@pytest.fixture
def user(client: httpx.Client) -> dict[str, object]:
    return create_user(client)


def test_create_order(client: httpx.Client, user: dict[str, str]) -> None:
    response = client.post("/api/v1/orders", json=order_payload(user["id"], total_price="19.99"))
    assert response.status_code == 201
    order = response.json()["data"]
    assert set(order) == PUBLIC
    assert order["total_price"] == "19.99"  # a string: exact, never a binary float
    assert order["user_id"] == user["id"] and order["order_date"].endswith("Z")
    assert response.headers["location"] == f"/api/v1/orders/{order['id']}"
    assert response.headers["etag"] == 'W/"1"'


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("0.10", "0.10"),
        (99.99, "99.99"),
        ("1234567.5", "1234567.50"),  # always two places
        (3, "3.00"),
        ("1e2", "100.00"),  # no exponent form ("1E+2") in answers
        ("2.5E+1", "25.00"),
        ("1.2300", "1.23"),  # zeros past the cents dropped: sums keep two places
        ("0.010", "0.01"),
        ("1.50000000000000000000", "1.50"),
    ],
)
def test_total_price_stays_exact(
    client: httpx.Client, user: dict[str, str], sent: object, stored: str
) -> None:
    order = create_order(client, user["id"], total_price=sent)
    assert order["total_price"] == stored
    fetched = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
    assert fetched["total_price"] == stored


def test_decimal_filters_and_sort_are_numeric(client: httpx.Client, user: dict[str, str]) -> None:
    prices = ["10.00", "9.50", "100.01", "0.99", "10.01"]
    for price in prices:
        create_order(client, user["id"], total_price=price)
    body = client.get(
        "/api/v1/orders",
        params={"user_id": user["id"], "total_price__gte": "9.99", "sort": "total_price:desc"},
    ).json()
    expected = sorted((p for p in prices if Decimal(p) >= Decimal("9.99")), key=Decimal)[::-1]
    assert [o["total_price"] for o in body["data"]] == expected
    assert body["meta"]["total"] == len(expected)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quantity": 0}, "body.quantity"),
        ({"quantity": 1.5}, "body.quantity"),
        ({"total_price": "0"}, "body.total_price"),
        ({"total_price": "-1"}, "body.total_price"),
        ({"total_price": "1.001"}, "body.total_price"),
        ({"total_price": "NaN"}, "body.total_price"),
        # refused before being written out: "1e999999999" is a billion digits in plain form
        ({"total_price": "1e999999999"}, "body.total_price"),
        ({"total_price": "1e-999999999"}, "body.total_price"),
        ({"total_price": 1e300}, "body.total_price"),
        # Decimal() reads these; the documented notation (ASCII digits, no "_") does not
        ({"total_price": "1_000.00"}, "body.total_price"),
        ({"total_price": "\u0661\u0662\u0663"}, "body.total_price"),
        ({"total_price": "\uff11\uff12"}, "body.total_price"),
        ({"product_name": ""}, "body.product_name"),
        ({"product_name": "x" * 201}, "body.product_name"),
        ({"product_name": "a\x00b"}, "body.product_name"),  # shown to people: as full_name
        ({"product_name": "\u202egnp.exe"}, "body.product_name"),
        ({"product_name": "\u200b"}, "body.product_name"),
        ({"user_id": "not-a-uuid"}, "body.user_id"),
        ({"order_date": "2020-01-01"}, "body.order_date"),
    ],
)
def test_create_order_validation_is_422(
    client: httpx.Client, user: dict[str, str], fields: dict[str, object], field: str
) -> None:
    response = client.post("/api/v1/orders", json={**order_payload(user["id"]), **fields})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert field in {item["field"] for item in error["details"]}


def test_order_for_a_missing_user_is_409(client: httpx.Client) -> None:
    response = client.post("/api/v1/orders", json=order_payload(str(uuid.uuid4())))
    error = assert_error(response, 409, "FOREIGN_KEY_VIOLATION")
    assert error["details"][0]["field"] == "user_id"


def test_read_update_delete_order(client: httpx.Client, user: dict[str, str]) -> None:
    order = create_order(client, user["id"])
    url = f"/api/v1/orders/{order['id']}"
    read = client.get(url)
    assert read.json()["data"] == order
    assert client.get(url, headers={"If-None-Match": read.headers["etag"]}).status_code == 304

    patched = client.patch(url, json={"quantity": 5, "total_price": "49.95"})
    assert patched.status_code == 200
    assert patched.json()["data"]["quantity"] == 5
    assert patched.json()["data"]["total_price"] == "49.95"
    assert patched.json()["data"]["order_date"] == order["order_date"]

    assert_error(client.patch(url, json={"quantity": 0}), 422)
    assert_error(client.patch(url, json={"user_id": None}), 422)
    # one detail for the field: not also "Input should be None" from the optional's None branch
    error = assert_error(client.patch(url, json={"total_price": "1e999999999"}), 422)
    assert [d["field"] for d in error["details"]] == ["body.total_price"]
    moved = client.patch(url, json={"user_id": str(uuid.uuid4())})
    assert_error(moved, 409, "FOREIGN_KEY_VIOLATION")
    assert_error(client.patch(url, json={"quantity": 6}, headers={"If-Match": 'W/"1"'}), 412)

    assert client.delete(url, headers={"If-Match": 'W/"2"'}).status_code == 204
    assert_error(client.get(url), 404, "NOT_FOUND")


def test_order_user_relationship(client: httpx.Client, user: dict[str, str]) -> None:
    order = create_order(client, user["id"])
    response = client.get(f"/api/v1/orders/{order['id']}/user")
    assert response.status_code == 200
    assert response.json()["data"]["id"] == user["id"]
    assert "password" not in response.text
    assert_error(client.get("/api/v1/orders/nope/user"), 404, "NOT_FOUND")


def test_an_order_moved_to_another_user_changes_the_tag_of_its_user(
    client: httpx.Client, user: dict[str, str]
) -> None:
    """QA: both users at version 1, the order's user kept the tag W/"1" after the move: a
    revalidation got a 304 and kept showing the old user, and If-Match W/"1" passed."""
    other = create_user(client)
    assert user["version"] == other["version"] == 1
    order = create_order(client, user["id"])
    url = f"/api/v1/orders/{order['id']}/user"
    before = client.get(url)
    tag = before.headers["etag"]
    assert client.get(url, headers={"If-None-Match": tag}).status_code == 304
    moved = client.patch(f"/api/v1/orders/{order['id']}", json={"user_id": other["id"]})
    assert moved.status_code == 200, moved.text
    after = client.get(url, headers={"If-None-Match": tag})
    assert after.status_code == 200
    assert after.json()["data"]["id"] == other["id"]
    assert after.headers["etag"] != tag
    assert_error(client.get(url, headers={"If-Match": tag}), 412, "PRECONDITION_FAILED")


def test_list_orders_pagination_against_reference(
    client: httpx.Client, user: dict[str, str]
) -> None:
    orders = [create_order(client, user["id"], quantity=q) for q in (3, 1, 4, 1, 5, 9, 2, 6)]
    pages = [
        client.get(
            "/api/v1/orders",
            params={"user_id": user["id"], "per_page": 3, "page": page, "sort": "quantity:asc"},
        ).json()
        for page in (1, 2, 3)
    ]
    assert all(page["meta"]["total"] == 8 for page in pages)
    seen = [o["id"] for page in pages for o in page["data"]]
    expected = [o["id"] for o in sorted(orders, key=lambda o: o["quantity"])]  # stable
    assert seen == expected


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"colour": "red"}, 400),
        ({"quantity__like": "1"}, 400),
        ({"quantity": "many"}, 422),
        ({"total_price__gt": "ten"}, 422),
        ({"order_date__gte": "tomorrow"}, 422),
    ],
)
def test_bad_order_list_queries(client: httpx.Client, params: dict[str, str], status: int) -> None:
    assert_error(client.get("/api/v1/orders", params=params), status)


def post_json(client: httpx.Client, url: str, body: str) -> httpx.Response:
    """A body as written: JSON numbers such as ``1e2`` or ``5.00`` exactly as sent."""
    return client.post(url, content=body.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "price",
    ["1e2", '"1e2"', "100", '"100"', "100.0", '"100.0"', "100.00", '"100.00"', '"1.00E+2"'],
)
def test_total_price_has_one_form_whatever_the_json_type(
    client: httpx.Client, user: dict[str, str], price: str
) -> None:
    """A JSON number (read through a float) and a string of the same amount are stored alike,
    with exactly two places."""
    body = (
        f'{{"user_id": "{user["id"]}", "product_name": "P", "quantity": 1, "total_price": {price}}}'
    )
    response = post_json(client, "/api/v1/orders", body)
    assert response.status_code == 201, response.text
    order = response.json()["data"]
    assert order["total_price"] == "100.00"
    assert client.get(f"/api/v1/orders/{order['id']}").json()["data"]["total_price"] == "100.00"


def test_every_order_write_path_stores_two_places(
    client: httpx.Client, user: dict[str, str]
) -> None:
    """The typed routes, /data/orders (one, many, PUT, PATCH, PATCH by filter), transactions and
    CSV import all store 5 as "5.00"; equal prices then list, filter and sort as one."""
    uid = user["id"]
    order = {"user_id": uid, "product_name": "Five", "quantity": 1}
    made = [create_order(client, uid, product_name="Five", total_price=5)]
    made.append(create_order(client, uid, product_name="Five", total_price="9.99"))
    patched = client.patch(f"/api/v1/orders/{made[1]['id']}", json={"total_price": "5"})
    assert patched.json()["data"]["total_price"] == "5.00", patched.text
    data = "/api/v1/data/orders"
    one = post_json(
        client,
        data,
        f'{{"data": {{"user_id": "{uid}", "product_name": "Five",'
        ' "quantity": 1, "total_price": 5.0}}',
    )
    assert one.status_code == 201, one.text
    many = client.post(data, json={"data": [{**order, "total_price": p} for p in ("5", "9")]})
    assert many.status_code == 201, many.text
    replaced_id, patched_id = (record["id"] for record in many.json()["data"])
    replaced = client.put(f"{data}/{replaced_id}", json={"data": {**order, "total_price": "5.0"}})
    assert replaced.json()["data"]["total_price"] == "5.00", replaced.text
    patched = client.patch(f"{data}/{patched_id}", json={"data": {"total_price": "9.9"}})
    assert patched.json()["data"]["total_price"] == "9.90", patched.text
    by_filter = client.patch(data, params={"id": patched_id}, json={"data": {"total_price": "5e0"}})
    assert by_filter.json()["data"]["updated"] == 1, by_filter.text
    transaction = client.post(
        "/api/v1/transaction",
        json={
            "operations": [
                {"op": "insert", "table": "orders", "data": {**order, "total_price": "5"}},
                {
                    "op": "patch",
                    "table": "orders",
                    "id": {"$ref": "0.id"},
                    "data": {"total_price": "0.5e1"},
                },
            ]
        },
    )
    assert transaction.status_code == 200, transaction.text
    assert [r["total_price"] for r in transaction.json()["data"]["results"]] == ["5.00"] * 2
    csv = "user_id,product_name,quantity,total_price\n" + f"{uid},Five,1,5\n{uid},Five,1,5.0\n"
    imported = client.post(
        "/api/v1/batch/import",
        params={"table": "orders"},
        content=csv.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert imported.json()["data"]["imported"] == 2, imported.text

    fives = client.get("/api/v1/orders", params={"user_id": uid, "total_price": "5"}).json()
    assert [o["total_price"] for o in fives["data"]] == ["5.00"] * 8
    create_order(client, uid, total_price="10")
    create_order(client, uid, total_price=9.5)
    ordered = client.get(
        "/api/v1/orders",
        params={"user_id": uid, "total_price__gt": "5", "sort": "total_price:asc"},
    ).json()
    assert [o["total_price"] for o in ordered["data"]] == ["9.50", "10.00"]
