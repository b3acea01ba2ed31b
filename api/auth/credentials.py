"""Checking an email and password, with the same cost whether or not the email exists, and
counting the guesses against AUTH_RATE_LIMIT."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import structlog
from pydantic import BeforeValidator, EmailStr, TypeAdapter, ValidationError

from api.ratelimit import RateLimiter, Verdict
from api.schemas.lookalikes import refuse_display_name
from api.services import users
from api.services.passwords import hash_password, verify_and_rehash, verify_password
from api.settings import MAX_RATE_NUMBER
from api.store import Store
from storeserver.errors import MemoryLimit, NotFound, StoreError, VersionMismatch

USERNAME_LIMIT_FACTOR = 5
"""The per-username login limit is this many times AUTH_RATE_LIMIT, the per-client one: more
than one client may spend, so no single client can lock an account's owner out."""

_dummy_hash: str | None = None
# As registration reads an address, display-name form refused (``EmailStr`` alone takes
# ``Name <a@x.org>`` as ``a@x.org``; registration answers it 422): such a username matches no
# account. Lookalike addresses are not refused here: accounts made before that rule log in.
_EMAIL: TypeAdapter[str] = TypeAdapter(Annotated[EmailStr, BeforeValidator(refuse_display_name)])
log = structlog.get_logger("api.auth")


def login_email(username: str) -> str:
    """The address as registration stored it: trimmed, Unicode NFC, the domain lowercased and
    IDNA-decoded (``josé`` typed decomposed, ``xn--bcher-kva.example`` for ``bücher.example``).
    A username that is no valid address (``Jo <jo@x.org>`` included, as registration refuses
    it) is kept as sent: it matches no account."""
    try:
        return str(_EMAIL.validate_python(username))
    except ValidationError:
        return username


def login_name_tag(username: str, secret: str) -> str:
    """The login name in log lines: HMAC-SHA256 under a key derived from the signing secret.

    Every worker holds that secret, so one name's lines correlate across workers; without it a
    password typed into the username field cannot be recovered by hashing guesses."""
    key = hmac.digest(secret.encode(), b"memdb-service failed-login name", "sha256")
    name = username.strip().casefold().encode()
    return hmac.new(key, name, hashlib.sha256).hexdigest()[:32]


async def dummy_hash() -> str:
    """A bcrypt hash of a random password at the configured cost, made once per worker.

    Verifying against it when the email is unknown makes both failures take one bcrypt
    verification, so response time does not tell which emails have accounts.
    """
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = await hash_password(secrets.token_urlsafe(24))
    return _dummy_hash


async def find_login(store: Store, email: str) -> dict[str, Any] | None:
    """The user record with its password hash, by email (case-insensitive unique index)."""
    found = await store.call(
        "find",
        {
            "table": users.TABLE,
            "where": [["email", "eq", email]],
            "limit": 1,
            "include_hidden": True,
        },
    )
    items = found["items"]
    return items[0] if items else None


async def check_credentials(store: Store, email: str, password: str) -> dict[str, Any] | None:
    """The user (with hash) if the password is right; ``None`` otherwise, in constant work."""
    record = await find_login(store, email)
    stored = record.get("password_hash") if record else None
    if record is None or not isinstance(stored, str):
        await verify_password(password, await dummy_hash())
        return None
    valid, rehashed = await verify_and_rehash(password, stored)
    if not valid:
        return None
    if rehashed is not None:
        await store_rehash(store, record, rehashed)
    return record


async def store_rehash(store: Store, record: dict[str, Any], new_hash: str) -> None:
    """Replace a hash made at another cost than BCRYPT_ROUNDS, or of the password as sent
    before passwords were normalized, after a successful login.

    The dummy hash uses the configured cost, so until then a wrong password for this account
    takes measurably more or less time than an unknown email. The password is the same, so
    the user's sessions are kept (no ``end_user_sessions``). The write is conditional on the
    version just read: a password changed meanwhile is never overwritten with the old one.
    """
    args = {"table": users.TABLE, "id": str(record["id"]), "changes": {"password_hash": new_hash}}
    try:
        await store.call("patch", {**args, "expected_version": record["version"]})
    except (VersionMismatch, NotFound):
        pass  # changed or deleted since the read: that write stands
    except MemoryLimit:
        # Logging in must keep working at the memory limit; the next login tries again.
        log.warning("password_rehash_skipped", reason="MEMORY_LIMIT")


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One login's counts: the client's (``own``, the only one its answer's headers show) and
    the username's (``None``: not counted, the client's was spent or the store was down)."""

    own: Verdict | None
    username: Verdict | None = None
    username_key: str | None = None

    def refusal(self) -> tuple[Literal["client", "username"], Verdict] | None:
        """Which limit refuses this attempt, and its verdict; ``None`` if none does."""
        if self.own is not None and not self.own.allowed:
            return "client", self.own
        if self.username is not None and not self.username.allowed:
            return "username", self.username
        return None


async def count_login_attempt(
    store: Store, limiter: RateLimiter, client: str, name_tag: str
) -> LoginAttempt:
    """Count one password guess against the client's address (an IPv6 client's /64), then,
    if the client may still guess, against the username: a client past its own limit must
    not go on spending the username's (one client could then lock the account again)."""
    return await count_guess(
        store, limiter, limiter.client_key(client), limiter.key("user", name_tag)
    )


async def count_password_check(
    store: Store, limiter: RateLimiter, session_id: str, user_id: str
) -> LoginAttempt:
    """Count one ``current_password`` check as a login is counted: against the session that
    sends it, then against the account. QA: counted against the account alone, a stolen
    session's ten wrong guesses a minute kept the owner from changing the password, the one
    way to end the thief's session."""
    return await count_guess(
        store,
        limiter,
        limiter.key("password-session", session_id),
        limiter.key("password", user_id),
    )


async def count_guess(
    store: Store, limiter: RateLimiter, own_key: str, account_key: str
) -> LoginAttempt:
    """One password guess: against ``own_key`` (the guesser's) at AUTH_RATE_LIMIT, then, while
    that allows it, against ``account_key`` at ``USERNAME_LIMIT_FACTOR`` times as many."""
    own = await limiter.hit(store, own_key)
    if own is not None and not own.allowed:
        return LoginAttempt(own)
    limit = min(limiter.amount * USERNAME_LIMIT_FACTOR, MAX_RATE_NUMBER)
    username = await limiter.hit(store, account_key, limit)
    counted = username is not None and username.allowed
    return LoginAttempt(own, username, account_key if counted else None)


async def refund_username_attempt(store: Store, attempt: LoginAttempt) -> None:
    """Take back a successful login's count on its username: the owner's own logins never
    bring the account nearer its limit, nor show in its counter.

    Only from the window it was counted in (``rate_refund``'s ``reset``): if that window ended
    during the bcrypt check, the count has gone with it, and the next window's may be an
    attacker's guesses. Any store error is ignored (a store of the previous release, during an
    upgrade, answers ``UNKNOWN_COMMAND``): the login has succeeded, and a count not taken
    back only lasts to the end of its window."""
    if attempt.username_key is None or attempt.username is None:
        return
    args = {"key": attempt.username_key, "reset": attempt.username.reset}
    with contextlib.suppress(StoreError):
        await store.call("rate_refund", args)
