"""Every error comes in the envelope with the request id, including the framework's own."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import login_admin
from tests.support.factories import (
    assert_error,
    create_order,
    create_user,
    token,
    user_payload,
)
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/nope", 404, "NOT_FOUND"),
        ("GET", "/nope", 404, "NOT_FOUND"),
        ("GET", "/api/v1/users/x/y/z", 404, "NOT_FOUND"),
        ("PUT", "/api/v1/users", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/api/v1/health", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/api/v1/dump/users", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_routing_errors_use_the_envelope(
    client: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, path, headers={"X-Request-ID": "err-1"})
    assert_error(response, status, code)
    assert response.headers["x-request-id"] == "err-1"
    if status == 405:
        assert response.headers["allow"]


def test_head_is_answered_as_the_get_without_a_body(client: httpx.Client) -> None:
    for path in ("/api/v1/users/me", "/api/v1/health", "/api/v1/users?per_page=1"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        for name in ("content-type", "content-length", "etag", "x-rate-limit-limit"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
    me = client.get("/api/v1/users/me")
    cached = client.head("/api/v1/users/me", headers={"If-None-Match": me.headers["etag"]})
    assert cached.status_code == 304


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/users", "GET, HEAD, POST"),
        ("DELETE", "/api/v1/orders", "GET, HEAD, POST"),
        ("PUT", "/api/v1/data/things", "DELETE, GET, HEAD, PATCH, POST"),
        ("POST", "/api/v1/users/me", "DELETE, GET, HEAD, PATCH"),  # /users/{user_id} too
        ("DELETE", "/api/v1/health", "GET, HEAD"),
        # The routes that only refuse methods there (405) are not in their Allow.
        ("OPTIONS", "/api/v1/data/things/indexes", "GET, HEAD, POST"),
        ("OPTIONS", "/api/v1/data/things/schema", "DELETE, GET, HEAD, PUT"),
    ],
)
def test_405_allows_every_method_of_the_path(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    """Not only the methods of the first route whose path matched (Starlette's answer)."""
    response = client.request(method, path)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b"null", b'{"email": 1}', b"", b'{"email": "\xff"}', b"\xff"],
)
def test_bad_bodies_are_422_with_details(client: httpx.Client, content: bytes) -> None:
    response = client.post(
        "/api/v1/users", content=content, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"] and all("field" in d and "message" in d for d in error["details"])


@pytest.mark.parametrize(
    ("method", "path", "content", "field"),
    [
        ("POST", "/api/v1/data/errs", rb'{"data": {"\ud800x": 1}}', "body.data.\\ud800x"),
        ("POST", "/api/v1/data/errs", rb'{"data": [{"\udfff": 1}]}', "body.data.0.\\udfff"),
        (
            "POST",
            "/api/v1/transaction",
            rb'{"operations": [{"op": "insert", "table": "errs", "data": {"\ud800": 1}}]}',
            None,
        ),
        ("PUT", "/api/v1/data/errs/schema", rb'{"schema": {"properties": {"\ud800": {}}}}', None),
    ],
)
def test_a_key_that_is_not_valid_unicode_is_422_quoted_not_a_500(
    client: httpx.Client, method: str, path: str, content: bytes, field: str | None
) -> None:
    """The error names the bad key; the surrogate comes back escaped as it was sent."""
    response = client.request(
        method, path, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    error = assert_error(response, response.status_code)
    if field is not None:
        assert [d["field"] for d in error["details"]] == [field]


@pytest.mark.parametrize("content", [b'{"data": null}', b'{"data": "x"}', b'{"data": []}'])
def test_details_name_the_field_not_pydantic_union_members(
    client: httpx.Client, content: bytes
) -> None:
    """``data`` is a record or a list of records: both members fail, both on ``body.data``."""
    response = client.post(
        "/api/v1/data/errs", content=content, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == {"body.data"}


@pytest.mark.parametrize(
    ("change", "type_"),
    [
        ({"quantity": 0}, "greater_than"),
        ({"quantity": "x"}, "int_type"),
        ({"product_name": ""}, "string_too_short"),
        ({"total_price": "-1"}, "decimal_parsing"),
        ({"user_id": "nope"}, "uuid_parsing"),
        ({"quantity": None}, "value_error"),
    ],
)
def test_an_optional_field_reports_one_error_under_its_own_name(
    client: httpx.Client, change: dict[str, object], type_: str
) -> None:
    """``OrderUpdate``'s fields are ``X | None``: pydantic reports both members, named by
    their schema type (``body.quantity.constrained-int``, ``body.quantity.none``). The
    caller sent one bad value and hears of it once, at the field."""
    user = create_user(client)
    order = create_order(client, user["id"])
    response = client.patch(f"/api/v1/orders/{order['id']}", json=change)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    (field,) = change
    assert [(d["field"], d["type"]) for d in error["details"]] == [(f"body.{field}", type_)]
    # The same model behind the generic route: the field under ``body.data``.
    response = client.patch(f"/api/v1/data/orders/{order['id']}", json={"data": change})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [(d["field"], d["type"]) for d in error["details"]] == [(f"body.data.{field}", type_)]


def test_an_empty_change_by_filter_names_the_data(client: httpx.Client) -> None:
    assert client.post("/api/v1/data/errs", json={"data": {"k": 3}}).status_code == 201
    response = client.patch("/api/v1/data/errs?k=3", json={"data": {}})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == ["body.data"]


def test_malformed_json_names_the_body_and_where_the_decoder_stopped(
    client: httpx.Client,
) -> None:
    """The character offset is not a field (it was ``body.10``)."""
    response = client.post(
        "/api/v1/users", content=b'{"email": }', headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    message = "JSON decode error at character 10: Expecting value"
    assert error["details"] == [{"field": "body", "message": message, "type": "json_invalid"}]


def test_a_body_that_is_not_utf8_is_422_like_malformed_json(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/users", content=b'{"a": "\xe9"}', headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    message = "the body is not valid UTF-8 (byte 7)"
    assert error["details"] == [{"field": "body", "message": message, "type": "json_invalid"}]


def test_request_id_is_generated_when_missing_or_insane(client: httpx.Client) -> None:
    generated = client.get("/api/v1/nope").headers["x-request-id"]
    assert len(generated) == 32
    insane = client.get("/api/v1/nope", headers={"X-Request-ID": "a" * 200})
    assert insane.headers["x-request-id"] != "a" * 200
    assert insane.json()["request_id"] == insane.headers["x-request-id"]


# --- a stack of its own, whose store we pause and kill -------------------------------------


@pytest.fixture(scope="module")
def fragile() -> Iterator[Stack]:
    # JWT_SECRET: the key is the setting, so a token outlives the restarts of this store
    # without persistence (in development the workers would agree on a new key: all 401).
    env = {"STORE_TIMEOUT": "0.5", "JWT_SECRET": secrets.token_urlsafe(48)}
    with running_stack(workers=1, extra_env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin_headers(fragile: Stack) -> dict[str, str]:
    # A restarted store has no data, but the token stays valid: the key is JWT_SECRET.
    with httpx.Client(base_url=fragile.base_url, timeout=10.0) as http:
        return login_admin(http).headers


def test_store_timeout_is_504(fragile: Stack, admin_headers: dict[str, str]) -> None:
    store = fragile.processes["store"]
    with httpx.Client(base_url=fragile.base_url, timeout=10.0, headers=admin_headers) as http:
        os.kill(store.pid, signal.SIGSTOP)
        try:
            assert_error(http.get("/api/v1/users/x"), 504, "STORE_TIMEOUT")
            assert http.get("/api/v1/health").status_code == 200
        finally:
            os.kill(store.pid, signal.SIGCONT)
        assert_error(http.get("/api/v1/users/x"), 404, "NOT_FOUND")


def test_a_request_whose_limit_check_times_out_is_504_and_never_runs(
    fragile: Stack, admin_headers: dict[str, str]
) -> None:
    """The guard's rate-limit check timing out answers 504 at once: the route does not run,
    so a registration cannot reach the store after its client was told 504 (it did once: the
    limiter failed open, the insert waited in the paused store's socket and landed on resume)."""
    store = fragile.processes["store"]
    email = f"late-{token()}@example.com"
    with httpx.Client(base_url=fragile.base_url, timeout=10.0) as http:
        os.kill(store.pid, signal.SIGSTOP)
        try:
            created = http.post("/api/v1/users", json={**user_payload(), "email": email})
            assert_error(created, 504, "STORE_TIMEOUT")
        finally:
            os.kill(store.pid, signal.SIGCONT)
        listed = http.get(f"/api/v1/users?email={email}", headers=admin_headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["meta"]["total"] == 0


def test_a_login_whose_limit_check_times_out_is_504(fragile: Stack) -> None:
    """The login limiters answer 504 at once too (they failed open, and the credential check
    then waited out a second timeout)."""
    store = fragile.processes["store"]
    with httpx.Client(base_url=fragile.base_url, timeout=10.0) as http:
        os.kill(store.pid, signal.SIGSTOP)
        try:
            form = {"username": "someone@example.com", "password": "some password"}
            assert_error(http.post("/api/v1/auth/token", data=form), 504, "STORE_TIMEOUT")
        finally:
            os.kill(store.pid, signal.SIGCONT)


def test_store_down_is_503_with_retry_after_and_recovers(
    fragile: Stack, admin_headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=fragile.base_url, timeout=10.0, headers=admin_headers) as http:
        fragile.processes["store"].terminate()
        fragile.processes["store"].wait(10)
        for path in ("/api/v1/users/x", "/api/v1/ready"):
            response = http.get(path)
            assert_error(response, 503, "STORE_UNAVAILABLE")
            assert response.headers["retry-after"] == "1"
            assert response.headers["cache-control"] == "no-store"
        assert http.get("/api/v1/health").status_code == 200

        # A new store without persistence: the client reconnects by itself, and the ready
        # probe puts the API's tables back (with the unique email index).
        fragile.restart_store()
        wait_ready(http, fragile)
        payload = user_payload()
        assert http.post("/api/v1/users", json=payload).status_code == 201
        again = http.post("/api/v1/users", json={**payload, "email": payload["email"].upper()})
        assert_error(again, 409, "ALREADY_EXISTS")


def test_store_memory_limit_is_507_and_reads_go_on(
    fragile: Stack, admin_headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=fragile.base_url, timeout=10.0, headers=admin_headers) as http:
        fragile.restart_store()
        wait_ready(http, fragile)
        baseline = _rss(fragile.processes["store"].pid)
        fragile.restart_store({"STORE_MAX_MEMORY": str(baseline + 16 * 2**20)})
        wait_ready(http, fragile)  # creates the tables, still under the limit
        kept = http.post("/api/v1/data/blobs", json={"data": {"n": 0}})
        assert kept.status_code == 201
        blob = "x" * 2**19
        for n in range(200):
            response = http.post("/api/v1/data/blobs", json={"data": {"n": n, "blob": blob}})
            if response.status_code != 201:
                break
        assert_error(response, 507, "INSUFFICIENT_STORAGE")
        url = f"/api/v1/data/blobs/{kept.json()['data']['id']}"
        assert http.get(url).status_code == 200
        assert http.get("/api/v1/data/blobs", params={"per_page": 1}).status_code == 200
        assert_error(http.patch(url, json={"data": {"n": 1}}), 507, "INSUFFICIENT_STORAGE")
        assert http.get("/api/v1/ready").status_code == 200


def wait_ready(http: httpx.Client, stack: Stack) -> None:
    deadline = time.monotonic() + 15
    while http.get("/api/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
