"""Login limits that no single client can turn against an account's owner, and headers that show
each client only its own counter.

On a stack of its own: AUTH_RATE_LIMIT=3/minute per client address, so 15/minute per username
(``USERNAME_LIMIT_FACTOR``); TRUSTED_PROXIES=127.0.0.1, so each test acts as its own clients
through X-Forwarded-For.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest

from tests.support.factories import PASSWORD, assert_error, user_payload
from tests.support.logs import wait_for_records
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
PER_CLIENT = 3
PER_USERNAME = PER_CLIENT * 5  # api.auth.credentials.USERNAME_LIMIT_FACTOR, as documented
TOKEN_URL = "/api/v1/auth/token"


@pytest.fixture(scope="module")
def limited() -> Iterator[Stack]:
    env = {"AUTH_RATE_LIMIT": f"{PER_CLIENT}/minute", "TRUSTED_PROXIES": "127.0.0.1"}
    with running_stack(workers=2, extra_env=env) as stack:
        yield stack


def attempt(stack: Stack, ip: str, email: str, password: str) -> httpx.Response:
    """One login attempt from client address ``ip``."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        form = {"username": email, "password": password}
        return http.post(TOKEN_URL, data=form, headers={"X-Forwarded-For": ip})


_REGISTERING = itertools.count(1)


def new_email(stack: Stack) -> str:
    """A registered account's email; registering costs no login attempt (each from an address
    of its own: registrations have their own AUTH_RATE_LIMIT per address)."""
    payload = user_payload()
    address = {"X-Forwarded-For": f"10.250.0.{next(_REGISTERING)}"}
    created = httpx.post(stack.url("/api/v1/users"), json=payload, headers=address, timeout=10.0)
    assert created.status_code == 201, created.text
    return str(payload["email"])


def assert_own_count(response: httpx.Response, remaining: int) -> None:
    """The X-Rate-Limit-* headers are the calling client's own counter."""
    assert response.headers["x-rate-limit-limit"] == str(PER_CLIENT)
    assert response.headers["x-rate-limit-remaining"] == str(remaining)


def assert_refused(response: httpx.Response) -> None:
    error = assert_error(response, 429, "RATE_LIMITED")
    assert error["message"].startswith("Too many login attempts")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["cache-control"] == "no-store"


def test_one_client_cannot_lock_the_owner_out(limited: Stack) -> None:
    email = new_email(limited)
    for n in range(PER_CLIENT):
        wrong = attempt(limited, "10.1.0.1", email, "guess-guess")
        assert_error(wrong, 401, "INVALID_CREDENTIALS")
        assert_own_count(wrong, PER_CLIENT - 1 - n)
    # Past its own limit the client keeps trying: refused, and no longer counted on the
    # username (else it could spend the username's larger limit alone).
    for _ in range(PER_USERNAME + 1):
        refused = attempt(limited, "10.1.0.1", email, "guess-guess")
        assert_refused(refused)
        assert_own_count(refused, 0)
    owner = attempt(limited, "10.1.0.2", email, PASSWORD)
    assert owner.status_code == 200, owner.text
    assert owner.json()["token_type"] == "bearer"
    assert_own_count(owner, PER_CLIENT - 1)


def test_the_headers_do_not_show_others_attempts(limited: Stack) -> None:
    email = new_email(limited)
    for ip in ("10.2.0.1", "10.2.0.2"):
        for _ in range(PER_CLIENT):
            assert_error(attempt(limited, ip, email, "guess-guess"), 401, "INVALID_CREDENTIALS")
    assert attempt(limited, "10.2.0.3", email, PASSWORD).status_code == 200
    # A prober sees its own first attempt, nothing of the six guesses and the login before.
    probe = attempt(limited, "10.2.0.9", email, "guess-guess")
    assert_error(probe, 401, "INVALID_CREDENTIALS")
    assert_own_count(probe, PER_CLIENT - 1)


def test_successful_logins_do_not_count_against_the_username(limited: Stack) -> None:
    email = new_email(limited)
    for n in range(PER_USERNAME + 1):
        login = attempt(limited, f"10.3.0.{n + 1}", email, PASSWORD)
        assert login.status_code == 200, login.text
    for n in range(PER_USERNAME - 1):
        wrong = attempt(limited, f"10.3.1.{n + 1}", email, "guess-guess")
        assert_error(wrong, 401, "INVALID_CREDENTIALS")
    # The owner's logins took nothing: one guess is left on the username.
    last = attempt(limited, "10.3.2.1", email, "guess-guess")
    assert_error(last, 401, "INVALID_CREDENTIALS")
    assert_refused(attempt(limited, "10.3.2.2", email, "guess-guess"))


def test_many_clients_together_still_meet_the_username_limit(limited: Stack) -> None:
    email = new_email(limited)
    for n in range(PER_USERNAME):
        ip = f"10.4.{n // PER_CLIENT}.1"
        assert_error(attempt(limited, ip, email, "guess-guess"), 401, "INVALID_CREDENTIALS")
    before = (limited.workdir / "api.log").stat().st_size
    refused = attempt(limited, "10.4.9.1", email.upper(), PASSWORD)
    assert_refused(refused)
    # Retry-After (the username's) alone: this client's own counter, with attempts left, would
    # tell it to retry at once; the username's is nobody's to see.
    assert not [name for name in refused.headers if name.startswith("x-rate-limit-")]
    lines = wait_for_records(
        limited.workdir / "api.log",
        lambda records: any(r["event"] == "login_rate_limited" for r in records),
        start=before,
    )
    (line,) = [r for r in lines if r["event"] == "login_rate_limited"]
    assert line["client"] == "10.4.9.1" and line["limit"] == "username"
    assert email not in str(line)  # the username only as its keyed hash


def test_an_ipv6_host_is_one_client_across_its_64(limited: Stack) -> None:
    email = new_email(limited)
    # One host, a new address of its /64 for every guess: still one client's attempts.
    for n in range(PER_CLIENT):
        wrong = attempt(limited, f"2001:db8:5:1::{n + 1}", email, "guess-guess")
        assert_error(wrong, 401, "INVALID_CREDENTIALS")
        assert_own_count(wrong, PER_CLIENT - 1 - n)
    before = (limited.workdir / "api.log").stat().st_size
    refused = attempt(limited, "2001:db8:5:1:ffff:ffff:ffff:ffff", email, "guess-guess")
    assert_refused(refused)
    assert_own_count(refused, 0)
    lines = wait_for_records(
        limited.workdir / "api.log",
        lambda records: any(r["event"] == "login_rate_limited" for r in records),
        start=before,
    )
    (line,) = [r for r in lines if r["event"] == "login_rate_limited"]
    # Counted by its /64, logged by its full address.
    assert line["client"] == "2001:db8:5:1:ffff:ffff:ffff:ffff" and line["limit"] == "client"
    # The next /64 is another client; the owner logs in from it.
    owner = attempt(limited, "2001:db8:5:2::1", email, PASSWORD)
    assert owner.status_code == 200, owner.text
    assert_own_count(owner, PER_CLIENT - 1)


def test_an_ipv4_mapped_address_counts_as_its_ipv4(limited: Stack) -> None:
    email = new_email(limited)
    for n, ip in enumerate(["::ffff:10.6.0.1", "10.6.0.1", "::ffff:10.6.0.1"]):
        wrong = attempt(limited, ip, email, "guess-guess")
        assert_error(wrong, 401, "INVALID_CREDENTIALS")
        assert_own_count(wrong, PER_CLIENT - 1 - n)
    refused = attempt(limited, "10.6.0.1", email, "guess-guess")
    assert_refused(refused)
    assert_own_count(refused, 0)
    # IPv4 stays per address: the neighbour has its own attempts.
    neighbour = attempt(limited, "10.6.0.2", email, PASSWORD)
    assert neighbour.status_code == 200, neighbour.text
    assert_own_count(neighbour, PER_CLIENT - 1)
