"""The request guard: who is calling, and may they make one more request (pure ASGI).

For each request outside the exempt paths (probes, /metrics, the docs and their assets, and
/auth/token, which applies its own stricter limits) the guard:

1. verifies the bearer token, if any (signature and claims, cached per worker);
2. sends one store command: the rate-limit hit (keyed by the user id when the token verified,
   else by the client IP, an IPv6 client's /64: ``api.ratelimit.counted_address``), which for
   a verified token also reads its two revocation marks (session ended? user's sessions
   ended?) in the same round trip (``rate_hit``'s ``peek``);
3. answers 429 when the limit is spent; otherwise leaves the outcome in
   ``scope["state"]["auth"]`` for the ``Caller``/``CurrentUser``/``AdminUser`` dependencies,
   which decide 401/403 per route, and adds the X-Rate-Limit-* headers to the response.

A token whose revocation could not be read is never accepted (the dependency raises the store
error: 503/504); the rate limit fails open when the store is unreachable (see
``api.ratelimit``), but a store that does not answer in time makes the request 504 at once.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.principals import ANONYMOUS, AuthOutcome, Principal, bearer_token
from api.auth.sessions import check_not_revoked, revocation_keys
from api.auth.tokens import Claims, InvalidToken
from api.docs import ASSETS_URL
from api.errors import error_response
from api.ratelimit import RateLimiter, Verdict, client_ip, rate_hit
from api.settings import Settings
from storeserver.errors import StoreError, StoreTimeout, StoreUnavailable

log = structlog.get_logger("api.guard")

TOKEN_PATH = "/api/v1/auth/token"
EXEMPT_PATHS = frozenset(
    {
        "/api/v1/health",
        "/api/v1/ready",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        TOKEN_PATH,
    }
)


ASSETS_PREFIX = ASSETS_URL + "/"  # the documentation pages' bundles go with the pages

_LIMIT_HEADER_NAMES = frozenset(
    {b"x-rate-limit-limit", b"x-rate-limit-remaining", b"x-rate-limit-reset"}
)


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limiter = RateLimiter(settings.rate_limit, "api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in EXEMPT_PATHS
            or scope["path"].startswith(ASSETS_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        state: Any = scope["app"].state
        store = getattr(state, "store", None)
        tokens = getattr(state, "tokens", None)
        token = bearer_token(scope)
        claims: Claims | None = None
        error: Exception | None = None
        if token is not None:
            if tokens is None:
                error = StoreUnavailable("authentication is not ready")
            elif not token:
                error = InvalidToken("malformed Authorization header")
            else:
                claims, error = _verify(tokens, token)

        verdict: Verdict | None = None
        if store is not None:
            args = self._hit_args(scope, claims)
            rate_result = await rate_hit(store, args)
            current = getattr(state, "tokens", None)
            if (
                token
                and current is not None
                and current is not tokens
                and not isinstance(rate_result, StoreTimeout)
            ):
                # The store connection came back during the hit and the worker switched
                # signing keys (api.auth.startup.adopt_store_secret): the token is checked
                # again with the key it signs with now, whichever way the first check went.
                claims, error = _verify(current, token)
                if claims is not None and "peek" not in args:
                    # Valid with the new key only (issued by a worker that switched first):
                    # counted against its user, with its revocation marks, as any valid
                    # token; the hit on the client's address is taken back.
                    refund = args["key"] if _allowed(rate_result) else None
                    args = self._hit_args(scope, claims, refund)
                    rate_result = await rate_hit(store, args)
            if isinstance(rate_result, StoreTimeout):
                # The store is not answering: the request's own calls would each wait out the
                # timeout again (and a write sent now could still land once it answers, after
                # the client was told 504). Answer 504 now; a store that is down (refused at
                # once) still fails open, below.
                await _timed_out(scope, receive, send)
                return
            if claims is not None:
                error = _revocation_error(claims, rate_result)
            if "peek" in args and isinstance(error, InvalidToken) and not _fell_back(rate_result):
                # A token the new key refuses makes an anonymous request: it counts against
                # the client's address, and the hit on its user is taken back. (A revoked one
                # the store counted there itself: ``fallback`` in ``_hit_args``.)
                refund = args["key"] if _allowed(rate_result) else None
                rate_result = await rate_hit(store, self._hit_args(scope, None, refund))
            verdict = self.limiter.verdict(rate_result)
            if verdict is not None and not verdict.allowed:
                await self._refuse(scope, receive, send, verdict)
                return
        elif claims is not None:
            error = StoreUnavailable("the store client is not open")

        principal = Principal.from_claims(claims) if claims and error is None else ANONYMOUS
        scope.setdefault("state", {})["auth"] = AuthOutcome(
            principal, error, token_present=token is not None
        )
        if verdict is None:
            await self.app(scope, receive, send)
            return
        extra = verdict.headers()

        async def send_with_limits(message: Message) -> None:
            # A 429 the app raised (password attempts) carries the counter that refused it:
            # this one's headers would tell the client to retry at once.
            if message["type"] == "http.response.start" and message["status"] != 429:
                raw = message.get("headers") or ()
                if any(name.lower() in _LIMIT_HEADER_NAMES for name, _ in raw):
                    headers = MutableHeaders(scope=message)  # replace the app's, as before
                    for name, value in extra.items():
                        headers[name] = value
                else:  # the same headers appended, in a new list (a Response may resend its own)
                    message["headers"] = [
                        *raw,
                        *(
                            (name.lower().encode("latin-1"), value.encode("latin-1"))
                            for name, value in extra.items()
                        ),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def _hit_args(
        self, scope: Scope, claims: Claims | None, refund: str | None = None
    ) -> dict[str, Any]:
        """The rate-limit hit: on the token's user, with its revocation marks (``peek``),
        when it verified; else on the client's address. ``refund``: a key whose hit this
        one replaces."""
        limiter = self.limiter
        if claims is not None:
            key = limiter.key("user", claims.subject)
        else:
            key = limiter.client_key(client_ip(scope))
        args: dict[str, Any] = limiter.args(key)
        if claims is not None:
            # The token's revocation marks come back with the hit; if they end it, the store
            # counts the request against the client's address instead, in the same command (a
            # leaked token its user revoked must not keep that user at 429: QA, a flood of one
            # held the user's hits while a second call took each back).
            args["peek"] = list(revocation_keys(claims))
            args["issued_at"] = claims.issued_at
            args["fallback"] = limiter.client_key(client_ip(scope))
        if refund is not None:
            args["refund"] = refund
        return args

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, verdict: Verdict) -> None:
        retry_after = verdict.retry_after()
        response = error_response(
            Request(scope),
            429,
            "RATE_LIMITED",
            f"Too many requests; retry in {retry_after} s",
            headers={**verdict.headers(), "Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


async def _timed_out(scope: Scope, receive: Receive, send: Send) -> None:
    log.warning("store_timeout", during="rate_hit")
    response = error_response(
        Request(scope), 504, "STORE_TIMEOUT", "The store did not answer in time"
    )
    await response(scope, receive, send)


def _revocation_error(claims: Claims, result: object) -> Exception | None:
    """What the marks peeked with the rate-limit hit say about the token (a store error: it
    could not be checked, so it is not accepted)."""
    if isinstance(result, StoreError):
        return result
    assert isinstance(result, dict)
    try:
        check_not_revoked(claims, *result["peek"])
    except InvalidToken as exc:
        return exc
    return None


def _verify(tokens: Any, token: str) -> tuple[Claims | None, Exception | None]:
    try:
        return tokens.verify(token, "access"), None
    except InvalidToken as exc:
        return None, exc


def _fell_back(result: object) -> bool:
    """Whether the store counted a revoked token's hit against the client's address."""
    return isinstance(result, dict) and bool(result.get("fallback"))


def _allowed(result: object) -> bool:
    """Whether the store counted the hit (a refund must take back only a counted one)."""
    return isinstance(result, dict) and bool(result["allowed"])
