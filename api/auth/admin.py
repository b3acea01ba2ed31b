"""ADMIN_EMAIL / ADMIN_PASSWORD: make sure that administrator exists when a worker starts.

Safe with several workers starting at once: the store's unique email index lets exactly one
insert win; the others get a Conflict and find the record. An existing account is promoted
only if ADMIN_PASSWORD is its password: otherwise whoever registered that email first (open
registration) would be handed the admin role. ADMIN_PASSWORD is used only to create the
account; a password changed later through the API is kept.
"""

from __future__ import annotations

import logging

from api.auth.credentials import find_login
from api.schemas.users import UserCreate
from api.services import users
from api.services.passwords import verify_password
from api.store import Store
from storeserver.errors import Conflict

logger = logging.getLogger("api.auth")


async def ensure_admin(store: Store, email: str, password: str) -> None:
    record = await find_login(store, email)
    if record is None:
        payload = UserCreate(
            email=email, full_name="Administrator", password=password, role="admin"
        )
        try:
            await users.create_user(store, payload)
            logger.info("created the administrator account %s", email)
            return
        except Conflict:
            record = await find_login(store, email)  # another worker won the race
    if record is None or record.get("role") == "admin":
        return
    stored = record.get("password_hash")
    if isinstance(stored, str) and await verify_password(password, stored):
        await users.set_role(store, str(record["id"]), "admin")
        logger.warning("promoted the existing account %s to admin (ADMIN_EMAIL)", email)
    else:
        logger.error(
            "ADMIN_EMAIL %s belongs to a non-admin account whose password is not ADMIN_PASSWORD;"
            " not promoting it",
            email,
        )
