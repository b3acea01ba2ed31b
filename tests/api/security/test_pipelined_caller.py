"""A pipelined request starts with no caller of its own, not the one before it on the
connection. uvicorn starts it from the previous request's task, whose context (the store
client's ``current_actor``) the new task copies; routes that never ask for a caller (login,
refresh) wrote as the previous caller (QA: a login behind a logout was refused 401 as the
logged-out session, and a rehash at login was audited to the admin whose request came first)."""

from __future__ import annotations

import socket
import urllib.parse

import bcrypt
import httpx
import pytest

from tests.support.auth import Account, register
from tests.support.factories import PASSWORD
from tests.support.rawhttp import parse_responses, read_until_closed, request
from tests.support.stack import Stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration


def pipelined(stack: Stack, *requests: bytes) -> list[int]:
    """Every request in one write on one connection; the statuses answered, in order."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        data, closed = read_until_closed(sock)
    assert closed
    return [response.status for response in parse_responses(data)]


def login(email: str, request_id: str = "") -> bytes:
    form = urllib.parse.urlencode({"username": email, "password": PASSWORD}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Connection": "close"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return request("POST", "/api/v1/auth/token", headers, form)


def test_a_login_behind_a_logout_on_one_connection_logs_in(
    stack: Stack, anon: httpx.Client
) -> None:
    user = register(anon)
    logout = request("POST", "/api/v1/auth/logout", dict(user.headers))
    assert pipelined(stack, logout, login(user.user["email"])) == [204, 200]


def test_a_rehash_behind_an_admins_request_is_audited_to_no_one(
    stack: Stack, anon: httpx.Client, client: httpx.Client, admin: Account
) -> None:
    """README: a login's rehash is "a password_hash patch with no acting user"."""
    user = register(anon)
    other_cost = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()  # the stack's: 4
    change = {"table": "users", "id": user.id, "changes": {"password_hash": other_cost}}
    store_call(stack, "patch", change)
    me = request("GET", "/api/v1/users/me", dict(admin.headers))
    request_id = f"rehash-{user.id}"
    assert pipelined(stack, me, login(user.user["email"], request_id)) == [200, 200]
    audit = client.get("/api/v1/admin/audit", params={"table": "users", "per_page": 100})
    [entry] = [e for e in audit.json()["data"] if e["request_id"] == request_id]
    assert entry["fields"] == ["password_hash"]
    assert (entry["user_id"], entry["role"]) == (None, None)
