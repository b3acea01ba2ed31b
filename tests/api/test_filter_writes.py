"""PATCH and DELETE /api/v1/data/{table}?<filters>: update and delete by filter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.errors import ApiError
from api.queries import ListQuery
from api.services import tables as table_service
from storeserver.errors import LimitExceeded
from tests.support.auth import Account, login_admin, register
from tests.support.factories import assert_error, create_order, create_record, create_user, token
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import bulk_insert, store_call

pytestmark = pytest.mark.integration

Record = dict[str, Any]
TAGS = ["a", "b", "c"]
rows = st.lists(
    st.fixed_dictionaries({"n": st.integers(0, 9), "tag": st.sampled_from(TAGS)}), max_size=25
)


def _filters() -> st.SearchStrategy[tuple[dict[str, str], Callable[[Record], bool]]]:
    """A query-string filter and the reference predicate it stands for."""
    n = st.integers(-1, 10)
    tag = st.sampled_from(TAGS)
    return st.one_of(
        n.map(lambda x: ({"n__gte": str(x)}, lambda r: r["n"] >= x)),
        n.map(lambda x: ({"n": str(x)}, lambda r: r["n"] == x)),
        tag.map(lambda t: ({"tag": t}, lambda r: r["tag"] == t)),
        tag.map(lambda t: ({"tag__ne": t}, lambda r: r["tag"] != t)),
        st.tuples(n, tag).map(
            lambda p: (
                {"n__lt": str(p[0]), "tag": p[1]},
                lambda r: r["n"] < p[0] and r["tag"] == p[1],
            )
        ),
        st.lists(n, min_size=1, max_size=4).map(
            lambda xs: ({"n__in": ",".join(map(str, xs))}, lambda r: r["n"] in xs)
        ),
    )


def data_url(table: str) -> str:
    return f"/api/v1/data/{table}"


def stored(stack: Stack, table: str) -> dict[str, Record]:
    found = store_call(stack, "find", {"table": table, "limit": 1000})
    return {record["id"]: record for record in found["items"]}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=rows, where=_filters(), mark=st.integers(0, 1000))
def test_update_by_filter_changes_exactly_the_matching_rows(
    client: httpx.Client,
    stack: Stack,
    records: list[Record],
    where: tuple[dict[str, str], Callable[[Record], bool]],
    mark: int,
) -> None:
    params, predicate = where
    table = f"fw_{token()}"
    before = {r["id"]: r for r in bulk_insert(stack, table, [{"seq": -1, "n": -5, "tag": "z"}])}
    before |= {r["id"]: r for r in bulk_insert(stack, table, records)} if records else {}
    expected = {rid for rid, r in before.items() if predicate(r)}

    response = client.patch(data_url(table), params=params, json={"data": {"mark": mark}})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"matched": len(expected), "updated": len(expected)}
    after = stored(stack, table)
    assert after.keys() == before.keys()
    for rid, record in after.items():
        if rid in expected:
            record = {**record, "updated_at": before[rid]["updated_at"]}
            assert record == {**before[rid], "mark": mark, "version": 2}
        else:
            assert record == before[rid]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=rows, where=_filters())
def test_delete_by_filter_removes_exactly_the_matching_rows(
    client: httpx.Client,
    stack: Stack,
    records: list[Record],
    where: tuple[dict[str, str], Callable[[Record], bool]],
) -> None:
    params, predicate = where
    table = f"fw_{token()}"
    before = {r["id"]: r for r in bulk_insert(stack, table, [{"seq": -1, "n": -5, "tag": "z"}])}
    before |= {r["id"]: r for r in bulk_insert(stack, table, records)} if records else {}
    expected = {rid for rid, r in before.items() if predicate(r)}

    response = client.delete(data_url(table), params=params)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"deleted": len(expected), "cascaded": 0}
    after = stored(stack, table)
    assert after == {rid: r for rid, r in before.items() if rid not in expected}


def test_a_filter_is_required_unless_all(client: httpx.Client, stack: Stack) -> None:
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": i} for i in range(3)])
    url = data_url(table)
    assert_error(client.patch(url, json={"data": {"x": 1}}), 400, "FILTER_REQUIRED")
    assert_error(client.delete(url), 400, "FILTER_REQUIRED")
    assert_error(client.delete(url, params={"all": "false"}), 400, "FILTER_REQUIRED")
    assert_error(client.delete(url, params={"cascade": "true"}), 400, "FILTER_REQUIRED")
    assert len(stored(stack, table)) == 3

    updated = client.patch(url, params={"all": "true"}, json={"data": {"x": 1}})
    assert updated.json()["data"] == {"matched": 3, "updated": 3}
    assert client.delete(url, params={"all": "true"}).json()["data"]["deleted"] == 3
    assert stored(stack, table) == {}


def test_the_write_flags_are_never_filters_so_a_count_previews_the_write(
    client: httpx.Client, stack: Stack
) -> None:
    """QA: ``count?all=1`` counted the one row whose field ``all`` is 1, then ``PATCH ?all=1``
    (the same query string) wrote every row. A bare flag is now refused where the route does
    not take it; ``all__eq`` filters on the field, the same rows on every route."""
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"all": 1, "cascade": 1, "async": 1}, {"all": 0}, {}])
    url = data_url(table)
    for flag in ("all", "cascade", "async"):
        for read in (f"{url}/count", url, f"/api/v1/join/{table}/{table}/id"):
            refused = assert_error(client.get(read, params={flag: "1"}), 400, "BAD_QUERY")
            assert refused["details"] == [{"field": flag, "message": refused["message"]}], refused
            assert f"'{flag}__eq=1'" in refused["message"]
        counted = client.get(f"{url}/count", params={f"{flag}__eq": "1"})
        assert counted.json()["data"] == {"count": 1}, counted.text
    for flag in ("all", "cascade"):  # the export takes async, the writes all and cascade
        exported = client.get(f"/api/v1/batch/{table}/export", params={flag: "1"})
        assert_error(exported, 400, "BAD_QUERY")
    updated = client.patch(url, params={"all__eq": "1"}, json={"data": {"x": 1}})
    assert updated.json()["data"] == {"matched": 1, "updated": 1}, updated.text
    assert client.delete(url, params={"all__eq": "1"}).json()["data"]["deleted"] == 1
    assert len(stored(stack, table)) == 2


def test_date_bounds_count_as_filters(client: httpx.Client, stack: Stack) -> None:
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": 1}, {"n": 2}])
    response = client.delete(data_url(table), params={"created_after": "2000-01-01"})
    assert response.json()["data"]["deleted"] == 2


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"n": "1", "page": "2"}, 400),
        ({"n": "1", "per_page": "5"}, 400),
        ({"n": "1", "sort": "n:asc"}, 400),
        ({"n__bogus": "1"}, 400),
        ({"bad-name": "1"}, 400),
        ({"created_after": "not a date"}, 422),
    ],
)
def test_bad_filters(
    client: httpx.Client, stack: Stack, params: dict[str, str], status: int
) -> None:
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": 1}])
    assert_error(client.patch(data_url(table), params=params, json={"data": {"x": 1}}), status)
    assert_error(client.delete(data_url(table), params=params), status)
    assert [r["version"] for r in stored(stack, table).values()] == [1]


@pytest.mark.parametrize(
    "data", [{}, {"id": "x"}, {"version": 3}, {"created_at": "x"}, {"big": 2**70}]
)
def test_bad_changes_are_422(client: httpx.Client, stack: Stack, data: Record) -> None:
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": 1}])
    assert_error(client.patch(data_url(table), params={"n": "1"}, json={"data": data}), 422)
    assert_error(client.patch(data_url(table), params={"n": "1"}, json={"x": 1}), 422)


def test_changes_merge_like_a_patch(client: httpx.Client) -> None:
    table = f"fw_{token()}"
    record = create_record(client, table, n=1, meta={"a": 1}, gone=True)
    response = client.patch(
        data_url(table), params={"n": "1"}, json={"data": {"meta": {"b": 2}, "gone": None}}
    )
    assert response.json()["data"]["updated"] == 1
    data = client.get(f"{data_url(table)}/{record['id']}").json()["data"]
    assert data["meta"] == {"a": 1, "b": 2} and "gone" not in data


def test_orders_by_filter_go_through_order_validation(client: httpx.Client) -> None:
    user = create_user(client)
    other = create_user(client)
    mine = [create_order(client, user["id"]) for _ in range(3)]
    theirs = create_order(client, other["id"])
    url = data_url("orders")
    mine_only = {"user_id": user["id"]}

    updated = client.patch(url, params=mine_only, json={"data": {"quantity": 7}})
    assert updated.json()["data"] == {"matched": 3, "updated": 3}
    for order in mine:
        assert client.get(f"/api/v1/orders/{order['id']}").json()["data"]["quantity"] == 7
    assert client.get(f"/api/v1/orders/{theirs['id']}").json()["data"]["quantity"] == 1

    priced = client.patch(url, params=mine_only, json={"data": {"total_price": "1.50"}})
    assert priced.status_code == 200
    assert client.get(f"/api/v1/orders/{mine[0]['id']}").json()["data"]["total_price"] == "1.50"

    for bad in ({"quantity": 0}, {"quantity": None}, {"bogus": 1}, {"total_price": "1.234"}):
        assert_error(client.patch(url, params=mine_only, json={"data": bad}), 422)
    assert_error(client.patch(url, params={"bogus": "1"}, json={"data": {"quantity": 2}}), 400)
    missing_user = {"user_id": "00000000-0000-4000-8000-000000000000"}
    assert_error(client.patch(url, params=mine_only, json={"data": missing_user}), 409)

    deleted = client.delete(url, params={**mine_only, "quantity": "7"})
    assert deleted.json()["data"] == {"deleted": 3, "cascaded": 0}
    assert client.get(f"/api/v1/orders/{theirs['id']}").status_code == 200


def test_users_are_refused_by_filter(client: httpx.Client) -> None:
    user = create_user(client)
    url = data_url("users")
    params = {"email": user["email"]}
    error = assert_error(client.patch(url, params=params, json={"data": {"age": 40}}), 400)
    assert error["code"] == "TYPED_TABLE"
    assert_error(client.delete(url, params=params), 400, "TYPED_TABLE")
    assert client.get(f"/api/v1/users/{user['id']}").json()["data"]["age"] == 30


def test_filter_writes_are_admin_only(
    client: httpx.Client, anon: httpx.Client, stack: Stack
) -> None:
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": 1}])
    user = register(anon)
    url = data_url(table)
    response = anon.patch(url, params={"n": "1"}, json={"data": {"x": 1}}, headers=user.headers)
    assert_error(response, 403, "FORBIDDEN")
    assert_error(anon.delete(url, params={"n": "1"}, headers=user.headers), 403, "FORBIDDEN")
    assert_error(anon.delete(url, params={"n": "1"}), 401)
    assert [r["version"] for r in stored(stack, table).values()] == [1]


# -- the cap, on a stack of its own -------------------------------------------------------------


@pytest.fixture(scope="module")
def capped() -> Iterator[tuple[Stack, Account]]:
    env = {"MAX_ROWS_PER_FILTER_WRITE": "3"}
    with (
        running_stack(workers=1, extra_env=env) as running,
        httpx.Client(base_url=running.base_url, timeout=10.0) as http,
    ):
        yield running, login_admin(http)


def test_the_cap_refuses_and_changes_nothing(capped: tuple[Stack, Account]) -> None:
    stack, admin = capped
    table = f"fw_{token()}"
    bulk_insert(stack, table, [{"n": i % 2, "k": i} for i in range(8)])  # four 0s, four 1s
    with httpx.Client(base_url=stack.base_url, timeout=10.0, headers=admin.headers) as client:
        url = data_url(table)
        error = assert_error(
            client.patch(url, params={"n": "0"}, json={"data": {"x": 1}}), 400, "TOO_MANY_ROWS"
        )
        assert error["details"][0]["matched"] == 4 and error["details"][0]["max"] == 3
        assert error["details"][0]["at_least"] is False  # an exact count
        assert "4" in error["message"] and "3" in error["message"]
        every = assert_error(client.delete(url, params={"all": "true"}), 400, "TOO_MANY_ROWS")
        (detail,) = every["details"]  # a floor when the store stopped counting early
        assert detail["at_least"] is (detail["matched"] < 8) and 3 < detail["matched"] <= 8
        assert all(r["version"] == 1 for r in stored(stack, table).values())
        assert len(stored(stack, table)) == 8

        three = {"n": "0", "k__lt": "6"}  # k = 0, 2, 4
        within = client.patch(url, params=three, json={"data": {"x": 1}})
        assert within.json()["data"] == {"matched": 3, "updated": 3}
        assert client.delete(url, params=three).json()["data"]["deleted"] == 3
        assert len(stored(stack, table)) == 5


class CeilingStore:
    """A store whose ceiling on max_rows is 2 (no I/O): records the max_rows it was sent."""

    def __init__(self, matched: int) -> None:
        self.matched = matched
        self.sent: list[int] = []

    async def call(self, command: str, args: Record | None = None, **_: Any) -> Any:
        assert args is not None
        self.sent.append(args["max_rows"])
        if args["max_rows"] > 2:
            raise LimitExceeded("max_rows must be at most 2", {"arg": "max_rows", "max": 2})
        if self.matched > args["max_rows"]:
            details = {"arg": "max_rows", "matched": self.matched, "max": args["max_rows"]}
            raise LimitExceeded("too many", details)
        return {"deleted": self.matched, "cascaded": 0}


async def test_the_stores_ceiling_caps_a_higher_setting() -> None:
    store = CeilingStore(matched=2)
    result = await table_service.delete_where(store, "t", ListQuery(), False, 10)
    assert result == {"deleted": 2, "cascaded": 0} and store.sent == [10, 2]

    store = CeilingStore(matched=3)
    with pytest.raises(ApiError) as caught:
        await table_service.delete_where(store, "t", ListQuery(), False, 10)
    assert caught.value.code == "TOO_MANY_ROWS" and caught.value.details[0]["max"] == 2


class EarlyStopStore:
    """The store's answer when it stopped selecting once the cap was surely passed."""

    async def call(self, command: str, args: Record | None = None, **_: Any) -> Any:
        details = {"arg": "max_rows", "matched": 20_000, "max": 10_000, "at_least": True}
        raise LimitExceeded("at least 20000 rows match", details)


async def test_a_count_the_store_stopped_early_is_reported_as_a_lower_bound() -> None:
    with pytest.raises(ApiError) as caught:
        await table_service.delete_where(EarlyStopStore(), "t", ListQuery(), False, 10_000)
    assert caught.value.code == "TOO_MANY_ROWS"
    assert caught.value.message.startswith("at least 20000 rows match, more than the 10000")
    assert caught.value.details[0]["matched"] == 20_000
