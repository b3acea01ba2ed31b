"""/api/v1/dump/{table}: NDJSON streamed from the store's scan cursor in chunks."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.factories import assert_error, create_user, token
from tests.support.stack import Stack
from tests.support.storedirect import bulk_insert

pytestmark = pytest.mark.integration


def test_dump_of_a_table_larger_than_one_chunk(client: httpx.Client, stack: Stack) -> None:
    table = f"big_{token()}"
    stored = bulk_insert(stack, table, [{"n": n, "pad": "x" * 50} for n in range(1234)])
    with client.stream("GET", f"/api/v1/dump/{table}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.headers["cache-control"] == "private, no-cache"
        assert "content-length" not in response.headers  # streamed
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 1234  # 3 store chunks of at most 500
    assert [r["id"] for r in lines] == [r["id"] for r in stored]
    assert [r["n"] for r in lines] == list(range(1234))


def test_dump_is_gzipped_when_asked(client: httpx.Client, stack: Stack) -> None:
    table = f"gz_{token()}"
    bulk_insert(stack, table, [{"n": n} for n in range(600)])
    response = client.get(f"/api/v1/dump/{table}", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.text.splitlines()) == 600


def test_dump_users_never_contains_passwords(client: httpx.Client) -> None:
    user = create_user(client)
    with client.stream("GET", "/api/v1/dump/users") as response:
        text = "".join(response.iter_text())
    assert user["id"] in text
    assert "password" not in text and "$2b$" not in text


def test_dump_of_an_empty_table_is_empty(client: httpx.Client) -> None:
    table = f"empty_{token()}"
    created = client.post(f"/api/v1/data/{table}", json={"data": {}}).json()["data"]
    client.delete(f"/api/v1/data/{table}/{created['id']}")
    response = client.get(f"/api/v1/dump/{table}")
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize(
    ("table", "status", "code"),
    [
        ("no_such_table", 404, "NOT_FOUND"),
        ("bad;name", 400, "INVALID_TABLE_NAME"),
        ("é", 400, None),
    ],
)
def test_dump_errors(client: httpx.Client, table: str, status: int, code: str | None) -> None:
    assert_error(client.get(f"/api/v1/dump/{table}"), status, code)


@pytest.mark.parametrize(
    "params",
    [{"stock": "4"}, {"per_page": "1"}, {"bogus__zz": "1"}, {"sort": "n:desc", "page": "2"}],
    ids=["filter", "per_page", "operator", "sort_and_page"],
)
def test_a_parameter_the_dump_does_not_take_is_400_naming_it(
    client: httpx.Client, stack: Stack, params: dict[str, str]
) -> None:
    """A dump is the whole table: a filter or page it ignored answered every row with 200,
    as if it had been applied (the CSV export filters, and refuses page/per_page/sort)."""
    table = f"dp_{token()}"
    bulk_insert(stack, table, [{"stock": n} for n in range(3)])
    error = assert_error(client.get(f"/api/v1/dump/{table}", params=params), 400, "BAD_QUERY")
    assert [detail["field"] for detail in error["details"]] == sorted(params)
    assert all(name in error["message"] for name in params)
    # async is the dump's own parameter: still a dump of every row.
    kept = client.get(f"/api/v1/dump/{table}", params={"async": "false"})
    assert kept.status_code == 200 and len(kept.text.splitlines()) == 3
