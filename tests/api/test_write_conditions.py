"""Preconditions of writes (``api.conditions``, ``api.services.versions``): If-None-Match on
PUT, PATCH and DELETE (RFC 9110 §13.1.2), If-Match on several header lines (§5.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import authorize_order, authorize_user, get_caller, get_store
from api.main import create_app
from api.settings import Settings
from storeserver import errors
from tests.support.auth import register
from tests.support.factories import assert_error, create_order, create_record, create_user, token
from tests.support.inprocess import in_process

API = "/api/v1"


def assert_refused(response: httpx.Response, version: int) -> None:
    """412 in the envelope, naming If-None-Match and the current version's tag."""
    error = assert_error(response, 412, "PRECONDITION_FAILED")
    assert "If-None-Match" in error["message"], error
    assert response.headers["etag"] == f'W/"{version}"'


@pytest.mark.integration
def test_if_none_match_refuses_writes_to_a_generic_record(client: httpx.Client) -> None:
    """`*` is there to stop a PUT from overwriting a record that exists; a tag, to stop a
    write at that version. Both were ignored: the record was replaced, merged, deleted."""
    table = f"t_{token()}"
    url = f"{API}/data/{table}/{create_record(client, table, sku='A')['id']}"
    star = {"If-None-Match": "*"}
    assert_refused(client.put(url, json={"data": {"sku": "B"}}, headers=star), 1)
    assert_refused(client.patch(url, json={"data": {"sku": "C"}}, headers=star), 1)
    current = {"If-None-Match": 'W/"1"'}
    assert_refused(client.patch(url, json={"data": {"sku": "D"}}, headers=current), 1)
    assert_refused(
        client.put(url, json={"data": {"sku": "E"}}, headers={"If-None-Match": '"1"'}), 1
    )
    assert_refused(client.delete(url, headers=star), 1)
    assert_refused(client.delete(url, headers=[("If-None-Match", 'W/"7"'), *current.items()]), 1)
    record = client.get(url).json()["data"]
    assert (record["sku"], record["version"]) == ("A", 1)  # nothing written
    # Another version: the write goes on.
    other = {"If-None-Match": 'W/"7", W/"8"'}
    patched = client.patch(url, json={"data": {"sku": "F"}}, headers=other)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["data"]["sku"], patched.headers["etag"]) == ("F", 'W/"2"')
    assert client.delete(url, headers=current).status_code == 204


@pytest.mark.integration
def test_if_none_match_star_on_a_missing_record_is_the_writes_own_404(
    client: httpx.Client,
) -> None:
    """No write here creates a record (a PUT of a missing id is 404): `*` holds and the write
    answers as without it."""
    table = f"t_{token()}"
    create_record(client, table, sku="A")
    url = f"{API}/data/{table}/missing"
    star = {"If-None-Match": "*"}
    assert_error(client.put(url, json={"data": {"sku": "B"}}, headers=star), 404, "NOT_FOUND")
    assert_error(client.delete(url, headers=star), 404, "NOT_FOUND")


@pytest.mark.integration
@pytest.mark.parametrize(
    "headers",
    [
        [("If-Match", 'W/"abc"')],  # a tag that names no record version
        [("If-Match", '""')],
        [("If-Match", 'W/"lb1946ac92492d2347c6235b4d2611184"')],  # a list's ETag
        [("If-Match", 'W/"abc"'), ("If-None-Match", 'W/"5"')],
    ],
    ids=["not-a-version", "empty-tag", "list-etag", "with-if-none-match"],
)
def test_if_match_naming_no_version_on_a_missing_record_is_the_writes_own_404(
    client: httpx.Client, headers: list[tuple[str, str]]
) -> None:
    """QA: such an If-Match was 412 before the record was read, so a missing one was 412,
    not its 404 (RFC 9110 §13.2.1; README: either header gives the write's own 404). On a
    record that exists it is still 412, nothing written."""
    table = f"t_{token()}"
    record = create_record(client, table, n=1)
    missing = f"{API}/data/{table}/missing"
    for method in ("PUT", "PATCH", "DELETE"):
        body = {} if method == "DELETE" else {"json": {"data": {"n": 2}}}
        response = client.request(method, missing, headers=headers, **body)
        assert_error(response, 404, "NOT_FOUND")
        existing = client.request(
            method, f"{API}/data/{table}/{record['id']}", headers=headers, **body
        )
        assert_error(existing, 412, "PRECONDITION_FAILED")
    admin_on_users = client.patch(
        f"{API}/users/{'0' * 8}-0000-4000-8000-{'0' * 12}", json={"age": 3}, headers=headers
    )
    assert_error(admin_on_users, 404, "NOT_FOUND")
    assert client.get(f"{API}/data/{table}/{record['id']}").json()["data"]["version"] == 1


@pytest.mark.integration
def test_if_none_match_refuses_writes_on_typed_routes(
    anon: httpx.Client, client: httpx.Client
) -> None:
    account = register(anon)
    me = f"{API}/users/me"
    refused = anon.patch(me, json={"age": 33}, headers={**account.headers, "If-None-Match": "*"})
    assert_refused(refused, 1)
    etag = anon.get(me, headers=account.headers).headers["etag"]
    refused = anon.patch(me, json={"age": 34}, headers={**account.headers, "If-None-Match": etag})
    assert_refused(refused, 1)
    assert_refused(anon.delete(me, headers={**account.headers, "If-None-Match": "*"}), 1)
    assert anon.get(me, headers=account.headers).json()["data"]["age"] == account.user["age"]
    order = f"{API}/orders/{create_order(client, account.id)['id']}"
    star = {**account.headers, "If-None-Match": "*"}
    assert_refused(anon.patch(order, json={"quantity": 5}, headers=star), 1)
    assert_refused(anon.delete(order, headers=star), 1)
    kept = anon.get(order, headers=account.headers)
    assert kept.status_code == 200 and kept.json()["data"]["quantity"] == 1
    # The generic routes over users and orders (admin): the same rule.
    star = {"If-None-Match": "*"}
    assert_refused(client.delete(f"{API}/data/orders/{kept.json()['data']['id']}", headers=star), 1)
    by_id = f"{API}/data/users/{account.id}"
    assert_refused(client.patch(by_id, json={"data": {"age": 50}}, headers=star), 1)


@pytest.mark.integration
def test_if_match_and_if_none_match_together(client: httpx.Client) -> None:
    table = f"t_{token()}"
    url = f"{API}/data/{table}/{create_record(client, table, n=1)['id']}"
    both = [("If-Match", 'W/"1"'), ("If-None-Match", 'W/"1"')]
    assert_refused(client.patch(url, json={"data": {"n": 2}}, headers=both), 1)
    stale = [("If-Match", 'W/"5"'), ("If-None-Match", 'W/"9"')]
    error = assert_error(client.patch(url, json={"data": {"n": 2}}, headers=stale), 412)
    assert "If-Match" in error["message"]
    fine = [("If-Match", 'W/"1"'), ("If-None-Match", 'W/"9"')]
    assert client.patch(url, json={"data": {"n": 2}}, headers=fine).status_code == 200
    # An empty If-None-Match names no tag: it holds, as a GET takes it (QA: 412 "malformed").
    empty = client.patch(url, json={"data": {"n": 3}}, headers={"If-None-Match": ""})
    assert empty.status_code == 200, empty.text


@pytest.mark.integration
@pytest.mark.parametrize("header", ["1", "W/1", 'W/"1", 2'])
def test_a_malformed_if_none_match_on_a_write_is_412_and_writes_nothing(
    client: httpx.Client, header: str
) -> None:
    """Skipped as junk (as a GET does), it would let through the write it was sent to stop."""
    table = f"t_{token()}"
    url = f"{API}/data/{table}/{create_record(client, table, n=1)['id']}"
    response = client.patch(url, json={"data": {"n": 2}}, headers={"If-None-Match": header})
    error = assert_error(response, 412, "PRECONDITION_FAILED")
    assert "malformed If-None-Match" in error["message"]
    assert error["details"][0]["field"] == "header.if-none-match"
    assert client.get(url).json()["data"]["version"] == 1


@pytest.mark.integration
def test_if_match_on_several_lines_is_one_list(client: httpx.Client) -> None:
    """Only the first line was read: a tag on the second was 412, and a stale first line
    decided alone."""
    table = f"t_{token()}"
    url = f"{API}/data/{table}/{create_record(client, table, n=1)['id']}"
    lines = [("If-Match", 'W/"9"'), ("If-Match", 'W/"1"')]
    patched = client.patch(url, json={"data": {"n": 2}}, headers=lines)
    assert patched.status_code == 200, patched.text
    assert patched.headers["etag"] == 'W/"2"'
    stale = [("If-Match", 'W/"2", W/"7"'), ("If-Match", 'W/"8"')]
    assert client.patch(url, json={"data": {"n": 3}}, headers=stale).status_code == 200
    none = [("If-Match", 'W/"1"'), ("If-Match", 'W/"2"')]  # now at 3
    assert_error(client.delete(url, headers=none), 412, "PRECONDITION_FAILED")
    malformed = [("If-Match", 'W/"3"'), ("If-Match", "3")]
    assert_error(client.delete(url, headers=malformed), 412, "PRECONDITION_FAILED")
    assert (
        client.delete(url, headers=[("If-Match", 'W/"1"'), ("If-Match", 'W/"3"')]).status_code
        == 204
    )


@pytest.mark.integration
def test_if_match_on_a_read_is_evaluated(client: httpx.Client) -> None:
    """RFC 9110 §13.1.1: "only if it is still this version" on a GET (and HEAD) is 412 when
    the record moved on; it was ignored, and the newer record came back as a 200."""
    table = f"t_{token()}"
    url = f"{API}/data/{table}/{create_record(client, table, n=1)['id']}"
    assert client.patch(url, json={"data": {"n": 2}}).status_code == 200
    for method in ("GET", "HEAD"):
        stale = client.request(method, url, headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412 and stale.headers["etag"] == 'W/"2"', stale.text
    assert_error(client.get(url, headers={"If-Match": 'W/"1"'}), 412, "PRECONDITION_FAILED")
    for current in ('W/"2"', '"2"', 'W/"1", W/"2"', "*"):
        read = client.get(url, headers={"If-Match": current})
        assert read.status_code == 200 and read.json()["data"]["n"] == 2, (current, read.text)
    # Both: If-Match decides first (a hit goes on to If-None-Match's 304).
    both = client.get(url, headers={"If-Match": 'W/"2"', "If-None-Match": 'W/"2"'})
    assert both.status_code == 304
    user_url = f"{API}/users/{create_user(client)['id']}"  # typed routes too
    assert_error(client.get(user_url, headers={"If-Match": 'W/"7"'}), 412, "PRECONDITION_FAILED")
    # Lists and a user with a page of orders: their tag, not a version.
    for listed in (f"{API}/data/{table}", f"{user_url}?embed=orders"):
        tag = client.get(listed).headers["etag"]
        assert client.get(listed, headers={"If-Match": tag}).status_code == 200
        moved = client.get(listed, headers={"If-Match": 'W/"2"'})
        assert_error(moved, 412, "PRECONDITION_FAILED")
        assert moved.headers["etag"] == tag


# In process: what reaches the store.

ADMIN = Principal(id="admin-id", role="admin", session_id="s")
RECORD = {"id": "r1", "n": 1, "version": 4}


class Store:
    """Answers ``get`` with RECORD; a write with ``write`` (or an error); records the calls."""

    def __init__(self, write: Any = None) -> None:
        self.write = write
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        self.calls.append((command, args or {}))
        if command == "get":
            return RECORD
        if isinstance(self.write, Exception):
            raise self.write
        return self.write


@pytest.fixture
def app() -> FastAPI:
    app = create_app(Settings())
    app.dependency_overrides[get_caller] = lambda: ADMIN
    app.dependency_overrides[authorize_user] = lambda user_id: user_id
    app.dependency_overrides[authorize_order] = lambda order_id: order_id
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


async def test_the_write_is_made_at_the_version_the_decision_was_made_on(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    """If-None-Match is decided on a read; the write then carries that version as
    ``expected_version``, so the store refuses it if anything was written in between."""
    store = Store({**RECORD, "n": 2, "version": 5})
    app.dependency_overrides[get_store] = lambda: store
    headers = {"If-None-Match": 'W/"3"'}
    response = await http.patch(f"{API}/data/things/r1", json={"data": {"n": 2}}, headers=headers)
    assert response.status_code == 200, response.text
    assert [command for command, _ in store.calls] == ["get", "patch"]
    assert store.calls[1][1]["expected_version"] == 4
    store = Store(errors.VersionMismatch("version is 5, not 4", {"current": 5}))
    app.dependency_overrides[get_store] = lambda: store
    response = await http.delete(f"{API}/orders/o1", headers=headers)
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert store.calls[-1] == ("delete", {"table": "orders", "id": "o1", "expected_version": 4})


async def test_a_refused_write_reaches_no_write_command(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    store = Store()
    app.dependency_overrides[get_store] = lambda: store
    for method in ("PUT", "PATCH", "DELETE"):
        body = {"data": {"n": 9}} if method != "DELETE" else None
        star = {"If-None-Match": "*"}
        response = await http.request(method, f"{API}/data/things/r1", json=body, headers=star)
        assert_refused(response, 4)
    assert {command for command, _ in store.calls} == {"get"}


def test_write_routes_document_both_conditional_headers() -> None:
    """Canonical case (FastAPI wrote `if-match`), on every route that takes them."""
    spec = create_app(Settings()).openapi()
    writes = [
        (method, path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("put", "patch", "delete")
        and any(p["name"] == "If-Match" for p in operation.get("parameters", []))
    ]
    assert sorted(writes) == sorted(
        [
            ("put", f"{API}/data/{{table}}/{{record_id}}"),
            ("patch", f"{API}/data/{{table}}/{{record_id}}"),
            ("delete", f"{API}/data/{{table}}/{{record_id}}"),
            ("patch", f"{API}/users/{{user_id}}"),
            ("delete", f"{API}/users/{{user_id}}"),
            ("patch", f"{API}/orders/{{order_id}}"),
            ("delete", f"{API}/orders/{{order_id}}"),
        ]
    )
    for method, path in writes:
        operation = spec["paths"][path][method]
        names = [p["name"] for p in operation["parameters"]]
        assert names.count("If-None-Match") == 1, (method, path)
        assert "if-match" not in names and "if-none-match" not in names
        assert "If-None-Match" in operation["responses"]["412"]["description"]
