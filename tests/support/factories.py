"""Build users, orders and records through the HTTP API, with names unique per call."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

PASSWORD = "correct horse battery"


def token() -> str:
    """A short unique string to keep one test's data apart from the others' on a shared stack."""
    return uuid.uuid4().hex[:12]


def user_payload(**fields: Any) -> dict[str, Any]:
    tag = token()
    return {
        "email": f"user-{tag}@example.com",
        "full_name": f"User {tag}",
        "age": 30,
        "password": PASSWORD,
        **fields,
    }


def order_payload(user_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "product_name": "Widget",
        "quantity": 1,
        "total_price": "9.99",
        **fields,
    }


def create_user(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/users", json=user_payload(**fields))
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_order(client: httpx.Client, user_id: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/orders", json=order_payload(user_id, **fields))
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_record(client: httpx.Client, table: str, **fields: Any) -> dict[str, Any]:
    response = client.post(f"/api/v1/data/{table}", json={"data": fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the error envelope with this status (and code); returns ``error``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert set(body) == {"status", "error", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if code is not None:
        assert error["code"] == code, error
    return error
