"""Sessions and their revocation, kept in the store so every worker sees them at once.

A login opens a session (an id carried as ``sid`` in both tokens); refreshing keeps the
session and rotates the tokens. Expiring keys, each kept until every token it concerns has
expired by its own ``exp``, whatever the configuration says later (tokens are cut to the
lifetime configured now, but raising it again would bring them back):

- ``auth:session-refresh:<sid>``: the session's latest refresh token: its ``jti`` (a string)
  at login; after a refresh, a map of its ``jti``, the ``prev`` token it replaced, its
  ``iat`` and ``role`` (what signing it again takes) and the time ``at`` which it replaced
  it. Replaced at each refresh by a compare-and-set (``kv_set eq`` over the value read), so
  exactly one exchange of a given refresh token rotates it across all workers. The token it
  replaced, presented again within ``REPEAT_SECONDS`` while its successor is still the latest,
  gets that same successor again (``Successor``): a client whose refresh answer was lost (a
  store crash, a timeout: 503 OUTCOME_UNKNOWN or 504), or that sent it twice at once (two
  tabs, a double click), keeps its session; QA found both revoked it as reuse. Any other
  presentation of a token of the session is reuse (a stolen copy, or a replay) and revokes the
  whole session. One key per live session, however often it refreshes; kept until the exp of
  every refresh token the session has had (``until``: a replaced one can outlive the latest).
- ``auth:session-revoked:<sid>``: logout, or reuse of a rotated refresh token. Every token of
  the session is refused from then on. A marker rather than a "live session" key, so a refresh
  racing a logout can never bring the session back.
- ``auth:user-not-before:<user id>``: a timestamp, the store's clock as it wrote the mark
  (``kv_set stamp``); tokens issued at or before it are refused. Set when a password or role
  changes or the user is deleted: it ends all their sessions.
- ``auth:refresh-used:<jti>``: how an earlier release marked a spent refresh token (``nx``,
  kept until that token's exp). Still read and written for a session without a
  ``session-refresh`` key (opened by that release): its first refresh here gives it one.

The two revocation marks concern tokens nobody presents (a session's refresh tokens, all of
a user's), so they are kept until ``auth:token-horizon``: the latest exp of any token issued,
which every worker raises (``kv_set gt``) before its tokens leave it, at most about once a
minute. Without it, a mark set while REFRESH_TOKEN_TTL was low expired before tokens signed
under an earlier, higher setting, and setting it back revived them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from api.auth.tokens import Claims, InvalidToken
from api.settings import get_settings
from api.store import Store
from storeserver.errors import BadRequest

SESSION_REVOKED = "auth:session-revoked:"
USER_NOT_BEFORE = "auth:user-not-before:"
REFRESH_USED = "auth:refresh-used:"
SESSION_REFRESH = "auth:session-refresh:"
REPEAT_SECONDS = 60
"""How long the refresh token a refresh replaced still gets that refresh's successor (while
the successor is not rotated in turn): a lost answer's retry, or a concurrent duplicate."""
TOKEN_HORIZON = "auth:token-horizon"
# Without a horizon, live tokens can only come from an earlier release (which kept none) or
# have all expired: marks are kept for that release's default refresh lifetime, 7 days.
UNKNOWN_HORIZON_TTL = 7 * 86_400
# Announce a little past each exp, so a worker writes the horizon about once a minute.
HORIZON_STEP = 60
# ``event`` is the bare name (what an operator's alert matches), the details in fields.
log = structlog.get_logger("api.auth")
_announced = 0.0  # this worker's last announced horizon (0 in a new process)
_said_no_eq = False  # this worker has logged that its store does not take kv_set eq
_said_marks_apart = False  # ... that its store does not take kv_set in a batch


def revocation_keys(claims: Claims) -> tuple[str, str]:
    """The two keys a token's validity depends on (read on every request)."""
    return SESSION_REVOKED + claims.session_id, USER_NOT_BEFORE + claims.subject


def check_not_revoked(claims: Claims, session_revoked: Any, user_not_before: Any) -> None:
    """Raise ``InvalidToken`` if the values read for ``revocation_keys`` refuse this token."""
    if session_revoked is not None:
        raise InvalidToken("the session was ended")
    if isinstance(user_not_before, int | float) and claims.issued_at <= user_not_before:
        raise InvalidToken("the user's sessions were ended")


def credential(session_id: str, user_id: str, issued_at: float) -> dict[str, Any]:
    """What the store checks before each write made for a request (``_actor.credential``,
    ``storeserver.keys.KeyCommands.check_credential``): the token's revocation keys and issue
    time, by the rule of ``check_not_revoked``. The token is checked as the request begins; a
    logout, password or role change or deletion answered while it runs stops its writes."""
    return {
        "session_key": SESSION_REVOKED + session_id,
        "user_key": USER_NOT_BEFORE + user_id,
        "issued_at": issued_at,
    }


async def ensure_not_revoked(store: Store, claims: Claims) -> None:
    """One check from the store (used where the request guard did not already do it)."""
    session_revoked, user_not_before = await store.call(
        "kv_get_many", {"keys": list(revocation_keys(claims))}
    )
    check_not_revoked(claims, session_revoked, user_not_before)


async def announce_expiry(store: Store, expires_at: int) -> None:
    """Make sure the store's token horizon reaches ``expires_at`` before a token with that exp
    is handed out (revocation marks set from then on outlive it)."""
    global _announced
    if expires_at <= _announced:
        return
    until = expires_at + HORIZON_STEP
    ttl = until - time.time()
    try:
        await store.call("kv_set", {"key": TOKEN_HORIZON, "value": until, "ttl": ttl, "gt": True})
    except BadRequest:
        # A store of an earlier release (no ``gt``): logins must go on; marks then fall back
        # to UNKNOWN_HORIZON_TTL. Said once per worker, as ``_announced`` stops the retries.
        log.warning(
            "token_horizon_not_kept", message="the store does not take kv_set gt (upgrade it)"
        )
    _announced = until


async def revoke_session(store: Store, session_id: str) -> None:
    """Logout: every token of this session is refused, on every worker, from now on."""
    await _set_mark(store, SESSION_REVOKED + session_id, await _mark_ttl(store))


async def end_user_sessions(store: Store, user_id: str) -> None:
    """Refuse every token issued to this user until now (password/role change, deletion)."""
    await _set_mark(store, USER_NOT_BEFORE + user_id, await _mark_ttl(store))


async def write_ending_sessions(
    store: Store, ops: list[dict[str, Any]], user_ids: list[str], refs: bool = False
) -> dict[str, Any]:
    """Apply the batch ``ops`` (the store's reply, ``results`` those of ``ops``) and end the
    sessions of ``user_ids`` (``end_user_sessions``) in the same store command.

    In two commands, a store that stalled or a worker that died between them left the write
    applied (a password or role changed, a user deleted) and the marks never set: every old
    token went on working, a demoted admin's with the admin role. One batch is applied whole
    or not at all, whatever the worker hears back.
    """
    if not user_ids:
        return dict(await store.call("batch", {"ops": ops, "refs": refs}))
    ttl = await _mark_ttl(store)
    marks = [_mark_op(USER_NOT_BEFORE + user_id, ttl) for user_id in user_ids]
    try:
        reply = await store.call("batch", {"ops": [*ops, *marks], "refs": refs})
    except BadRequest as error:
        index = error.details.get("index")
        if error.details.get("arg") != "ops" or type(index) is not int or index < len(ops):
            raise
        # A store of an earlier release (mid-upgrade) takes no kv_set in a batch: the write,
        # then the marks, as that release did (a stall between the two leaves the sessions
        # open), rather than refusing every password or role change until it is upgraded.
        _say_marks_apart()
        reply = await store.call("batch", {"ops": ops, "refs": refs})
        for user_id in user_ids:
            await _set_mark(store, USER_NOT_BEFORE + user_id, ttl)
        return dict(reply)
    unchanged = [index for index in reply.get("unchanged", ()) if index < len(ops)]
    return {**reply, "results": reply["results"][: len(ops)], "unchanged": unchanged}


def _mark_op(key: str, ttl: float) -> dict[str, Any]:
    """A revocation mark as a batch op: dated by the store's clock, as ``_set_mark`` says."""
    return {"op": "kv_set", "key": key, "stamp": True, "ttl": ttl}


def _say_marks_apart() -> None:
    global _said_marks_apart
    if not _said_marks_apart:
        log.warning(
            "revocation_mark_not_atomic",
            message="the store takes no kv_set in a batch (upgrade it): a user's sessions are"
            " ended by a second command after a password or role change",
        )
        _said_marks_apart = True


async def _set_mark(store: Store, key: str, ttl: float) -> None:
    """Store a revocation mark dated by the store's clock as it writes it (``kv_set stamp``).

    A refresh dates its tokens before it reads the marks. Dated by this worker before the
    write travelled, a mark could be older than a refresh whose read reached the store before
    the write: that refresh saw no mark, and its tokens, dated after the mark, were never
    refused. Dated by the store, a mark is later than every read the store answered before it
    (so those refreshes' tokens are refused) and every later read sees it. The worker's and
    the store's ``time.time()`` are the same clock: one host, a local socket (see
    ``storeserver.keys``; API hosts over ``STORE_TCP`` are ordered up to their clock skew).
    """
    try:
        await store.call("kv_set", {"key": key, "stamp": True, "ttl": ttl})
    except BadRequest as error:
        if error.details.get("arg") != "stamp":
            raise
        # A store of an earlier release (no ``stamp``, mid-upgrade): the worker's clock, as
        # that release did, rather than no mark at all.
        log.warning(
            "revocation_mark_worker_clock",
            message="the store does not take kv_set stamp (upgrade it): marks dated by the worker",
        )
        await store.call("kv_set", {"key": key, "value": time.time(), "ttl": ttl})


async def open_session(store: Store, session_id: str, refresh: Claims) -> None:
    """At login: ``refresh`` (the issued refresh token) is the session's latest."""
    args = {"key": SESSION_REFRESH + session_id, "value": refresh.token_id}
    await store.call("kv_set", {**args, "ttl": _ttl_until(refresh.signed_expires_at)})


@dataclass(frozen=True)
class Successor:
    """The refresh token that already replaced the presented one: signed again, it is the
    same token (HS256 is deterministic over the same claims)."""

    token_id: str
    issued_at: float
    role: str


def _latest_id(value: Any) -> Any:
    """The session's latest refresh token id, from its key's value (either form)."""
    return value.get("jti") if isinstance(value, dict) else value


def _successor(value: Any, presented: Claims) -> Successor | None:
    """The token that replaced ``presented`` less than ``REPEAT_SECONDS`` ago and is still the
    session's latest, if any."""
    if not isinstance(value, dict) or value.get("prev") != presented.token_id:
        return None
    at, jti, iat, role = (value.get(k) for k in ("at", "jti", "iat", "role"))
    # Either side of now: ``at`` is the clock of the worker that rotated (clocks drift).
    fresh = isinstance(at, int | float) and abs(time.time() - at) <= REPEAT_SECONDS
    if not fresh or not isinstance(jti, str) or not isinstance(role, str):
        return None
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        return None
    return Successor(jti, float(iat), role)


async def rotate_refresh_token(store: Store, presented: Claims, issued: Claims) -> Successor | None:
    """Make ``issued`` the session's latest refresh token in place of ``presented``, atomically
    across workers (``None``); if ``presented`` was just replaced by another exchange, the
    ``Successor`` that replaced it, to be given again; else (reuse) revoke the session."""
    global _said_no_eq
    key = SESSION_REFRESH + presented.session_id
    current = await store.call("kv_get", {"key": key})
    until = _kept_until(current, presented, issued)
    record = {
        "jti": issued.token_id,
        "prev": presented.token_id,
        "iat": issued.issued_at,
        "role": issued.role,
        "at": time.time(),
        "until": until,
    }
    args = {"key": key, "value": record, "ttl": _ttl_until(until)}
    try:
        if _latest_id(current) == presented.token_id and await store.call(
            "kv_set", {**args, "eq": current}
        ):
            return None
    except BadRequest as error:
        if error.details.get("arg") != "eq":
            raise
        # A store of an earlier release (mid-upgrade): the markers below decide instead.
        if not _said_no_eq:
            log.warning(
                "refresh_rotation_by_marker",
                message="the store does not take kv_set eq (upgrade it): refresh tokens are "
                "marked used one by one",
            )
            _said_no_eq = True
    latest = await store.call("kv_get", {"key": key})
    successor = _successor(latest, presented)
    if successor is not None:
        log.info("refresh_repeated", session_id=presented.session_id, user_id=presented.subject)
        return successor
    if latest is not None and _latest_id(latest) != presented.token_id:
        await _refuse_reuse(store, presented)
    # No key: a session opened by an earlier release (or a store without ``eq``, where the key
    # is still the presented token's). The marker decides this exchange, and the one it lets
    # through makes the new token the session's latest (from then on the key decides).
    await consume_refresh_token(store, presented)
    await store.call("kv_set", {**args, "nx": True} if latest is None else args)
    return None


def _kept_until(current: Any, presented: Claims, issued: Claims) -> int:
    """Until when a session's key must be kept: past the exp of every refresh token the
    session has had. A token it replaced may outlive the latest (REFRESH_TOKEN_TTL lowered
    since), and a key gone before it let that spent token rotate again as an earlier
    release's session's (QA: spent under a 300 s lifetime, a 7-day token was 200 again once
    the setting went back). Each rotation carries the earlier tokens' latest exp on, as
    ``until``; the presented token stands for those before any rotation (the login's)."""
    exps = [presented.expires_at, presented.signed_expires_at, issued.signed_expires_at]
    kept = current.get("until") if isinstance(current, dict) else None
    if isinstance(kept, int) and not isinstance(kept, bool):
        exps.append(kept)
    return max(exps)


async def consume_refresh_token(store: Store, claims: Claims) -> None:
    """Mark a refresh token used (an earlier release's scheme), atomically across workers;
    reuse revokes its session."""
    last = max(claims.expires_at, claims.signed_expires_at)  # its exp, if a later setting allows
    first_use = await store.call(
        "kv_set",
        {"key": REFRESH_USED + claims.token_id, "value": 1, "nx": True, "ttl": _ttl_until(last)},
    )
    if not first_use:
        await _refuse_reuse(store, claims)


async def _refuse_reuse(store: Store, claims: Claims) -> NoReturn:
    await revoke_session(store, claims.session_id)
    log.warning(
        "refresh_token_reused",
        session_id=claims.session_id,
        user_id=claims.subject,
        message="a refresh token was presented again: its session is revoked",
    )
    raise InvalidToken("refresh token reused: the session is revoked")


def _ttl_until(expires_at: float) -> int:
    """A key's ttl reaching past ``expires_at`` (a token's exp)."""
    return max(int(expires_at - time.time()) + 1, 1)


async def _mark_ttl(store: Store) -> float:
    """How long a session's or a user's revocation mark must be kept: past every token issued
    so far (the horizon), and at least the refresh lifetime configured now."""
    horizon = await store.call("kv_get", {"key": TOKEN_HORIZON})
    ttl = float(get_settings().refresh_token_ttl)
    if isinstance(horizon, int | float) and not isinstance(horizon, bool):
        return max(ttl, horizon - time.time() + 1)
    return max(ttl, UNKNOWN_HORIZON_TTL)
