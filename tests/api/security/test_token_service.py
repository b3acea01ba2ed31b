"""The token service, its verification cache, credential checks and the limiter, in-process."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest

from api.auth import credentials
from api.auth.principals import bearer_token
from api.auth.sessions import check_not_revoked
from api.auth.tokens import CLOCK_SKEW, Claims, InvalidToken, TokenCache, TokenService
from api.ratelimit import RateLimiter, Verdict, rate_hit, tightest
from storeserver.errors import OutcomeUnknown, StoreError, StoreTimeout, StoreUnavailable
from tests.support.events import logged
from tests.support.inprocess import in_process

SECRET = "unit-test-signing-key-0123456789-ABCDEFGH"


@pytest.fixture
def service() -> TokenService:
    return TokenService(SECRET, access_ttl=60, refresh_ttl=3600, cache_size=2)


def test_pair_round_trip(service: TokenService) -> None:
    pair = service.issue_pair("u1", "admin", "s1")
    access = service.verify(pair.access_token, "access")
    refresh = service.verify(pair.refresh_token, "refresh")
    assert (access.subject, access.role, access.session_id) == ("u1", "admin", "s1")
    assert refresh.token_type == "refresh" and refresh.token_id != access.token_id
    assert access.expires_at - access.issued_at == pytest.approx(60, abs=1)
    with pytest.raises(InvalidToken):
        service.verify(pair.access_token, "refresh")
    with pytest.raises(InvalidToken):
        service.verify(pair.refresh_token, "access")


def test_verified_tokens_are_cached_and_the_cache_is_bounded(
    service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [service.issue_pair(f"u{n}", "user", "s").access_token for n in range(3)]
    decodes = 0
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    for token in tokens[:2]:
        service.verify(token, "access")
        service.verify(token, "access")
    assert decodes == 2  # the second verification of each came from the cache
    service.verify(tokens[2], "access")  # evicts the least recently used (tokens[0])
    service.verify(tokens[0], "access")
    assert decodes == 4


@pytest.mark.parametrize(
    ("issued_at", "signed_at", "expires_in"),
    [
        (None, 0.0, 60),
        (None, 0.7, 59),  # exp is 60 s after the whole second: 59.3 s left, not 60
        (0.2, 0.5, 59),  # a login dates its tokens before the bcrypt check
        (-0.1, 1.2, 57),
    ],
)
def test_expires_in_never_promises_more_than_exp_allows(
    monkeypatch: pytest.MonkeyPatch, issued_at: float | None, signed_at: float, expires_in: int
) -> None:
    service = TokenService(SECRET, access_ttl=60, refresh_ttl=3600, cache_size=0)
    second = float(int(time.time()))  # PyJWT checks exp against the real clock
    monkeypatch.setattr(time, "time", lambda: second + signed_at)
    dated = None if issued_at is None else second + issued_at
    pair = service.issue_pair("u1", "user", "s1", issued_at=dated)
    assert pair.expires_in == expires_in
    exp = service.verify(pair.access_token, "access").expires_at
    assert exp - (second + signed_at) >= expires_in  # valid for all it promised
    assert exp - (second + signed_at) < expires_in + 1  # and not a whole second more


def test_cache_honours_expiry() -> None:
    cache = TokenCache(8)
    claims = Claims("u", "user", "s", "j", "access", time.time() - 100, int(time.time()) + 1)
    cache.put("t", claims)
    assert cache.get("t", time.time()) is claims
    assert cache.get("t", time.time() + 2) is None
    assert len(cache) == 0


def test_expired_tokens_are_refused(service: TokenService) -> None:
    now = time.time()
    claims = {
        "iss": "memdb-service",
        "sub": "u",
        "role": "user",
        "sid": "s",
        "jti": "j",
        "typ": "access",
        "iat": now - 120,
        "exp": int(now) - 1,
    }
    with pytest.raises(InvalidToken):
        service.verify(jwt.encode(claims, SECRET, algorithm="HS256"), "access")


def test_a_lowered_lifetime_shortens_tokens_already_signed() -> None:
    """Revocation marks live as long as the lifetime configured now: a token signed under a
    longer one must not outlive them (it would come back to life after a logout)."""
    before = TokenService(SECRET, access_ttl=1800, refresh_ttl=3600)
    after = TokenService(SECRET, access_ttl=30, refresh_ttl=300)
    signed = time.time() - 310
    pair = before.issue_pair("u", "user", "s", issued_at=signed)
    assert before.verify(pair.refresh_token, "refresh").expires_at == int(signed) + 3600
    with pytest.raises(InvalidToken, match="configured token lifetime"):
        after.verify(pair.refresh_token, "refresh")
    with pytest.raises(InvalidToken, match="configured token lifetime"):
        after.verify(pair.access_token, "access")
    recent = time.time() - 10
    fresh = before.issue_pair("u", "user", "s", issued_at=recent)
    assert after.verify(fresh.refresh_token, "refresh").expires_at == int(recent) + 300
    assert after.verify(fresh.access_token, "access").expires_at == int(recent) + 30


def test_revocation_rules() -> None:
    claims = Claims("u", "user", "s", "j", "access", 1000.5, 5000)
    check_not_revoked(claims, None, None)
    check_not_revoked(claims, None, 1000.4)  # ended before this token was issued
    with pytest.raises(InvalidToken):
        check_not_revoked(claims, 1234.0, None)
    with pytest.raises(InvalidToken):
        check_not_revoked(claims, None, 1000.5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"Bearer abc", "abc"),
        (b"bearer abc", "abc"),
        (b"Basic abc", ""),
        (b"Bearer", ""),
    ],
)
def test_bearer_token_parsing(header: bytes | None, expected: str | None) -> None:
    headers = [(b"authorization", header)] if header is not None else []
    assert bearer_token({"type": "http", "headers": headers}) == expected


async def test_unknown_email_still_costs_one_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified: list[str] = []

    async def fake_verify(password: str, password_hash: str) -> bool:
        verified.append(password_hash)
        return False

    class Store:
        async def call(self, command: str, args: dict[str, Any]) -> Any:
            return {"items": [], "total": 0}

    monkeypatch.setattr(credentials, "verify_password", fake_verify)
    monkeypatch.setattr(credentials, "_dummy_hash", "$2b$04$" + "a" * 53)
    assert await credentials.check_credentials(Store(), "nobody@example.com", "pw") is None
    assert verified == ["$2b$04$" + "a" * 53]


@pytest.mark.usefixtures("structured_logs")
def test_limiter_keys_verdicts_and_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter("20/minute", "api")
    assert (limiter.amount, limiter.window) == (20, 60)
    assert limiter.key("ip", "1.2.3.4") != limiter.key("user", "1.2.3.4")
    verdict = limiter.verdict({"allowed": True, "remaining": 3, "reset": time.time() + 30})
    assert verdict is not None and verdict.headers()["X-Rate-Limit-Remaining"] == "3"
    with caplog.at_level(logging.WARNING, "api.ratelimit"):
        assert limiter.verdict(StoreUnavailable("down")) is None
        assert limiter.verdict(StoreUnavailable("down")) is None  # logged once per 10 s
    (line,) = logged(caplog, "api.ratelimit")
    assert line["event"] == "rate_limit_failing_open" and line["level"] == "warning"
    assert line["code"] == "STORE_UNAVAILABLE"
    with pytest.raises(StoreTimeout):  # 504 now, not a second timeout in the route
        limiter.verdict(StoreTimeout("slow"))
    refused = Verdict(False, 3, 0, time.time() + 5)
    assert tightest([Verdict(True, 3, 2, 0), refused, None]) is refused
    assert 1 <= refused.retry_after() <= 5


def test_tokens_are_dated_by_what_they_were_built_from(service: TokenService) -> None:
    """A session ended (password or role change) after the user was read but before the
    tokens were signed must refuse them: they carry the read's time, not the signing's."""
    read_at = time.time() - 0.3  # the user was read, then a bcrypt check ran
    ended_at = read_at + 0.1  # meanwhile an admin demoted the user
    pair = service.issue_pair("u1", "admin", "s1", issued_at=read_at)
    for token, kind in ((pair.access_token, "access"), (pair.refresh_token, "refresh")):
        claims = service.verify(token, kind)  # type: ignore[arg-type]
        assert claims.issued_at == pytest.approx(read_at, abs=1e-6)
        with pytest.raises(InvalidToken):
            check_not_revoked(claims, None, ended_at)


async def test_a_login_dates_its_tokens_before_it_reads_the_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: the credential check (read + bcrypt) starts after the instant the tokens
    carry, so a role or password change landing during it ends the new session too."""

    from api.deps import get_store, get_tokens
    from api.main import create_app
    from api.routes import auth as auth_routes
    from api.settings import Settings

    class NoStore:
        async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
            if command == "kv_set":  # the token horizon, raised before the pair leaves
                return True
            raise StoreUnavailable("no store in this test")  # the login limiter fails open

    service = TokenService(SECRET, access_ttl=60, refresh_ttl=3600, cache_size=2)
    started: list[float] = []

    async def check_credentials(store: Any, email: str, password: str) -> dict[str, Any]:
        started.append(time.time())
        return {"id": "u1", "email": email, "role": "admin"}

    monkeypatch.setattr(auth_routes, "check_credentials", check_credentials)
    app = create_app(Settings())
    app.dependency_overrides[get_store] = NoStore
    app.dependency_overrides[get_tokens] = lambda: service
    async with in_process(app) as http:
        response = await http.post(
            "/api/v1/auth/token", data={"username": "a@example.com", "password": "pw12345678"}
        )
    assert response.status_code == 200, response.text
    claims = service.verify(response.json()["access_token"], "access")
    assert claims.issued_at <= started[0]


@pytest.mark.parametrize(
    "error",
    [
        OutcomeUnknown("lost after 'rate_hit' was sent", {"outcome": "unknown"}),
        StoreTimeout("the store did not answer 'rate_hit' in time", {"outcome": "unknown"}),
    ],
)
async def test_a_lost_counter_hit_does_not_make_the_request_an_unknown_write(
    error: StoreError,
) -> None:
    """The hit is a store write, but the request's own writes were not sent: a login or a
    POST refused by it must not answer that it may have been applied."""

    class Store:
        async def call(self, command: str, args: dict[str, Any]) -> Any:
            raise error

    result = await rate_hit(Store(), {"key": "k"})  # type: ignore[arg-type]
    assert type(result) is (StoreUnavailable if isinstance(error, OutcomeUnknown) else StoreTimeout)
    assert isinstance(result, StoreError) and result.details == {}
    assert result.message == error.message


def test_an_iat_a_moment_ahead_is_accepted_and_expiry_stays_exact(service: TokenService) -> None:
    """Review: PyJWT refuses an iat past its clock, truncated to whole seconds, so a token
    signed by another API host even a millisecond ahead could be refused there. Up to
    CLOCK_SKEW is taken; the leeway does not stretch the expiry."""
    now = time.time()
    base = {"iss": "memdb-service", "sub": "u", "role": "user", "sid": "s", "jti": "j"}
    ahead = {**base, "typ": "access", "iat": now + CLOCK_SKEW - 1, "exp": int(now) + 60}
    assert service.verify(jwt.encode(ahead, SECRET, algorithm="HS256"), "access").subject == "u"
    too_far = {**ahead, "jti": "k", "iat": now + CLOCK_SKEW + 30}
    with pytest.raises(InvalidToken):
        service.verify(jwt.encode(too_far, SECRET, algorithm="HS256"), "access")
    expired = {**base, "jti": "l", "typ": "access", "iat": now - 60, "exp": int(now) - 1}
    with pytest.raises(InvalidToken):  # within the leeway of its exp, still expired
        service.verify(jwt.encode(expired, SECRET, algorithm="HS256"), "access")
