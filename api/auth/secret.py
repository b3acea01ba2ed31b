"""The JWT signing secret, identical in every worker.

``JWT_SECRET`` when set (production requires it; ``api.settings`` refuses a weak one). In
development without it the key lives in the store: a worker adopts the key the store holds,
and if it holds none, offers a fresh random one with ``kv_set(..., nx=True)`` and reads back
the winner, so all workers sign and verify with the same key. The store's persistence keeps
it across restarts.

This is done at start-up and again on every (re)connection to the store
(``api.auth.startup.adopt_store_secret``). A store that comes back empty has lost every
session and revocation mark along with the key, so the workers agree on a new key and every
token issued before is refused (clients log in again); a store restored from another
instance's data brings that instance's key, which the workers adopt.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import structlog

from api.settings import Settings
from storeserver.client import Caller
from storeserver.errors import StoreUnavailable

SECRET_KEY = "auth:jwt-secret"
MIN_LENGTH = 32
log = structlog.get_logger("api.auth")


@dataclass(frozen=True, slots=True)
class StoreSecret:
    value: str
    found: bool  # the store held it already (False: it was empty, a worker just generated it)
    generated_here: bool = False  # this worker's offer won


async def read_store_secret(call: Caller) -> StoreSecret:
    """The development key the store holds, generated (``nx``, read back) if it holds none."""
    stored: Any = await call("kv_get", {"key": SECRET_KEY})
    if stored is not None:
        return StoreSecret(_usable(stored), found=True)
    candidate = secrets.token_urlsafe(48)
    won = bool(await call("kv_set", {"key": SECRET_KEY, "value": candidate, "nx": True}))
    stored = await call("kv_get", {"key": SECRET_KEY})
    return StoreSecret(_usable(stored), found=False, generated_here=won)


async def load_signing_secret(call: Caller, settings: Settings) -> str:
    """The secret every worker uses at start-up (see the module docstring)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    secret = await read_store_secret(call)
    if secret.generated_here:
        log.warning(
            "signing_key_generated",
            message="JWT_SECRET is not set: generated a development signing key and kept it"
            " in the store",
        )
    return secret.value


def _usable(stored: Any) -> str:
    if not isinstance(stored, str) or len(stored) < MIN_LENGTH:
        # A StoreError, so a reconnection that finds it fails like an unreachable store (503)
        # rather than as an unexpected exception in every request waiting on it.
        raise StoreUnavailable("the store holds no usable development signing key")
    return stored
