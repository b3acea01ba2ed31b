"""What one login attempt counts, in process against a real engine on a settable clock: the
client's address (an IPv6 host's /64), the username's limit as a verdict of that limit, and a
successful login's refund taken only from the username's window it was counted in."""

from __future__ import annotations

import pytest

from api.auth.credentials import (
    USERNAME_LIMIT_FACTOR,
    LoginAttempt,
    count_login_attempt,
    refund_username_attempt,
)
from api.ratelimit import RateLimiter, client_ip, counted_address, trusted_peers
from storeserver.engine import Engine
from storeserver.errors import UnknownCommand
from tests.support.engine import T0, EngineStore, FakeClock

PER_CLIENT = 10
PER_USERNAME = PER_CLIENT * USERNAME_LIMIT_FACTOR
TAG = "name-tag"


@pytest.mark.parametrize(
    ("address", "counted"),
    [
        ("203.0.113.7", "203.0.113.7"),  # IPv4: per address
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::ffff", "2001:db8:1:2::/64"),  # one /64, whatever the spelling
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 on a dual-stack socket
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("unknown", "unknown"),  # no client address (a Unix socket)
        # Not an address, as a trusted proxy may pass on an X-Forwarded-For: one budget.
        ("/run/api.sock", "unknown"),
        ("x" * 1100, "unknown"),
        ("203.0.113.7.evil", "unknown"),
        ("010.0.0.1", "unknown"),  # not an IPv4 address Python reads
    ],
)
def test_counted_address(address: str, counted: str) -> None:
    assert counted_address(address) == counted


def test_an_ipv4_proxy_is_trusted_in_its_dual_stack_form_too() -> None:
    """On HOST=[::] an IPv4 peer arrives as ::ffff:a.b.c.d, which uvicorn does not match
    against a.b.c.d (QA: X-Forwarded-For was dropped, every client shared the proxy's budget)."""
    assert trusted_peers(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]) == [
        "127.0.0.1",
        "10.0.0.0/8",
        "::1",
        "fd00::/8",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.0/104",
    ]
    assert trusted_peers([]) == []


def test_a_client_address_is_cut_for_the_logs() -> None:
    """A trusted proxy may pass on any text as the address: no log line carries all of it."""
    assert client_ip({"client": ("203.0.113.7", 5000)}) == "203.0.113.7"
    assert client_ip({"client": ("x" * 1100, 0)}) == "x" * 64 + "… (1100 characters)"
    assert client_ip({"client": None}) == client_ip({}) == "unknown"


def test_the_guard_and_the_login_key_clients_alike() -> None:
    limiter = RateLimiter("10/minute", "api")
    assert limiter.client_key("2001:db8::1") == limiter.client_key("2001:db8::ffff:2")
    assert limiter.client_key("::ffff:192.0.2.1") == limiter.client_key("192.0.2.1")
    assert limiter.client_key("192.0.2.1") != limiter.client_key("192.0.2.2")
    assert limiter.client_key("2001:db8::1") != limiter.client_key("2001:db8:0:1::1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> EngineStore:
    store = EngineStore()
    store.engine = Engine(clock=clock)  # rate commands only: no tables needed
    return store


@pytest.fixture
def limiter() -> RateLimiter:
    return RateLimiter(f"{PER_CLIENT}/minute", "login")


async def test_the_username_verdict_carries_the_username_limit(
    store: EngineStore, limiter: RateLimiter
) -> None:
    attempt = await count_login_attempt(store, limiter, "2001:db8::1", TAG)
    assert attempt.own is not None and attempt.username is not None
    assert (attempt.own.limit, attempt.own.remaining) == (PER_CLIENT, PER_CLIENT - 1)
    assert (attempt.username.limit, attempt.username.remaining) == (
        PER_USERNAME,
        PER_USERNAME - 1,
    )
    # Another address of the same /64 is the same client.
    again = await count_login_attempt(store, limiter, "2001:db8::2", TAG)
    assert again.own is not None and again.own.remaining == PER_CLIENT - 2


async def username_remaining(store: EngineStore, limiter: RateLimiter, client: str) -> int:
    """The username's remaining count after one more attempt from ``client``."""
    attempt = await count_login_attempt(store, limiter, client, TAG)
    assert attempt.username is not None
    return attempt.username.remaining


async def test_a_refund_is_taken_from_the_window_it_was_counted_in(
    store: EngineStore, limiter: RateLimiter
) -> None:
    owner = await count_login_attempt(store, limiter, "192.0.2.1", TAG)
    await username_remaining(store, limiter, "192.0.2.2")  # a guess: 48 left
    await refund_username_attempt(store, owner)
    assert await username_remaining(store, limiter, "192.0.2.3") == PER_USERNAME - 2
    # One store command, no hit on a shared carrier key.
    assert store.sent("rate_refund") == [{"key": owner.username_key, "reset": T0 + 60}]
    assert len(store.sent("rate_hit")) == 6  # three attempts, two hits each
    assert all("refund" not in args for args in store.sent("rate_hit"))


async def test_a_refund_after_the_window_ended_spares_the_next_window(
    store: EngineStore, limiter: RateLimiter, clock: FakeClock
) -> None:
    owner = await count_login_attempt(store, limiter, "192.0.2.1", TAG)
    clock.advance(60)  # the username's window ends during the owner's bcrypt check
    assert await username_remaining(store, limiter, "192.0.2.2") == PER_USERNAME - 1
    await refund_username_attempt(store, owner)
    # The guess counted in the next window stands.
    assert await username_remaining(store, limiter, "192.0.2.3") == PER_USERNAME - 2


async def test_a_store_without_rate_refund_leaves_the_login_alone(
    store: EngineStore, limiter: RateLimiter
) -> None:
    """A store of the previous release (during an upgrade): no refund, no error."""

    def previous_release() -> None:
        raise UnknownCommand("unknown command: rate_refund")

    store.before["rate_refund"] = previous_release
    owner = await count_login_attempt(store, limiter, "192.0.2.1", TAG)
    await refund_username_attempt(store, owner)  # does not raise
    assert await username_remaining(store, limiter, "192.0.2.2") == PER_USERNAME - 2


async def test_an_uncounted_attempt_is_not_refunded(store: EngineStore) -> None:
    await refund_username_attempt(store, LoginAttempt(None))
    assert store.sent("rate_refund") == []
