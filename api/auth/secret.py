"""The JWT signing secret, identical in every worker.

``JWT_SECRET`` when set (production requires it; ``api.settings`` refuses a weak one). In
development without it, the first worker to start generates one and stores it in the store
with ``kv_set(..., nx=True)``; every worker then reads back the winner, so all sign and verify
with the same key, and the store's persistence keeps it across restarts. Each worker also
re-offers its key (again ``nx``) whenever its store connection is re-established, so a store
restarted without its data gets the key back instead of a second one being generated.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from api.settings import Settings
from storeserver.client import Caller

SECRET_KEY = "auth:jwt-secret"
logger = logging.getLogger("api.auth")


async def load_signing_secret(call: Caller, settings: Settings) -> str:
    """The secret every worker uses (see the module docstring)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    candidate = secrets.token_urlsafe(48)
    if await call("kv_set", {"key": SECRET_KEY, "value": candidate, "nx": True}):
        logger.warning(
            "JWT_SECRET is not set: generated a development signing key and kept it in the store"
        )
    stored: Any = await call("kv_get", {"key": SECRET_KEY})
    if not isinstance(stored, str) or len(stored) < 32:
        raise RuntimeError("the store holds no usable development signing key")
    return stored


async def offer_signing_secret(call: Caller, secret: str, settings: Settings) -> None:
    """On reconnect: put this worker's development key back if the store lost it."""
    if settings.jwt_secret is None:
        await call("kv_set", {"key": SECRET_KEY, "value": secret, "nx": True})
