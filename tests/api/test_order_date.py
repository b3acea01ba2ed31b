"""POST /api/v1/orders with ``order_date``: an admin may date an order in the past (or now);
a future date is 422; anyone else's order is dated by the server whatever they send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.auth import register
from tests.support.factories import assert_error, create_user, order_payload

pytestmark = pytest.mark.integration


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def user(client: httpx.Client) -> dict[str, str]:
    return create_user(client)


def test_admin_sets_a_past_order_date(client: httpx.Client, user: dict[str, str]) -> None:
    body = order_payload(user["id"], order_date="2025-03-04T05:06:07+02:00")
    response = client.post("/api/v1/orders", json=body)
    assert response.status_code == 201, response.text
    order = response.json()["data"]
    assert order["order_date"] == "2025-03-04T03:06:07.000000Z"  # kept, in UTC
    assert order["created_at"] > order["order_date"]
    fetched = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
    assert fetched["order_date"] == order["order_date"]
    # The stored value filters like any timestamp.
    listed = client.get(
        "/api/v1/orders",
        params={"user_id": user["id"], "order_date__lt": "2025-03-05T00:00:00Z"},
    ).json()["data"]
    assert [o["id"] for o in listed] == [order["id"]]


def test_admin_without_order_date_gets_the_server_time(
    client: httpx.Client, user: dict[str, str]
) -> None:
    before = stamp(datetime.now(UTC) - timedelta(seconds=5))
    order = client.post("/api/v1/orders", json=order_payload(user["id"])).json()["data"]
    assert order["order_date"] >= before


@pytest.mark.parametrize(
    "value",
    [
        stamp(datetime.now(UTC) + timedelta(days=1)),  # the future
        "2024-05-01T12:00:00",  # no time zone
        "not a date",
    ],
    ids=["future", "no-zone", "not-a-date"],  # stable ids: the first value is of the moment
)
def test_bad_order_date_is_422(client: httpx.Client, user: dict[str, str], value: str) -> None:
    response = client.post("/api/v1/orders", json=order_payload(user["id"], order_date=value))
    body = assert_error(response, 422)
    assert "order_date" in response.text, body


@pytest.mark.parametrize(
    ("seconds", "stored"),
    [
        (-62135596800, "0001-01-01T00:00:00.000000Z"),
        (1700000000.5, "2023-11-14T22:13:20.500000Z"),
        (20000000001, "2603-10-11T11:33:21.000000Z"),  # the future: refused
        (1700000000000, None),  # milliseconds, i.e. past year 9999 in seconds
    ],
    ids=["year-1", "fraction", "future", "milliseconds"],
)
def test_a_number_is_always_seconds(
    client: httpx.Client, user: dict[str, str], seconds: float, stored: str | None
) -> None:
    """QA: a number past ±2e10 was read as milliseconds (year 1 stored as 1968, 201)."""
    response = client.post("/api/v1/orders", json=order_payload(user["id"], order_date=seconds))
    if stored is None or stored > stamp(datetime.now(UTC)):
        error = assert_error(response, 422)
        assert [d["field"] for d in error["details"]] == ["body.order_date"], error
        return
    assert response.status_code == 201, response.text
    assert response.json()["data"]["order_date"] == stored


def test_non_admin_order_date_is_ignored(client: httpx.Client, anon: httpx.Client) -> None:
    account = register(anon)
    before = stamp(datetime.now(UTC) - timedelta(seconds=5))
    body = order_payload(account.id, order_date="2020-01-01T00:00:00Z")
    response = anon.post("/api/v1/orders", json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    assert response.json()["data"]["order_date"] >= before


def test_admin_bulk_insert_through_data_keeps_order_date(
    client: httpx.Client, user: dict[str, str]
) -> None:
    """What ``make seed`` uses: ``POST /data/orders`` (admin only) with a list."""
    dates = ["2025-06-01T10:00:00Z", "2025-07-01T10:00:00Z"]
    body = {"data": [order_payload(user["id"], order_date=d) for d in dates]}
    response = client.post("/api/v1/data/orders", json=body)
    assert response.status_code in (200, 201), response.text
    stored = sorted(o["order_date"] for o in response.json()["data"])
    assert stored == [d.replace("Z", ".000000Z") for d in dates]
    future = order_payload(user["id"], order_date=stamp(datetime.now(UTC) + timedelta(days=2)))
    assert_error(client.post("/api/v1/data/orders", json={"data": [future]}), 422)


def test_replace_keeps_order_date_unless_given(client: httpx.Client, user: dict[str, str]) -> None:
    body = order_payload(user["id"], order_date="2025-01-01T00:00:00Z")
    order = client.post("/api/v1/orders", json=body).json()["data"]
    url = f"/api/v1/data/orders/{order['id']}"
    replaced = client.put(url, json={"data": order_payload(user["id"], quantity=3)})
    assert replaced.status_code == 200, replaced.text
    fetched = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
    assert fetched["quantity"] == 3
    assert fetched["order_date"] == "2025-01-01T00:00:00.000000Z"
    dated = order_payload(user["id"], order_date="2024-12-24T18:00:00Z")
    assert client.put(url, json={"data": dated}).status_code == 200
    fetched = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
    assert fetched["order_date"] == "2024-12-24T18:00:00.000000Z"


# Valid ISO, but before year 1 once in UTC, which is how order_date is stored.
BEFORE_YEAR_1 = "0001-01-01T00:30:00+01:00"


def test_order_date_before_year_1_in_utc_is_422_everywhere(
    client: httpx.Client, user: dict[str, str]
) -> None:
    body = order_payload(user["id"], order_date=BEFORE_YEAR_1)
    # Each answer must name the field (and not be a 500 from the conversion to UTC).
    for url, payload in [
        ("/api/v1/orders", body),
        ("/api/v1/data/orders", {"data": body}),
        ("/api/v1/data/orders", {"data": [order_payload(user["id"]), body]}),
        (
            "/api/v1/transaction",
            {"operations": [{"op": "insert", "table": "orders", "data": body}]},
        ),
    ]:
        response = client.post(url, json=payload)
        error = assert_error(response, 422)
        assert any(
            str(detail.get("field", "")).endswith("order_date")
            and "out of range" in detail["message"]
            for detail in error["details"]
        ), (url, error)
    listed = client.get("/api/v1/orders", params={"user_id": user["id"]}).json()
    assert listed["meta"]["total"] == 0  # nothing was written


def test_created_before_out_of_range_in_utc_is_422_naming_it(client: httpx.Client) -> None:
    response = client.get("/api/v1/orders", params={"created_before": "9999-12-31T23:59:59-01:00"})
    error = assert_error(response, 422)
    assert [d["field"] for d in error["details"]] == ["query.created_before"], error


def test_years_before_1000_are_stored_zero_padded_and_filter_and_sort(
    client: httpx.Client, user: dict[str, str]
) -> None:
    """The store compares timestamps as strings: "999-..." would sort after "2025-..."."""
    dates = ["2025-01-01T00:00:00Z", "0999-06-01T00:00:00Z", "0001-01-01T00:30:00-01:00"]
    made = [create_order_on(client, user, d) for d in dates]
    assert [o["order_date"] for o in made] == [
        "2025-01-01T00:00:00.000000Z",
        "0999-06-01T00:00:00.000000Z",
        "0001-01-01T01:30:00.000000Z",
    ]
    ids = [o["id"] for o in made]

    def listed(**params: str) -> list[str]:
        response = client.get("/api/v1/orders", params={"user_id": user["id"], **params})
        assert response.status_code == 200, response.text
        return [o["id"] for o in response.json()["data"]]

    assert listed(sort="order_date:asc") == [ids[2], ids[1], ids[0]]
    assert sorted(listed(order_date__gt="0500-01-01")) == sorted(ids[:2])
    assert listed(order_date__lt="0999-06-01T00:00:01Z", sort="order_date:asc") == ids[:0:-1]
    # created_at is now: after year 999 and not before it.
    assert sorted(listed(created_after="0999-01-01")) == sorted(ids)
    assert listed(created_before="0999-12-31") == []
    tree = {"and": [{"field": "user_id", "op": "eq", "value": user["id"]},
                    {"field": "created_at", "op": "gt", "value": "0999-01-01"}]}  # fmt: skip
    found = client.post("/api/v1/orders/query", json={"filter": tree}).json()
    assert found["meta"]["total"] == 3, found


def create_order_on(client: httpx.Client, user: dict[str, str], order_date: str) -> dict[str, str]:
    response = client.post("/api/v1/orders", json=order_payload(user["id"], order_date=order_date))
    assert response.status_code == 201, response.text
    data: dict[str, str] = response.json()["data"]
    return data


def test_bounds_finer_than_a_microsecond_compare_exactly(
    client: httpx.Client, user: dict[str, str]
) -> None:
    """The store keeps µs; a nanosecond bound (Go, PostgreSQL) must not turn ``lt`` into
    ``lt`` of its truncation and lose the record at that very microsecond."""
    order = create_order_on(client, user, "2025-03-04T05:06:07.000001Z")
    just_after = "2025-03-04T05:06:07.0000015Z"
    just_before = "2025-03-04T05:06:07.0000005z"  # RFC 3339 allows a lowercase z

    def listed(op: str, value: str) -> list[str]:
        params = {"user_id": user["id"], f"order_date__{op}": value}
        response = client.get("/api/v1/orders", params=params)
        assert response.status_code == 200, response.text
        by_query = [o["id"] for o in response.json()["data"]]
        tree = {"and": [{"field": "user_id", "op": "eq", "value": user["id"]},
                        {"field": "order_date", "op": op, "value": value}]}  # fmt: skip
        found = client.post("/api/v1/orders/query", json={"filter": tree})
        assert found.status_code == 200, found.text
        assert [o["id"] for o in found.json()["data"]] == by_query, op
        return by_query

    assert listed("lt", just_after) == [order["id"]]
    assert listed("lte", just_after) == [order["id"]]
    assert listed("gt", just_after) == []
    assert listed("gte", just_after) == []
    assert listed("lt", just_before) == []
    assert listed("lte", just_before) == []
    assert listed("gt", just_before) == [order["id"]]
    assert listed("gte", just_before) == [order["id"]]
