"""Per-worker authentication set-up, run in the lifespan once the store client is open."""

from __future__ import annotations

import secrets
from typing import Any

import structlog
from starlette.datastructures import State

from api.auth.admin import ensure_admin
from api.auth.credentials import dummy_hash
from api.auth.secret import load_signing_secret, read_store_secret
from api.auth.tokens import TokenService
from api.ratelimit import RateLimiter
from api.settings import Settings
from api.store import ConnectionStore
from storeserver.client import Caller

# ``event`` is the bare name (what an operator's alert matches), the details in fields.
log = structlog.get_logger("api.auth")


def install_limiters(state: State, settings: Settings) -> None:
    """Built with the app (no I/O), so routes never build them lazily."""
    state.login_limiter = RateLimiter(settings.auth_rate_limit, "login")


async def start_auth(state: State, store: Any, settings: Settings) -> None:
    """Signing secret → token service; the dummy hash for unknown emails.

    The admin account is ensured by ``ensure_admin_step`` on every store connection instead,
    so a store that comes back empty (a new volume, no persistence) gets it back too.
    """
    state.tokens = token_service(await load_signing_secret(store.call, settings), settings)
    await dummy_hash()


def token_service(secret: str, settings: Settings) -> TokenService:
    return TokenService(
        secret, settings.access_token_ttl, settings.refresh_token_ttl, settings.token_cache_size
    )


def adopt_store_secret(state: State, settings: Settings) -> Any:
    """An ``on_connect`` step: in development, sign with the key the store holds now.

    A store that came back empty (no ``STORE_DATA_DIR``) lost every session and revocation
    mark: the workers agree on a new key (``read_store_secret``), so no token issued before
    comes back to life. One restored from another instance's data brings that key. Either
    way the worker's token service is replaced, cache and all, so its cached verifications
    go with the old key. A request holding the old service across the store call that
    reconnects (the guard's rate-limit hit, a login's checks) must read ``state.tokens`` again
    after it.
    """

    async def adopt(call: Caller) -> None:
        tokens: TokenService | None = getattr(state, "tokens", None)
        if tokens is None or settings.jwt_secret is not None:
            return  # not loaded yet (``start_auth`` will), or the key is the setting
        stored = await read_store_secret(call)
        if secrets.compare_digest(stored.value, tokens.secret):
            return
        state.tokens = token_service(stored.value, settings)
        reason = (
            "the store came back without it (restarted without STORE_DATA_DIR)"
            if not stored.found
            else "the store holds another one (restarted empty, or with other data)"
        )
        log.warning(
            "signing_key_switched",
            reason=reason,
            message="this worker now signs with the store's development JWT signing key;"
            " tokens signed with the previous key are refused (clients log in again)",
        )

    return adopt


def ensure_admin_step(settings: Settings) -> Any:
    """An ``on_connect`` step: ADMIN_EMAIL/ADMIN_PASSWORD exist on this store (idempotent)."""

    async def ensure(call: Caller) -> None:
        if settings.admin_email is not None and settings.admin_password is not None:
            await ensure_admin(
                ConnectionStore(call),
                str(settings.admin_email),
                settings.admin_password.get_secret_value(),
            )

    return ensure
