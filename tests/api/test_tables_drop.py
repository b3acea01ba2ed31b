"""DELETE /api/v1/tables/{table}: dropping a table through the real stack."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import login_admin, register
from tests.support.factories import assert_error, create_record, token
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"stock": {"type": "integer", "minimum": 0}}}


def drop(client: httpx.Client, table: str, **params: str) -> httpx.Response:
    return client.delete(f"/api/v1/tables/{table}", params=params)


def test_drop_then_create_again_under_the_same_name_is_a_fresh_table(
    client: httpx.Client,
) -> None:
    table = f"drop_{token()}"
    old = create_record(client, table, sku="W-1", stock=3)
    index = client.post(f"/api/v1/data/{table}/indexes", json={"field": "sku", "unique": True})
    assert index.status_code == 201, index.text
    assert client.put(f"/api/v1/data/{table}/schema", json={"schema": SCHEMA}).status_code == 200

    error = assert_error(drop(client, table), 409, "TABLE_NOT_EMPTY")
    assert "force=true" in error["message"]
    assert error["details"] == [{"field": "force", "rows": 1, "message": "the table is not empty"}]
    assert client.get(f"/api/v1/data/{table}/{old['id']}").status_code == 200  # untouched

    response = drop(client, table, force="true")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_error(client.get(f"/api/v1/data/{table}"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/v1/data/{table}/indexes"), 404, "NOT_FOUND")
    assert_error(drop(client, table), 404, "NOT_FOUND")

    # Created again: no old row, index or schema (a duplicate sku and a negative stock are fine).
    create_record(client, table, sku="W-1", stock=-1)
    create_record(client, table, sku="W-1", stock=-2)
    listed = client.get(f"/api/v1/data/{table}").json()
    assert listed["meta"]["total"] == 2
    assert old["id"] not in {item["id"] for item in listed["data"]}
    assert client.get(f"/api/v1/data/{table}/indexes").json()["data"] == []
    assert client.get(f"/api/v1/data/{table}/schema").json()["data"]["schema"] is None

    audit = client.get("/api/v1/admin/audit", params={"table": table, "per_page": 100}).json()
    drops = [entry for entry in audit["data"] if entry["op"] == "drop_table"]
    assert [entry["count"] for entry in drops] == [1]


def test_an_empty_table_drops_without_force(client: httpx.Client) -> None:
    table = f"drop_{token()}"
    record = create_record(client, table, n=1)
    assert client.delete(f"/api/v1/data/{table}/{record['id']}").status_code == 204
    assert drop(client, table).status_code == 204
    assert_error(client.get(f"/api/v1/data/{table}"), 404, "NOT_FOUND")


@pytest.mark.parametrize("table", ["users", "orders"])
def test_built_in_tables_are_refused(client: httpx.Client, table: str) -> None:
    error = assert_error(drop(client, table, force="true"), 409, "BUILT_IN_TABLE")
    assert table in error["message"]
    assert client.get(f"/api/v1/data/{table}/schema").status_code == 200


def test_internal_tables_cannot_even_be_named(client: httpx.Client) -> None:
    assert_error(drop(client, "_jobs", force="true"), 400, "INVALID_TABLE_NAME")


def test_a_table_another_references_is_refused_naming_it(
    client: httpx.Client, stack: Stack
) -> None:
    teams, members = f"teams_{token()}", f"members_{token()}"
    store_call(stack, "create_table", {"table": teams})
    store_call(
        stack,
        "create_table",
        {"table": members, "foreign_keys": [{"field": "team_id", "table": teams}]},
    )
    error = assert_error(drop(client, teams, force="true"), 409, "TABLE_REFERENCED")
    assert f"{members}.team_id" in error["message"]
    assert error["details"] == [
        {"table": members, "field": "team_id", "message": f"references {teams}"}
    ]
    # Once the referencing table is gone, the referenced one goes too.
    assert drop(client, members).status_code == 204
    assert drop(client, teams).status_code == 204


def test_only_admins_drop_tables(client: httpx.Client, anon: httpx.Client) -> None:
    table = f"drop_{token()}"
    create_record(client, table, n=1)
    user = register(anon)
    assert_error(anon.delete(f"/api/v1/tables/{table}", headers=user.headers), 403, "FORBIDDEN")
    assert_error(anon.delete(f"/api/v1/tables/{table}"), 401)
    assert client.get(f"/api/v1/data/{table}").json()["meta"]["total"] == 1


def test_other_methods_are_not_allowed(client: httpx.Client) -> None:
    response = client.get(f"/api/v1/tables/drop_{token()}")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "DELETE"


# -- the cap on tables (STORE_MAX_TABLES) --------------------------------------------------------

MAX_TABLES = 6  # users, orders and _jobs take three


@pytest.fixture(scope="module")
def capped() -> Iterator[httpx.Client]:
    """A stack of its own whose store holds at most ``MAX_TABLES`` tables."""
    env = {"STORE_MAX_TABLES": str(MAX_TABLES)}
    with (
        running_stack(workers=1, extra_env=env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=10.0) as http,
    ):
        http.headers.update(login_admin(http).headers)
        yield http


def test_dropped_tables_free_their_places_under_the_cap(capped: httpx.Client) -> None:
    # The QA soak: short-lived tables, each emptied, filled the cap for good.
    for cycle in range(3 * MAX_TABLES):
        tables = [f"cycle_{cycle}_{i}" for i in range(MAX_TABLES - 3)]
        for table in tables:
            create_record(capped, table, cycle=cycle)
        refused = capped.post("/api/v1/data/one_too_many", json={"data": {}})
        error = assert_error(refused, 400, "LIMIT_EXCEEDED")
        assert f"at most {MAX_TABLES} tables" in error["message"]
        for table in tables:
            assert drop(capped, table, force="true").status_code == 204
    create_record(capped, "after_the_cycles", n=1)
