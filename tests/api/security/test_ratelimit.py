"""Rate limits shared by every worker, on a stack of its own with small limits.

RATE_LIMIT=20/minute and AUTH_RATE_LIMIT=3/minute; TRUSTED_PROXIES=127.0.0.1, so each test can
act as its own client IP through X-Forwarded-For (and the shared stack, with no trusted proxy,
shows the header being ignored).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import bearer, login_admin
from tests.support.factories import assert_error, user_payload
from tests.support.logs import json_lines
from tests.support.openapi import assert_documented
from tests.support.stack import Stack, running_stack
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration
LIMIT = 20
RATE_HEADERS = ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset")


@pytest.fixture(scope="module")
def limited() -> Iterator[Stack]:
    env = {
        "RATE_LIMIT": f"{LIMIT}/minute",
        "AUTH_RATE_LIMIT": "3/minute",
        "TRUSTED_PROXIES": "127.0.0.1",
    }
    with running_stack(workers=2, extra_env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin_token(limited: Stack) -> str:
    with as_ip(limited, "10.0.9.9") as http:
        return login_admin(http).access_token


def as_ip(stack: Stack, ip: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=10.0, headers={"X-Forwarded-For": ip})


def new_account(http: httpx.Client) -> tuple[str, str, str]:
    """(user id, email, access token), costing one hit of this IP and one login attempt."""
    payload = user_payload()
    created = http.post("/api/v1/users", json=payload)
    assert created.status_code == 201, created.text
    pair = http.post(
        "/api/v1/auth/token", data={"username": payload["email"], "password": payload["password"]}
    )
    assert pair.status_code == 200, pair.text
    return created.json()["data"]["id"], payload["email"], pair.json()["access_token"]


def assert_limited(response: httpx.Response) -> None:
    assert_error(response, 429, "RATE_LIMITED")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-rate-limit-remaining"] == "0"
    assert response.headers["x-content-type-options"] == "nosniff"  # security headers too
    assert response.headers["cache-control"] == "no-store"


async def test_exactly_the_limit_succeeds_across_workers(limited: Stack) -> None:
    with as_ip(limited, "10.0.0.1") as http:
        user_id, _, access = new_account(http)
    pinned = await pinned_clients(limited.base_url, workers=2, per_worker=4, headers=bearer(access))
    try:
        clients = [c for row in zip(*pinned.values(), strict=False) for c in row]
        responses = await asyncio.gather(
            *(clients[n % len(clients)].get(f"/api/v1/users/{user_id}") for n in range(40))
        )
    finally:
        await close_all(pinned)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == LIMIT and statuses.count(429) == 40 - LIMIT
    assert len({r.headers["x-worker-pid"] for r in responses}) >= 2
    for response in responses:
        assert all(name in response.headers for name in RATE_HEADERS)
        assert response.headers["x-rate-limit-limit"] == str(LIMIT)
        assert int(response.headers["x-rate-limit-reset"]) > time.time()
    remaining = sorted(
        int(r.headers["x-rate-limit-remaining"]) for r in responses if r.status_code == 200
    )
    assert remaining == list(range(LIMIT))  # each hit counted once, none lost, none doubled
    for response in responses:
        if response.status_code == 429:
            assert_limited(response)


def test_anonymous_clients_are_limited_per_ip(limited: Stack) -> None:
    with as_ip(limited, "10.0.0.2") as first, as_ip(limited, "10.0.0.3") as second:
        seen = [first.get("/api/v1/users/me") for _ in range(LIMIT)]
        assert [r.status_code for r in seen] == [401] * LIMIT  # refused calls count too
        assert [int(r.headers["x-rate-limit-remaining"]) for r in seen] == list(
            reversed(range(LIMIT))
        )
        assert_limited(refused := first.get("/api/v1/users/me"))
        assert_limited(first.post("/api/v1/users", json=user_payload()))
        # Each header of the 401s and the 429 is one the OpenAPI document declares.
        spec = first.get("/openapi.json").json()
        for response in (seen[0], refused):
            assert_documented(spec, response, "GET", "/users/me")
        # Another client address (through the trusted proxy) has its own budget.
        other = second.get("/api/v1/users/me")
        assert other.status_code == 401
        assert other.headers["x-rate-limit-remaining"] == str(LIMIT - 1)


def test_addresses_that_are_not_ip_addresses_share_one_budget(limited: Stack) -> None:
    """QA: a trusted proxy passing on an X-Forwarded-For of 1,100 characters made a key the
    store refuses, and the limits failed open for it (no headers, never a 429); any other
    text would have been a fresh budget per request."""
    for n in range(LIMIT):
        address = "x" * 1100 if n % 2 else f"not-an-address-{n}"
        with as_ip(limited, address) as http:
            seen = http.get("/api/v1/users/me")
        assert seen.status_code == 401
        assert seen.headers["x-rate-limit-remaining"] == str(LIMIT - 1 - n)
    with as_ip(limited, "y" * 1100) as http:
        assert_limited(http.get("/api/v1/users/me"))
    with as_ip(limited, "10.0.7.99") as http:  # an address: a budget of its own
        assert http.get("/api/v1/users/me").headers["x-rate-limit-remaining"] == str(LIMIT - 1)


def test_an_ipv6_host_is_limited_by_its_64(limited: Stack) -> None:
    # A new address of one /64 for every request: the host's budget all the same.
    for n in range(LIMIT):
        with as_ip(limited, f"2001:db8:7:1::{n + 1:x}") as http:
            seen = http.get("/api/v1/users/me")
        assert seen.status_code == 401
        assert seen.headers["x-rate-limit-remaining"] == str(LIMIT - 1 - n)
    with as_ip(limited, "2001:db8:7:1:abcd::1") as http:
        assert_limited(http.get("/api/v1/users/me"))
    with as_ip(limited, "2001:db8:7:2::1") as http:  # the next /64: another client
        other = http.get("/api/v1/users/me")
    assert other.status_code == 401
    assert other.headers["x-rate-limit-remaining"] == str(LIMIT - 1)


def test_an_ipv4_mapped_address_is_limited_as_its_ipv4(limited: Stack) -> None:
    with as_ip(limited, "::ffff:10.0.7.1") as mapped, as_ip(limited, "10.0.7.1") as plain:
        first = mapped.get("/api/v1/users/me")
        second = plain.get("/api/v1/users/me")
    assert (first.status_code, second.status_code) == (401, 401)
    assert first.headers["x-rate-limit-remaining"] == str(LIMIT - 1)
    assert second.headers["x-rate-limit-remaining"] == str(LIMIT - 2)


def test_an_authenticated_user_has_a_budget_apart_from_their_ip(limited: Stack) -> None:
    with as_ip(limited, "10.0.0.4") as http:
        _, _, access = new_account(http)
        for _ in range(LIMIT - 1):
            http.get("/api/v1/users/me")  # spends the rest of the IP's budget
        assert_limited(http.get("/api/v1/users/me"))
        mine = http.get("/api/v1/users/me", headers=bearer(access))
        assert mine.status_code == 200
        assert mine.headers["x-rate-limit-remaining"] == str(LIMIT - 1)


def test_login_is_limited_per_ip(limited: Stack) -> None:
    with as_ip(limited, "10.0.0.5") as http:
        _, email, _ = new_account(http)  # one attempt of three
        for n in range(2):
            wrong = http.post(
                "/api/v1/auth/token",
                data={"username": f"x{n}@example.com", "password": "nope-nope"},
            )
            assert_error(wrong, 401, "INVALID_CREDENTIALS")
            assert "x-rate-limit-remaining" in wrong.headers
        right = http.post(
            "/api/v1/auth/token", data={"username": email, "password": "correct horse battery"}
        )
        assert_limited(right)  # even the right password: the address is out of attempts
    lines = json_lines(limited.workdir / "api.log")
    refused = [line for line in lines if line["event"] == "login_rate_limited"]
    assert any(line["client"] == "10.0.0.5" for line in refused), limited.logs()


def test_current_password_guesses_are_limited_like_logins(limited: Stack) -> None:
    """Changing your password checks current_password: with a stolen access token that is a
    password guess, so it gets AUTH_RATE_LIMIT per account (3 here), not the general limit."""
    with as_ip(limited, "10.0.3.1") as http:
        user_id, _, access = new_account(http)
        url, headers = f"/api/v1/users/{user_id}", bearer(access)
        for _ in range(3):
            guess = {"password": "a brand new passphrase", "current_password": "guess-guess"}
            assert_error(http.patch(url, json=guess, headers=headers), 403, "WRONG_PASSWORD")
        right = {"password": "a brand new passphrase", "current_password": "correct horse battery"}
        refused = http.patch(url, json=right, headers=headers)
        assert_error(refused, 429, "RATE_LIMITED")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Other changes are not password guesses: they go on.
        assert http.patch(url, json={"age": 40}, headers=headers).status_code == 200


def test_a_stolen_sessions_guesses_leave_the_owner_their_password_change(limited: Stack) -> None:
    """QA: counted per account alone, a stolen session's wrong guesses (AUTH_RATE_LIMIT a
    window) kept the owner from changing the password, the one way to end the thief's
    session. The session's count comes first now, the account's allows five times as many."""
    with as_ip(limited, "10.0.3.2") as thief:
        user_id, email, stolen = new_account(thief)
        url = f"/api/v1/users/{user_id}"
        guess = {"password": "a brand new passphrase", "current_password": "guess-guess"}
        for _ in range(3):
            assert_error(thief.patch(url, json=guess, headers=bearer(stolen)), 403)
        assert_limited(thief.patch(url, json=guess, headers=bearer(stolen)))
    with as_ip(limited, "10.0.3.3") as owner:
        pair = owner.post(
            "/api/v1/auth/token", data={"username": email, "password": "correct horse battery"}
        )
        assert pair.status_code == 200, pair.text
        mine = bearer(pair.json()["access_token"])
        right = {"password": "a brand new passphrase", "current_password": "correct horse battery"}
        changed = owner.patch(url, json=right, headers=mine)
        assert changed.status_code == 200, changed.text
        # A new password ends the user's other sessions: the stolen one with them.
        assert_error(owner.get("/api/v1/users/me", headers=bearer(stolen)), 401)


def test_registrations_are_limited_per_ip_like_logins_token_or_not(
    limited: Stack, admin_token: str
) -> None:
    """QA: each registration hashes a password, and a token moved the hit from the address's
    budget to its user's, so every account held brought a fresh one (40 taken-email
    registrations cost 9.7 s of worker CPU). Registrations get AUTH_RATE_LIMIT per address."""
    with as_ip(limited, "10.0.4.1") as http:
        _, _, access = new_account(http)  # the first of three
        taken = user_payload()
        assert http.post("/api/v1/users", json=taken).status_code == 201
        assert_error(http.post("/api/v1/users", json=taken), 409, "ALREADY_EXISTS")  # counts
        refused = http.post("/api/v1/users", json=user_payload())
        assert_error(refused, 429, "RATE_LIMITED")
        assert "registrations" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-rate-limit-limit"] == "3"
        with_token = http.post("/api/v1/users", json=user_payload(), headers=bearer(access))
        assert_error(with_token, 429, "RATE_LIMITED")  # a token buys no fresh budget
        # other requests of this address, and an admin's registrations, go on
        assert http.get("/api/v1/users/me", headers=bearer(access)).status_code == 200
        made = http.post("/api/v1/users", json=user_payload(), headers=bearer(admin_token))
        assert made.status_code == 201, made.text
    with as_ip(limited, "10.0.4.2") as other:
        assert other.post("/api/v1/users", json=user_payload()).status_code == 201


def test_probes_and_docs_are_not_limited(limited: Stack) -> None:
    with as_ip(limited, "10.0.0.6") as http:
        for path in ("/api/v1/health", "/api/v1/ready", "/openapi.json"):
            for _ in range(LIMIT + 5):
                response = http.get(path)
                assert response.status_code == 200, path
                assert "x-rate-limit-limit" not in response.headers
        metrics = http.get("/metrics")
        assert metrics.status_code != 429 and "x-rate-limit-limit" not in metrics.headers


def test_untrusted_forwarded_for_is_ignored(anon: httpx.Client) -> None:
    """On the shared stack TRUSTED_PROXIES is empty: the header cannot buy a fresh budget."""
    first = anon.get("/api/v1/users/me", headers={"X-Forwarded-For": "203.0.113.1"})
    second = anon.get("/api/v1/users/me", headers={"X-Forwarded-For": "203.0.113.2"})
    assert int(first.headers["x-rate-limit-remaining"]) - 1 == int(
        second.headers["x-rate-limit-remaining"]
    )


def test_a_trusted_ipv4_proxy_is_believed_on_a_dual_stack_socket() -> None:
    """HOST=[::] takes IPv4 connections as ::ffff:127.0.0.1: TRUSTED_PROXIES=127.0.0.1 must
    still apply (QA: the header was dropped, so all clients behind the proxy shared one budget
    and three wrong logins from one of them locked every other out)."""
    env = {"HOST": "[::]", "RATE_LIMIT": "2/minute", "TRUSTED_PROXIES": "127.0.0.1"}
    with running_stack(workers=1, extra_env=env) as stack:
        for ip in ("198.51.100.1", "198.51.100.2"):
            with as_ip(stack, ip) as http:
                answers = [http.get("/api/v1/users/me") for _ in range(3)]
            remaining = [r.headers.get("x-rate-limit-remaining") for r in answers]
            assert [r.status_code for r in answers] == [401, 401, 429], (ip, remaining)
            assert remaining == ["1", "0", "0"], ip


def test_store_down_fails_open_for_limits_and_closed_for_tokens(limited: Stack) -> None:
    """Last in this module: it stops the store. The limiter lets requests through (no rate
    headers); a token whose revocation cannot be checked is refused with 503."""
    with as_ip(limited, "10.0.0.7") as http:
        _, _, access = new_account(http)
        limited.processes["store"].terminate()
        limited.processes["store"].wait(10)
        anonymous = http.get("/api/v1/users/me")
        assert_error(anonymous, 401, "NOT_AUTHENTICATED")
        assert "x-rate-limit-limit" not in anonymous.headers
        with_token = http.get("/api/v1/users/me", headers=bearer(access))
        assert_error(with_token, 503, "STORE_UNAVAILABLE")
        assert with_token.headers["retry-after"] == "1"
