"""ADMIN_EMAIL / ADMIN_PASSWORD: one admin however many workers start, an account that
someone else registered with that email is never handed the admin role, and what admins did
since (a demotion, a new password) is never undone by a worker starting again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from api.settings import DEV_ADMIN_PASSWORD
from tests.support.auth import login, login_admin, production_env, register
from tests.support.factories import assert_error, user_payload
from tests.support.logs import Record, json_lines, wait_for_records
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Stack, running_stack, worker_pids
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
    production = production_env(**base, LOG_LEVEL="error")
    with running_stack(workers=1, extra_env=production) as prod:
        refused = httpx.post(prod.url("/api/v1/auth/token"), data=form)
        assert (
            refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_CREDENTIALS"
        )
        events = [line["event"] for line in json_lines(prod.workdir / "api.log")]
        assert "dev_admin_password_refused" in events, prod.logs()


def test_the_last_admin_cannot_be_demoted_or_deleted() -> None:
    """Enforced in the store (users' ``keep``), so every route and every race obeys it."""
    with running_stack(workers=2) as stack, httpx.Client(base_url=stack.base_url) as http:
        admin = login_admin(http)
        me = f"/api/v1/users/{admin.id}"
        demote = {"op": "patch", "table": "users", "id": admin.id, "data": {"role": "user"}}
        for response in (
            http.patch(me, json={"role": "user"}, headers=admin.headers),
            http.delete(me, headers=admin.headers),
            http.delete(f"/api/v1/data/users/{admin.id}", headers=admin.headers),
            # QA: a transaction said it in the store's words ("users must keep at least 1 row")
            http.post("/api/v1/transaction", json={"operations": [demote]}, headers=admin.headers),
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


def _replace_a_worker(stack: Stack) -> int:
    """SIGKILL one worker and wait until its replacement answers (its start-up, ensure_admin
    included, is over by then: the lifespan runs before a worker serves)."""
    before = worker_pids(stack)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = worker_pids(stack) - before
        for _ in range(20 if new else 0):
            with httpx.Client(base_url=stack.base_url) as fresh:  # a new connection each time
                pid = fresh.get("/api/v1/health").headers["x-worker-pid"]
            if int(pid) in new:
                return int(pid)
        time.sleep(0.1)
    raise TimeoutError(f"no replacement for worker {victim}\n{stack.logs()}")


def test_a_demoted_admin_email_account_stays_demoted_when_a_worker_restarts() -> None:
    with running_stack(workers=2) as stack, httpx.Client(base_url=stack.base_url) as http:
        boss = login_admin(http)
        other = register(http)
        promoted = http.patch(
            f"/api/v1/users/{other.id}", json={"role": "admin"}, headers=boss.headers
        )
        assert promoted.status_code == 200, promoted.text
        other = login(http, other.user["email"], other.password)
        demoted = http.patch(
            f"/api/v1/users/{boss.id}", json={"role": "user"}, headers=other.headers
        )
        assert demoted.status_code == 200 and demoted.json()["data"]["role"] == "user"
        _replace_a_worker(stack)
        assert _role(stack, ADMIN_EMAIL) == "user"
        events = [line["event"] for line in json_lines(stack.workdir / "api.log")]
        assert "admin_email_not_admin" in events, stack.logs()
        assert "promoted" not in stack.logs()
        # the former admin logs in as a user: 403 on the admin-only list
        again = login(http, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert_error(http.get("/api/v1/users", headers=again.headers), 403)


def test_a_new_admin_password_is_not_applied_and_says_so(tmp_path: Path) -> None:
    base = {"STORE_DATA_DIR": str(tmp_path), "STORE_FSYNC": "always"}
    form = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    with running_stack(workers=1, extra_env=base) as first:
        assert "admin_password_not_applied" not in first.logs()
    changed = {**base, "ADMIN_PASSWORD": "another admin password"}
    with running_stack(workers=2, extra_env=changed) as second:
        # One line per worker, whose event is the bare name an operator's alert matches (the
        # stack is ready once one worker answers: the other may still be starting).
        def warned_lines(lines: list[Record]) -> list[Record]:
            return [line for line in lines if line["event"] == "admin_password_not_applied"]

        lines = wait_for_records(second.workdir / "api.log", lambda r: len(warned_lines(r)) >= 2)
        warned = warned_lines(lines)
        assert len(warned) == 2, second.logs()
        assert {(line["level"], line["email"]) for line in warned} == {("warning", ADMIN_EMAIL)}
        old = httpx.post(second.url("/api/v1/auth/token"), data=form)
        assert old.status_code == 200, old.text
        new = {**form, "password": changed["ADMIN_PASSWORD"]}
        assert_error(httpx.post(second.url("/api/v1/auth/token"), data=new), 401)
        assert _role(second, ADMIN_EMAIL) == "admin"
