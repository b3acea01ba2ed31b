"""Password hashing with bcrypt (pwdlib), always off the event loop; the passwords refused
wherever one is set."""

from __future__ import annotations

from functools import lru_cache

import anyio.to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.errors import ApiError
from api.settings import DEV_ADMIN_PASSWORD, get_settings


@lru_cache
def password_hasher() -> PasswordHash:
    """The process's hasher; BCRYPT_ROUNDS sets its cost (tests lower it)."""
    return PasswordHash((BcryptHasher(rounds=get_settings().bcrypt_rounds),))


def refuse_unusable_password(password: str, field: str) -> None:
    """422 on ``field`` for a password the account could never log in with: in production,
    the development admin's (``make run``'s, public), which login refuses there."""
    if password == DEV_ADMIN_PASSWORD and get_settings().is_production:
        message = "the development admin password is public and refused in production"
        detail = {"field": field, "message": message}
        raise ApiError(422, "VALIDATION_ERROR", "Request validation failed", [detail])


async def hash_password(password: str) -> str:
    """bcrypt takes ~0.25 s at cost 12: run it in a worker thread, never on the loop."""
    return await anyio.to_thread.run_sync(password_hasher().hash, password)


async def verify_password(password: str, password_hash: str) -> bool:
    """Check a password against its stored hash, off the loop."""
    return await anyio.to_thread.run_sync(password_hasher().verify, password, password_hash)


async def verify_and_rehash(password: str, password_hash: str) -> tuple[bool, str | None]:
    """Whether the password is right and, if so and the hash was made at another cost than
    BCRYPT_ROUNDS, a new hash of it at the configured cost (one thread call, off the loop)."""
    return await anyio.to_thread.run_sync(
        password_hasher().verify_and_update, password, password_hash
    )
