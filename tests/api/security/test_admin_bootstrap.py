"""ADMIN_EMAIL / ADMIN_PASSWORD: one admin however many workers start, and an account that
someone else registered with that email is never handed the admin role."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from api.settings import DEV_ADMIN_PASSWORD
from tests.support.auth import login_admin, register
from tests.support.factories import assert_error, user_payload
from tests.support.stack import ADMIN_EMAIL, Stack, running_stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration


def test_workers_starting_together_make_exactly_one_admin(stack: Stack) -> None:
    found = store_call(
        stack, "find", {"table": "users", "where": [["email", "eq", ADMIN_EMAIL]], "limit": 10}
    )
    assert found["total"] == 1
    assert found["items"][0]["role"] == "admin"


def _role(stack: Stack, email: str) -> str:
    found = store_call(stack, "find", {"table": "users", "where": [["email", "eq", email]]})
    assert found["total"] == 1
    return str(found["items"][0].get("role"))


def test_an_existing_account_is_promoted_only_with_its_own_password(tmp_path: Path) -> None:
    base = {"STORE_DATA_DIR": str(tmp_path), "STORE_FSYNC": "always"}
    payload = user_payload()
    email, password = payload["email"], payload["password"]
    # Someone registers the future admin address before any admin is configured.
    with running_stack(
        workers=1, extra_env={**base, "ADMIN_EMAIL": "", "ADMIN_PASSWORD": ""}
    ) as first:
        assert httpx.post(first.url("/api/v1/users"), json=payload).status_code == 201
    wrong = {**base, "ADMIN_EMAIL": email, "ADMIN_PASSWORD": "the operator's password"}
    with running_stack(workers=2, extra_env=wrong) as second:
        assert _role(second, email) == "user"
        assert "not promoting" in second.logs()
    right = {**base, "ADMIN_EMAIL": email, "ADMIN_PASSWORD": password}
    with running_stack(workers=2, extra_env=right) as third:
        assert _role(third, email) == "admin"


def test_the_development_admin_password_never_logs_in_in_production(tmp_path: Path) -> None:
    """A development data directory reused with ENV=production keeps make run's admin, whose
    password is in the README: that password is refused at login there."""
    base = {"STORE_DATA_DIR": str(tmp_path), "STORE_FSYNC": "always"}
    dev = {**base, "ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": DEV_ADMIN_PASSWORD}
    form = {"username": "admin@example.com", "password": DEV_ADMIN_PASSWORD}
    with running_stack(workers=1, extra_env=dev) as development:
        assert httpx.post(development.url("/api/v1/auth/token"), data=form).status_code == 200
    production = {
        **base,
        "ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "12",
        "EXPOSE_WORKER_PID": "0",
        "ADMIN_EMAIL": "",
        "ADMIN_PASSWORD": "",
        "LOG_LEVEL": "error",
    }
    with running_stack(workers=1, extra_env=production) as prod:
        refused = httpx.post(prod.url("/api/v1/auth/token"), data=form)
        assert (
            refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_CREDENTIALS"
        )
        assert "development admin password in production" in prod.logs()


def test_the_last_admin_cannot_be_demoted_or_deleted() -> None:
    """Enforced in the store (users' ``keep``), so every route and every race obeys it."""
    with running_stack(workers=2) as stack, httpx.Client(base_url=stack.base_url) as http:
        admin = login_admin(http)
        me = f"/api/v1/users/{admin.id}"
        for response in (
            http.patch(me, json={"role": "user"}, headers=admin.headers),
            http.delete(me, headers=admin.headers),
            http.delete(f"/api/v1/data/users/{admin.id}", headers=admin.headers),
        ):
            error = assert_error(response, 409, "LAST_ADMIN")
            assert "another user admin first" in error["message"]
        # hand over: promote someone, then stepping down is fine
        other = register(http)
        promoted = http.patch(
            f"/api/v1/users/{other.id}", json={"role": "admin"}, headers=admin.headers
        )
        assert promoted.status_code == 200, promoted.text
        assert http.patch(me, json={"role": "user"}, headers=admin.headers).status_code == 200
