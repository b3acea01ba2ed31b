"""Users: validation is in the schemas; here, hashing, the store calls and the public shape."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from api.auth.sessions import write_ending_sessions
from api.errors import ApiError
from api.filters import Loc
from api.queries import BASE_FIELDS, FieldType, ListQuery
from api.schemas.users import Email, UserCreate, UserPublic, UserUpdate
from api.services.passwords import hash_password, refuse_unusable_password, verify_password
from api.services.versions import expected_version, precondition_failed, with_version
from api.store import Store
from storeserver.client import current_actor
from storeserver.errors import NotFound, VersionMismatch

TABLE = "users"
# The store enforces uniqueness (case-insensitively), so racing workers cannot both win,
# and never returns password_hash from a read.
SCHEMA: dict[str, Any] = {
    "table": TABLE,
    "indexes": [{"field": "email", "unique": True, "casefold": True}],
    "hidden": ["password_hash"],
    # The store refuses the write that would demote or delete the last admin, whatever the
    # route (a user deleting themself, a transaction, two admins demoting each other at once).
    "keep": [{"field": "role", "value": "admin", "at_least": 1}],
}
FIELDS: dict[str, FieldType] = {
    **BASE_FIELDS,
    "email": "str",
    "full_name": "str",
    "age": "int",
    "role": "str",
}
PUBLIC_FIELDS = tuple(UserPublic.model_fields)
DEFAULT_ROLE = "user"
# bcrypt costs ~0.25 s per password at cost 12: bulk writes and transactions hash at most this
# many per request.
MAX_HASHES_PER_REQUEST = 20
# Where a request's user fields are, for a 422 on one (``body.password``); a write through
# /data/users or a transaction passes its own (``body.data``, ``body.operations.0.data``).
BODY: Loc = ("body",)
# An address as the schemas check and normalize it (``sends_stored_email``).
EMAIL = TypeAdapter(Email)
# Tries of a role patch at the version of its read of the role (another write in between
# refuses it); past them the patch is made regardless and the user's sessions end.
ROLE_PATCH_ATTEMPTS = 3


def to_public(record: dict[str, Any]) -> dict[str, Any]:
    """Only the public fields, whatever else the record holds (no role stored: ``user``)."""
    public = {name: record.get(name) for name in PUBLIC_FIELDS}
    if public["role"] is None:
        public["role"] = DEFAULT_ROLE
    return public


async def new_record(payload: UserCreate, loc: Loc = BODY) -> dict[str, Any]:
    """The stored form of a new user: the password hashed, the role ``user`` unless named."""
    record: dict[str, Any] = {
        "email": str(payload.email),
        "full_name": payload.full_name,
        "password_hash": await new_password_hash(payload.password, loc),
        "role": payload.role or DEFAULT_ROLE,
    }
    if payload.age is not None:
        record["age"] = payload.age
    return record


async def create_user(store: Store, payload: UserCreate, loc: Loc = BODY) -> dict[str, Any]:
    """Insert a user; the role is ``user`` unless the payload names one (the route checks
    that only an admin may). ``loc``: where the payload's fields are in the request."""
    record = await new_record(payload, loc)
    return to_public(await store.call("insert", {"table": TABLE, "record": record}))


async def read_user(store: Store, user_id: str) -> dict[str, Any]:
    return to_public(await store.call("get", {"table": TABLE, "id": user_id}))


async def list_users(store: Store, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
    found = await store.call("find", query.find_args(TABLE))
    return [to_public(record) for record in found["items"]], int(found["total"])


async def new_password_hash(password: str, loc: Loc = BODY) -> str:
    """The hash to store for a password being set (every path that sets one comes here);
    a password the account could never log in with is refused first (422 on the field)."""
    refuse_unusable_password(password, ".".join(str(part) for part in (*loc, "password")))
    return await hash_password(password)


async def update_changes(payload: UserUpdate, loc: Loc = BODY) -> dict[str, Any]:
    """The stored changes of a partial update (a new password hashed)."""
    changes = payload.model_dump(exclude_unset=True)
    changes.pop("current_password", None)
    if "email" in changes:
        changes["email"] = str(changes["email"])
    if "password" in changes:
        changes["password_hash"] = await new_password_hash(changes.pop("password"), loc)
    return changes


async def replace_changes(payload: UserCreate, loc: Loc = BODY) -> dict[str, Any]:
    """A replacement as changes: every client field; the role kept unless the payload names
    one; the password always replaced (so the user's sessions end)."""
    changes: dict[str, Any] = {
        "email": str(payload.email),
        "full_name": payload.full_name,
        "age": payload.age,
        "password_hash": await new_password_hash(payload.password, loc),
    }
    if payload.role is not None:
        changes["role"] = payload.role
    return changes


def check_hash_budget(count: int) -> None:
    """400 for a request that would hash more than ``MAX_HASHES_PER_REQUEST`` passwords."""
    if count > MAX_HASHES_PER_REQUEST:
        message = f"at most {MAX_HASHES_PER_REQUEST} passwords may be set in one request"
        raise ApiError(400, "LIMIT_EXCEEDED", message, [{"field": "body", "message": message}])


SIGN_IN_FIELDS = ("password", "email")
"""What signs in to an account: changing your own needs ``current_password``."""


def refuse_own_password_change(user_id: Any, loc: Loc) -> None:
    """A write that sets a password (or an email: ``loc`` names the field) through
    ``/data/users`` or a transaction (admins only) may not target the caller: their own needs
    ``current_password``, which only ``PATCH /users/{id}`` checks, so a stolen access token
    cannot take over the account. A target named by a ``$ref`` is refused too: it is only
    known in the store."""
    if current_actor.get() is None or not (isinstance(user_id, dict) or is_caller(user_id)):
        return
    field = ".".join(str(part) for part in loc)
    message = (
        f"your own {loc[-1]} changes only through PATCH /api/v1/users/{{id}} with current_password"
        if not isinstance(user_id, dict)
        else f"a {loc[-1]} is set here only on a user named by id, not by a reference"
    )
    raise ApiError(
        422, "VALIDATION_ERROR", "Request validation failed", [{"field": field, "message": message}]
    )


def is_caller(user_id: Any) -> bool:
    """Whether ``user_id`` (an id, or a ``$ref`` that only the store resolves) names the caller."""
    actor = current_actor.get()
    return actor is not None and not isinstance(user_id, dict) and str(user_id) == actor["user_id"]


async def sends_stored_email(store: Store, user_id: object, data: dict[str, Any]) -> bool:
    """Whether a users write's ``data`` holds the user's email as stored: the one rule for an
    address sent again (a client saving a whole profile form), on every route that writes one.

    Sent again, it changes nothing: the caller leaves it out of the write (so it can never put
    an address back over a change of email that landed since it was read), it needs no
    ``current_password``, and it is not checked again, so an account stored with an address
    the checks refuse now (made before them: ``adm\u0131n@...``) still saves its profile.
    Only the stored record, read here in the same request, decides: the value as sent equal
    to it, or a valid address that the checks normalize to it (a domain in capitals). Any
    other value, re-cased included (the stored spelling changes), is a change and goes
    through every check.
    """
    sent = data.get("email")
    if not isinstance(sent, str) or isinstance(user_id, dict):
        return False  # none sent; or a target named by a ``$ref``, known only in the store
    try:
        stored = (await read_user(store, str(user_id)))["email"]
    except NotFound:
        return False  # the write that follows answers 404 at its operation
    return bool(sent == stored or _normalized_email(sent) == stored)


async def without_stored_email(
    store: Store, user_id: object, data: dict[str, Any]
) -> dict[str, Any]:
    """A patch's ``data`` without its email if that is the stored one (``sends_stored_email``)."""
    if await sends_stored_email(store, user_id, data):
        return {key: value for key, value in data.items() if key != "email"}
    return data


def _normalized_email(sent: str) -> str | None:
    """``sent`` as the checks normalize a new address; ``None`` if they refuse it."""
    try:
        return str(EMAIL.validate_python(sent))
    except ValidationError:
        return None


def ends_sessions(changes: dict[str, Any]) -> bool:
    """A new password or role ends the user's sessions (tokens carry the role)."""
    return "password_hash" in changes or "role" in changes


async def update_user(
    store: Store,
    user_id: str,
    payload: UserUpdate,
    if_match: frozenset[int] | None,
    loc: Loc = BODY,
) -> dict[str, Any]:
    """Apply the fields that were sent (``age: null`` removes the age).

    A new password or a role other than the user's ends the user's sessions (their tokens
    are refused from now on, in the same store command as the change: ``_write``); the role
    they already have, sent again, does not. ``current_password`` is checked by the route and
    never stored.
    """
    changes = await update_changes(payload, loc)
    if "role" in changes and "password_hash" not in changes:
        return await _patch_role(store, user_id, changes, if_match)
    return await _patch(store, user_id, changes, if_match, "password_hash" in changes)


async def replace_user(
    store: Store, user_id: str, changes: dict[str, Any], if_match: frozenset[int] | None
) -> dict[str, Any]:
    """Write a replacement's ``changes`` (``replace_changes``: every client-set field; the role
    kept unless named). The password is always replaced, so the user's sessions end."""
    return await _patch(store, user_id, changes, if_match, True)


async def delete_user(
    store: Store, user_id: str, if_match: frozenset[int] | None, cascade: bool
) -> None:
    """409 from the store if orders reference the user, unless ``cascade``."""
    version = await expected_version(store, TABLE, user_id, if_match)
    args: dict[str, object] = {"op": "delete", "table": TABLE, "id": user_id, "cascade": cascade}
    await _write(store, with_version(args, version), user_id, True)


async def set_role(store: Store, user_id: str, role: str) -> dict[str, Any]:
    """Change a user's role; their tokens (which carry the old role) stop working."""
    return await _patch(store, user_id, {"role": role}, None, True)


async def update_own_account(
    store: Store,
    user_id: str,
    payload: UserUpdate,
    if_match: frozenset[int] | None,
    current_password: str,
) -> dict[str, Any]:
    """``update_user`` for a change of the caller's own email or password: 403 unless
    ``current_password`` is the user's password, and the write is made only at the version
    that password was checked at.

    Written unconditionally, two changes sent at once with the same right password would
    both pass the check against the old hash and both be written, the last one winning; at
    the checked version, the store refuses every write but the first: 409 below. With
    If-Match or If-None-Match the client's version decides, as on any write (412).
    """
    version = await verified_version(store, user_id, current_password)
    if version is None:
        raise ApiError(403, "WRONG_PASSWORD", "current_password is not your password")
    if if_match is not None and version not in if_match:
        raise precondition_failed()
    try:
        return await update_user(store, user_id, payload, frozenset({version}))
    except VersionMismatch:
        if if_match is not None:
            raise
        # 409, not 412: 412 answers a condition the client sent (If-Match), and this client
        # sent none. Its request conflicts with the account as it is now: written to since
        # current_password was checked (another password or email change won), so that check
        # vouches for nothing. The client reads the account again and decides again.
        raise ApiError(
            409,
            "CONFLICT",
            "The account changed while current_password was checked (another change was"
            " made first); nothing was written: read it again and retry",
        ) from None


async def verified_version(store: Store, user_id: str, password: str) -> int | None:
    """The version of the user's record at which ``password`` is their password (bcrypt, off
    the loop); ``None`` if it is not."""
    record = await store.call("get", {"table": TABLE, "id": user_id, "include_hidden": True})
    stored = record.get("password_hash")
    if isinstance(stored, str) and await verify_password(password, stored):
        return int(record["version"])
    return None


async def _write(store: Store, op: dict[str, Any], user_id: str, ends_sessions: bool) -> Any:
    """The store's result of ``op`` (a batch op: ``{"op": "patch", ...}``) on the user; with
    ``ends_sessions``, their sessions end in the same store command (``write_ending_sessions``:
    made apart, a stall or a crash between the two left old tokens working after the change)."""
    if not ends_sessions:
        return await store.call(op["op"], {key: value for key, value in op.items() if key != "op"})
    return (await write_ending_sessions(store, [op], [user_id]))["results"][0]


async def _patch(
    store: Store,
    user_id: str,
    changes: dict[str, Any],
    if_match: frozenset[int] | None,
    ends_sessions: bool,
) -> dict[str, Any]:
    version = await expected_version(store, TABLE, user_id, if_match)
    op: dict[str, object] = {"op": "patch", "table": TABLE, "id": user_id, "changes": changes}
    return to_public(await _write(store, with_version(op, version), user_id, ends_sessions))


async def _patch_role(
    store: Store, user_id: str, changes: dict[str, Any], if_match: frozenset[int] | None
) -> dict[str, Any]:
    """Patch ``changes``, which name a role, ending the user's sessions if that changes it.

    The role is read, then the patch is made at the version read, so no write comes between
    the two: one that does (another admin's role change) makes the store refuse the patch,
    and it is tried again on a new read; with If-Match, the client's version decides (412).
    """
    version = await expected_version(store, TABLE, user_id, if_match)
    for _ in range(ROLE_PATCH_ATTEMPTS):
        current = await store.call("get", {"table": TABLE, "id": user_id})
        at = int(current["version"]) if version is None else version
        op = {"op": "patch", "table": TABLE, "id": user_id, "changes": changes}
        ends = to_public(current)["role"] != changes["role"]
        try:
            return to_public(await _write(store, {**op, "expected_version": at}, user_id, ends))
        except VersionMismatch:
            if version is not None:
                raise
    # Written to by others all along: patched regardless, and the sessions end (the safe side).
    return await _patch(store, user_id, changes, None, True)
