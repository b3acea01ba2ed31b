"""ADMIN_EMAIL / ADMIN_PASSWORD: one admin however many workers start, and an account that
someone else registered with that email is never handed the admin role."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.factories import user_payload
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
