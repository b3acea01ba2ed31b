"""Per-worker authentication set-up, run in the lifespan once the store client is open."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import State

from api.auth.admin import ensure_admin
from api.auth.credentials import dummy_hash
from api.auth.secret import load_signing_secret, offer_signing_secret
from api.auth.tokens import TokenService
from api.ratelimit import RateLimiter
from api.settings import Settings
from api.store import ConnectionStore
from storeserver.client import Caller


def install_limiters(state: State, settings: Settings) -> None:
    """Built with the app (no I/O), so routes never build them lazily."""
    state.login_limiter = RateLimiter(settings.auth_rate_limit, "login")


async def start_auth(state: State, store: Any, settings: Settings) -> None:
    """Signing secret → token service; the dummy hash for unknown emails.

    The admin account is ensured by ``ensure_admin_step`` on every store connection instead,
    so a store that comes back empty (a new volume, no persistence) gets it back too.
    """
    secret = await load_signing_secret(store.call, settings)
    state.tokens = TokenService(
        secret, settings.access_token_ttl, settings.refresh_token_ttl, settings.token_cache_size
    )
    await dummy_hash()


def reoffer_secret(state: State, settings: Settings) -> Any:
    """An ``on_connect`` step: a store that lost its data gets the development key back."""

    async def offer(call: Caller) -> None:
        tokens: TokenService | None = getattr(state, "tokens", None)
        if tokens is not None:
            await offer_signing_secret(call, tokens.secret, settings)

    return offer


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
