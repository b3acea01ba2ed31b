"""Probes and documentation on the running stack."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from api.guard import EXEMPT_PATHS
from tests.support.factories import assert_error
from tests.support.stack import running_stack

pytestmark = pytest.mark.integration


def test_health_is_200_and_never_cached(client: httpx.Client) -> None:
    response = client.get("/api/v1/health", headers={"X-Request-ID": "probe-1"})
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": {"status": "ok"}}
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"] == "probe-1"


def test_ready_is_200_when_the_store_is_ready(client: httpx.Client) -> None:
    response = client.get("/api/v1/ready")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["ready"] is True and data["store_version"]
    assert response.headers["cache-control"] == "no-store"


def test_ready_is_503_within_about_a_second_when_the_store_hangs() -> None:
    """A stopped store (SIGSTOP) accepts the ping and never answers. Before, /ready waited out
    the 5 s call timeout and answered 504; deploy/README promises 503 within about a second."""
    with (
        running_stack(workers=1) as stack,
        httpx.Client(base_url=stack.base_url, timeout=10.0) as http,
    ):
        store = stack.processes["store"]
        os.kill(store.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = http.get("/api/v1/ready")
            elapsed = time.monotonic() - started
        finally:
            os.kill(store.pid, signal.SIGCONT)
        error = assert_error(response, 503, "STORE_UNAVAILABLE")
        assert "did not answer within 1 s" in error["message"]
        assert response.headers["retry-after"] == "1"
        assert response.headers["cache-control"] == "no-store"
        assert 0.9 < elapsed < 2.0, elapsed
        assert http.get("/api/v1/ready").status_code == 200  # the store is back


def test_docs_and_redoc_render(client: httpx.Client) -> None:
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    tags = {tag["name"] for tag in spec["tags"]}
    assert tags == {
        "auth", "users", "orders", "data", "tables", "batch", "join", "dump", "jobs", "admin",
        "probes",
    }  # fmt: skip
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    # auth 3, users 8, orders 8, data 10, tables 10, batch 2, join, dump, jobs 4, admin 3, 2 probes
    assert len(operations) == 52
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("summary") and op.get("description"), where
        assert op.get("tags") and set(op["tags"]) <= tags, where
        errors = [code for code in op["responses"] if code.startswith(("4", "5"))]
        assert errors or path == "/api/v1/health", where
        for code in errors:
            ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorEnvelope"), where
    schemas = spec["components"]["schemas"]
    assert "examples" in schemas["UserCreate"] and "examples" in schemas["OrderCreate"]
    assert "password" not in schemas["UserPublic"]["properties"]


def test_openapi_names_the_limits_every_operation_can_hit(client: httpx.Client) -> None:
    # Every operation the guard counts can be 429; every write, and every route that can start
    # a job (a job's record is a write), can be 507 at the memory limit. Deletes go on there.
    # Every operation that takes a body can be 408.
    reads_by_post = ("/query", "/aggregate")
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where, responses = f"{method.upper()} {path}", op["responses"]
            params = {param["name"] for param in op.get("parameters", [])}
            writes = method in ("put", "patch") or (
                method == "post" and not path.endswith(reads_by_post) and "/auth/" not in path
            )
            if writes or "async" in params:
                assert "507" in responses, where
            if path not in EXEMPT_PATHS:
                assert "429" in responses, where
            if "requestBody" in op:  # a body can stop arriving (BODY_TIMEOUT)
                assert "408" in responses, where


def test_openapi_query_items_require_only_the_id(client: httpx.Client) -> None:
    # ``fields`` may cut a query's items down to id and the fields asked for: a client
    # generated from the document must not require the rest.
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    paths = ["/api/v1/users/query", "/api/v1/orders/query", "/api/v1/data/{table}/query"]
    for path in paths:
        ok = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        envelope = resolve(ok["schema"])
        item = resolve(envelope["properties"]["data"]["items"])
        assert item.get("required") == ["id"], (path, item.get("required"))
        assert len(item["properties"]) > 1, path


def test_openapi_update_models_show_null_only_where_it_is_taken(client: httpx.Client) -> None:
    # A null sent for these fields is a 422 (only age: null removes the age): a client
    # generated from the document must not think it may send one.
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def takes_null(schema: dict[str, Any]) -> bool:
        options = schema.get("anyOf", [schema])
        return any(option.get("type") == "null" for option in options)

    refused = {
        "UserUpdate": ["email", "full_name", "password", "role"],
        "OrderUpdate": ["user_id", "product_name", "quantity", "total_price"],
    }
    for model, fields in refused.items():
        properties = schemas[model]["properties"]
        for name in fields:
            assert not takes_null(properties[name]), (model, name, properties[name])
    assert takes_null(schemas["UserUpdate"]["properties"]["age"])


def test_openapi_uses_json_schema_keywords_only(client: httpx.Client) -> None:
    # Pydantic writes constraints it cannot express (e.g. on a number-or-string Decimal) under
    # its own names, which no JSON Schema validator reads: the document must not hold any.
    pydantic_only = {"gt", "ge", "lt", "le", "decimal_places", "max_digits", "strict"}
    found: list[str] = []

    def walk(node: Any, path: str, names: bool = False) -> None:
        # ``names``: the keys here are property names (a field may be called "gt").
        if isinstance(node, dict):
            for key, value in node.items():
                if key in pydantic_only and not names:
                    found.append(f"{path}/{key}")
                walk(value, f"{path}/{key}", names=key == "properties" and not names)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(client.get("/openapi.json").json()["components"]["schemas"], "")
    assert not found, found


def test_openapi_marks_every_operation_needing_a_token(client: httpx.Client) -> None:
    """The auth dependencies read the token themselves (api/openapi.py adds what FastAPI
    cannot see): every operation that can answer 401 for a missing or bad access token shows
    the lock in /docs, and the Authorize button logs in at /auth/token."""
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"
    # The two auth routes answer 401 for bad credentials, not for a missing access token.
    by_credentials = {("post", "/api/v1/auth/token"), ("post", "/api/v1/auth/refresh")}
    # Open registration takes a token (an admin may set a role) but needs none: its 401 is
    # for a bad one, and the anonymous alternative {} comes first.
    token_optional = {("post", "/api/v1/users")}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            needs_token = "401" in op["responses"] and (method, path) not in by_credentials
            expected = [{"OAuth2PasswordBearer": []}] if needs_token else None
            if (method, path) in token_optional:
                expected = [{}, {"OAuth2PasswordBearer": []}]
            assert op.get("security") == expected, f"{method.upper()} {path}"
