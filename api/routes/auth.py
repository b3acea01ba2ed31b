"""Log in (OAuth2 password form), rotate refresh tokens, log out."""

from __future__ import annotations

import time
from typing import Annotated

import structlog
from fastapi import APIRouter, Form, Request, Response
from fastapi.exceptions import RequestValidationError

from api.auth.credentials import (
    check_credentials,
    count_login_attempt,
    login_email,
    login_name_tag,
    refund_username_attempt,
)
from api.auth.passwordtext import MAX_PASSWORD_BYTES, password_forms
from api.auth.sessions import (
    announce_expiry,
    ensure_not_revoked,
    open_session,
    revoke_session,
    rotate_refresh_token,
)
from api.auth.tokens import InvalidToken, TokenPair, new_session_id
from api.deps import CurrentUser, StoreDep, TokensDep
from api.errors import ApiError
from api.http_metrics import MeteredRoute
from api.ratelimit import RateLimiter, Verdict, client_ip
from api.responses import json_response, no_content
from api.schemas.auth import RefreshRequest, TokenResponse
from api.schemas.envelope import error_responses
from api.services import users
from api.services.passwords import is_dev_admin_password
from api.store import Store
from storeserver.errors import NotFound

router = APIRouter(route_class=MeteredRoute, prefix="/auth", tags=["auth"])
log = structlog.get_logger("api.auth")  # bare event names, details as fields
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
Username = Annotated[str, Form(max_length=320, description="Your email")]
PasswordForm = Annotated[
    # 72 bytes once normalized (``password_forms``, checked in the route); typed decomposed
    # (NFD) a password takes up to four code points per character, so the field allows that.
    str,
    Form(max_length=4 * MAX_PASSWORD_BYTES, description="Your password (at most 72 bytes)"),
]
GrantType = Annotated[str | None, Form(description="`password` (the only grant; may be left out)")]


def bad_credentials() -> ApiError:
    """One answer for an unknown email and a wrong password."""
    return ApiError(
        401,
        "INVALID_CREDENTIALS",
        "Incorrect email or password",
        headers={"WWW-Authenticate": "Bearer", **NO_STORE},
    )


def unsupported_grant_type() -> ApiError:
    """RFC 6749 §5.2 ``unsupported_grant_type``, in the envelope: only the password grant."""
    return ApiError(
        400,
        "UNSUPPORTED_GRANT_TYPE",
        "unsupported_grant_type: this endpoint takes grant_type=password only",
        [{"field": "body.grant_type", "message": "must be password, or left out"}],
        headers=NO_STORE,
    )


def bad_refresh_token() -> ApiError:
    return ApiError(
        401,
        "INVALID_TOKEN",
        "The refresh token is invalid, expired, already used or revoked",
        headers=NO_STORE,  # and the challenge of every INVALID_TOKEN (error_response)
    )


def token_response(pair: TokenPair, extra: dict[str, str] | None = None) -> Response:
    body = {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
    }
    return json_response(body, headers={**NO_STORE, **(extra or {})})


def login_limiter(request: Request) -> RateLimiter:
    """AUTH_RATE_LIMIT, built with the app (``api.auth.startup``)."""
    limiter: RateLimiter = request.app.state.login_limiter
    return limiter


def too_many_attempts(
    verdict: Verdict, what: str, limit_headers: dict[str, str] | None = None
) -> ApiError:
    """429 for password guesses past AUTH_RATE_LIMIT: Retry-After from ``verdict``, with its
    X-Rate-Limit-* headers unless others are given."""
    retry_after = str(verdict.retry_after())
    shown = verdict.headers() if limit_headers is None else limit_headers
    return ApiError(
        429,
        "RATE_LIMITED",
        f"Too many {what}; retry in {retry_after} s",
        headers={**shown, "Retry-After": retry_after},
    )


def refused_attempt(refusal: tuple[str, Verdict], what: str) -> ApiError:
    """429 for a password guess a counter of ``LoginAttempt`` refused (``refusal()``): with
    the caller's own counter's headers, or, when the account's refused, Retry-After alone. The
    own counter may have attempts left and end at another time, and a client that follows its
    headers would retry at once (or at its own Reset), each retry spending its own attempts;
    the account's counter is never shown (how often others try an address)."""
    limit, verdict = refusal
    return too_many_attempts(verdict, what, {} if limit == "username" else None)


async def limit_attempt(
    request: Request, store: Store, kind: str, identity: str, what: str
) -> None:
    """Count one password-costing attempt of ``kind`` by ``identity`` against AUTH_RATE_LIMIT;
    429 (``too_many_attempts``, naming ``what``) past it."""
    limiter = login_limiter(request)
    verdict = await limiter.hit(store, limiter.key(kind, identity))
    if verdict is not None and not verdict.allowed:
        raise too_many_attempts(verdict, what)


@router.post(
    "/token",
    response_model=TokenResponse,
    responses=error_responses(
        413,
        described={
            400: "`grant_type` other than `password` (`UNSUPPORTED_GRANT_TYPE`)",
            401: "Wrong email or password (`INVALID_CREDENTIALS`: the same answer for both)",
            415: "The body is not a form (application/x-www-form-urlencoded or multipart)",
        },
    ),
    summary="Log in",
)
async def create_token(
    request: Request,
    store: StoreDep,
    tokens: TokensDep,
    username: Username,
    password: PasswordForm,
    grant_type: GrantType = None,
) -> Response:
    """OAuth2 password grant (form fields `username` = your email, `password`, and
    `grant_type=password` or none); answers in RFC 6749 JSON. Limited per client IP
    (AUTH_RATE_LIMIT) and per username (five times that; successful logins not counted)."""
    if grant_type is not None and grant_type != "password":
        raise unsupported_grant_type()
    if not password_forms(password):
        problem = {"loc": ("body", "password"), "msg": "at most 72 bytes", "type": "value_error"}
        raise RequestValidationError([problem])
    # One form per address, for the per-username limit too: spellings of one address (NFD,
    # punycode) must not each get their own allowance of guesses.
    username = login_email(username)
    # The username only as a keyed hash, in the limiter's store key as in the log line: a
    # password pasted into it must not be recoverable by hashing guesses.
    name_tag = login_name_tag(username, tokens.secret)
    client = client_ip(request.scope)
    limiter = login_limiter(request)
    attempt = await count_login_attempt(store, limiter, client, name_tag)
    # Only the caller's own counter in the headers: the username's would show anyone probing
    # an address how often others try it (its owner's logins included).
    limit_headers = attempt.own.headers() if attempt.own else {}
    refusal = attempt.refusal()
    if refusal is not None:
        log.warning("login_rate_limited", client=client, limit=refusal[0], user_tag=name_tag)
        raise refused_attempt(refusal, "login attempts")
    # Dated before the user is read: a role or password change during the bcrypt check (a
    # third of a second) ends this session too, instead of it keeping the old role or password.
    read_at = time.time()
    user = await check_credentials(store, username, password)
    if (
        user is not None
        and is_dev_admin_password(password)
        and request.app.state.settings.is_production
    ):
        # The development admin's password is public (README, Makefile): an account still
        # holding it (a development data directory reused in production) never logs in.
        log.error(
            "dev_admin_password_refused",
            message="refused a login with the development admin password in production",
        )
        user = None
    if user is None:
        # The address, never the password; the username only as its keyed hash.
        log.info("login_failed", client=client, user_tag=name_tag)
        error = bad_credentials()
        error.headers.update(limit_headers)
        raise error
    role = str(user.get("role") or users.DEFAULT_ROLE)
    # The worker's key as of now: its store connection may have come back during the
    # checks above with another key (api.auth.startup.adopt_store_secret).
    tokens = getattr(request.app.state, "tokens", None) or tokens
    session_id = new_session_id()
    pair = tokens.issue_pair(str(user["id"]), role, session_id, issued_at=read_at)
    await announce_expiry(store, pair.refresh_expires_at)
    await open_session(store, session_id, pair.refresh_claims)
    await refund_username_attempt(store, attempt)
    return token_response(pair, limit_headers)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    responses=error_responses(
        413,
        415,
        described={401: "Invalid, expired, revoked or already used refresh token"},
    ),
    summary="Refresh the tokens",
)
async def refresh_token(body: RefreshRequest, store: StoreDep, tokens: TokensDep) -> Response:
    """Exchange a refresh token for a new pair (RFC 6749 JSON). Each refresh token works once:
    presenting it again revokes the whole session (its access and refresh tokens), except
    within 60 s of its exchange while the refresh token that exchange gave is unused: then it
    gets that same refresh token again (a retry after a lost answer, two tabs at once)."""
    # Dated before the revocation check, as a login before its read of the user.
    checked_at = time.time()
    try:
        claims = tokens.verify(body.refresh_token, "refresh")
        await ensure_not_revoked(store, claims)
        # Before the old token is spent: a store failure here must not cost the session.
        await announce_expiry(store, tokens.refresh_expiry(checked_at))
        user = await store.call("get", {"table": users.TABLE, "id": claims.subject})
        role = str(user.get("role") or users.DEFAULT_ROLE)
        # The new pair first: its refresh token's jti takes the presented one's place.
        pair = tokens.issue_pair(claims.subject, role, claims.session_id, issued_at=checked_at)
        successor = await rotate_refresh_token(store, claims, pair.refresh_claims)
        if successor is not None:  # just replaced: the same successor again, not reuse
            pair = tokens.issue_pair(
                claims.subject,
                successor.role,
                claims.session_id,
                issued_at=successor.issued_at,
                refresh_id=successor.token_id,
            )
    except (InvalidToken, NotFound):
        raise bad_refresh_token() from None
    return token_response(pair)


@router.post(
    "/logout",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 429, validation=False),
    summary="Log out",
)
async def logout(caller: CurrentUser, store: StoreDep) -> Response:
    """End this session now, on every worker: its access and refresh tokens stop working."""
    assert caller.session_id is not None
    await revoke_session(store, caller.session_id)
    response = no_content()
    response.headers.update(NO_STORE)
    return response
