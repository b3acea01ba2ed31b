"""ADMIN_EMAIL / ADMIN_PASSWORD: make sure an administrator exists when a worker starts.

Run at every worker start and store reconnection, so it must only ever repair, never undo:

- No account with that email and no admin at all: create it (the store's unique email index
  lets exactly one of several workers starting at once insert it; the others get a Conflict
  and find the record). With other admins there, it was deleted (or is new): left missing.
- The account exists but is not an admin: promoted only when no admin exists at all (an admin
  who demoted it meant it; the store's ``keep`` rule means a demotion always leaves another
  admin) and only if ADMIN_PASSWORD is its password (otherwise whoever registered that email
  first, through open registration, would be handed the admin role). Workers starting
  together may both promote it: the second promotion changes nothing.
- ADMIN_PASSWORD only creates the account: a password changed later through the API is kept,
  and a warning says so when ADMIN_PASSWORD no longer matches (one bcrypt check per start).
"""

from __future__ import annotations

from typing import Any

import structlog

from api.auth.credentials import find_login
from api.schemas.users import UserCreate
from api.services import users
from api.services.passwords import verify_password
from api.store import Store
from storeserver.errors import Conflict

# Each line's ``event`` is its bare name (what an operator's alert matches), the account in
# ``email`` and the explanation in ``message``.
log = structlog.get_logger("api.auth")


async def ensure_admin(store: Store, email: str, password: str) -> None:
    record = await find_login(store, email)
    if record is None and await count_admins(store) > 0:
        # Deleted by an admin (or never made, with admins already there): recreating it
        # at the next worker restart would undo that deletion.
        log.warning(
            "admin_email_missing",
            email=email,
            message="no account with ADMIN_EMAIL, and other admins exist; not creating it",
        )
        return
    if record is None:
        payload = UserCreate(
            email=email, full_name="Administrator", password=password, role="admin"
        )
        try:
            await users.create_user(store, payload)
            log.info("admin_created", email=email, message="created the administrator account")
            return
        except Conflict:
            record = await find_login(store, email)  # another worker won the race
    if record is None:
        return
    if record.get("role") == "admin":
        if not await password_is(record, password):
            log.warning(
                "admin_password_not_applied",
                email=email,
                message="the ADMIN_EMAIL account exists and its password is not ADMIN_PASSWORD,"
                " which only creates the account; change the password through the API"
                " (PATCH /api/v1/users/{id})",
            )
        return
    if await count_admins(store) > 0:
        log.warning(
            "admin_email_not_admin",
            email=email,
            message="the ADMIN_EMAIL account exists but is not an admin and other admins"
            " exist; left as is",
        )
    elif await password_is(record, password):
        await users.set_role(store, str(record["id"]), "admin")
        log.warning(
            "admin_promoted",
            email=email,
            message="no admin existed; promoted the existing ADMIN_EMAIL account",
        )
    else:
        log.error(
            "admin_not_promoted",
            email=email,
            message="no admin exists and ADMIN_EMAIL belongs to a non-admin account whose"
            " password is not ADMIN_PASSWORD; not promoting it",
        )


async def count_admins(store: Store) -> int:
    return int(
        await store.call("count", {"table": users.TABLE, "where": [["role", "eq", "admin"]]})
    )


async def password_is(record: dict[str, Any], password: str) -> bool:
    stored = record.get("password_hash")
    return isinstance(stored, str) and await verify_password(password, stored)
