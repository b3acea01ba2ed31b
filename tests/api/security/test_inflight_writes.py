"""A request already running when its caller's session ends writes nothing afterwards.

QA: an admin's transaction of twenty user inserts (bcrypt at cost 12: seconds of hashing
before its one store write) was demoted meanwhile; the demotion was answered, the admin's
token was refused on every worker, and then the transaction committed, creating an admin
account. The store now checks the caller's credential in the write's own turn.

Against the real stack, at the production bcrypt cost. Whichever lands first (the demotion or
logout, or the transaction's start), the transaction must answer 401 and write nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.auth import Account, bearer, login, login_admin, register
from tests.support.factories import PASSWORD, assert_error, token
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
USERS = 12  # ~0.25 s of bcrypt each at cost 12: the transaction's write comes seconds later


@pytest.fixture(scope="module")
def costly() -> Iterator[Stack]:
    with running_stack(workers=2, extra_env={"BCRYPT_ROUNDS": "12"}) as stack:
        yield stack


def promoted(http: httpx.Client, admin: Account) -> Account:
    account = register(http)
    made = http.patch(f"/api/v1/users/{account.id}", json={"role": "admin"}, headers=admin.headers)
    assert made.status_code == 200, made.text
    return login(http, account.user["email"], PASSWORD)  # a token with the admin role


@pytest.mark.parametrize("ending", ["demoted", "logged out"])
def test_a_transaction_running_when_its_caller_is_cut_off_writes_nothing(
    costly: Stack, ending: str
) -> None:
    prefix = f"inflight-{token()}"
    operations = [
        {
            "op": "insert",
            "table": "users",
            "data": {
                "email": f"{prefix}-{i}@example.com",
                "full_name": "In Flight",
                "password": PASSWORD,
                **({"role": "admin"} if i == USERS - 1 else {}),
            },
        }
        for i in range(USERS)
    ]
    answer: dict[str, Any] = {}
    with httpx.Client(base_url=costly.base_url, timeout=120.0) as http:
        admin = login_admin(http)
        rogue = promoted(http, admin)

        def transaction() -> None:
            with httpx.Client(base_url=costly.base_url, timeout=120.0) as own:
                answer["tx"] = own.post(
                    "/api/v1/transaction",
                    json={"operations": operations},
                    headers=rogue.headers,
                )

        running = threading.Thread(target=transaction)
        running.start()
        time.sleep(0.3)  # the worker is hashing the passwords
        if ending == "demoted":
            cut = http.patch(
                f"/api/v1/users/{rogue.id}", json={"role": "user"}, headers=admin.headers
            )
            assert cut.status_code == 200, cut.text
        else:
            cut = http.post("/api/v1/auth/logout", headers=bearer(rogue.access_token))
            assert cut.status_code in (200, 204), cut.text
        running.join(120)
        assert not running.is_alive()
        refused = answer["tx"]
        assert_error(refused, 401, "INVALID_TOKEN")
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        found = http.get(
            "/api/v1/users",
            params={"email__startswith": prefix},
            headers=admin.headers,
        )
        assert found.status_code == 200, found.text
        assert found.json()["meta"]["total"] == 0
