"""The key/value and rate-limit commands: ``kv_set``, ``kv_get``, ``kv_get_many``,
``kv_delete``, ``rate_hit`` and ``rate_refund``.

Kept apart from the engine as the record commands are (``reads``, ``writes``): they touch no
table, only the keys (``keyvalue.KeyValueStore``) and the rate counters
(``ratelimit.FixedWindowCounters``) the engine owns, its clock, and its journal: ``kv_set``
and ``kv_delete`` append to the ``RecordWriter``'s ``changes``; counters are not journaled.

``kv_set stamp`` stores the engine's clock reading at the instant the command is applied, so
a time stored that way is ordered with every read of the key: a read answered before it came
from a request that began before it, and every read after it sees it (the API dates a user's
revocation mark so). The API compares that time with its own ``time.time()``: this holds
because the store (``Engine``'s default clock, ``time.time``) and its workers read the same
clock, CLOCK_REALTIME of one host, the store being reached over a local socket. Assumed, not
checked: API hosts reaching the store over ``STORE_TCP`` read their own clocks, and the order
then holds only up to the skew between the hosts (and, on one host, not across a step of the
system clock).

``kv_set eq`` is a compare-and-set: the value is written only over that exact present value
(same types, so ``1`` is not ``1.0`` nor ``true``). Of several writers that read one value and
each try to replace it, exactly one succeeds: the API rotates a session's refresh token so.

A value takes at most ``MAX_KV_VALUE_BYTES`` encoded and holds at most ``MAX_KV_VALUES``
values (maps, lists and scalars), else ``LIMIT_EXCEEDED`` naming the bound. The bytes bound
strings; the count bounds containers, which cost ~70 bytes of memory per byte sent (three
``kv_set`` of 2 MB of empty maps took the store from 406 to 685 MB). Keys stay small so that
``kv_set`` can be taken over the memory limit (see ``Engine.GROWING_COMMANDS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from storeserver.arguments import Args, check_keys, optional_bool, positive_number, required_str
from storeserver.errors import BadRequest, CredentialRevoked, LimitExceeded
from storeserver.protocol import pack_value
from storeserver.records import copy_value

if TYPE_CHECKING:
    from storeserver.keyvalue import KeyValueStore
    from storeserver.ratelimit import FixedWindowCounters
    from storeserver.writes import RecordWriter

MAX_KEY_LENGTH = 1024
MAX_KV_VALUE_BYTES = 64 * 1024
"""Encoded (msgpack) size of one key's value. The API's are under 100 bytes: revocation
marks and high-water marks (a float), refresh markers (a token id), the development signing
key (64 characters)."""
MAX_KV_VALUES = 1024
"""Maps, lists and scalars in one key's value (a scalar alone is one)."""

_KV_SET_ARGS = frozenset({"key", "value", "ttl", "nx", "gt", "stamp", "eq"})
_KEY_ARGS = frozenset({"key"})
_KEYS_ARGS = frozenset({"keys"})
_RATE_ARGS = frozenset({"key", "limit", "window", "peek", "refund", "issued_at", "fallback"})
_RATE_REFUND_ARGS = frozenset({"key", "reset"})
_CREDENTIAL_KEYS = frozenset({"session_key", "user_key", "issued_at"})


class KeyCommands:
    def __init__(
        self,
        kv: KeyValueStore,
        rates: FixedWindowCounters,
        writer: RecordWriter,
        clock: Callable[[], float],
        max_in: int,
    ) -> None:
        """``max_in``: the most keys ``kv_get_many`` and ``rate_hit``'s ``peek`` take."""
        self._kv = kv
        self._rates = rates
        self._writer = writer
        self._clock = clock
        self.max_in = max_in

    def kv_set(self, args: Args) -> bool:
        check_keys(args, _KV_SET_ARGS)
        key = _key(args)
        stamp = optional_bool(args, "stamp")
        if stamp and "value" in args:
            message = "with stamp the value is the store's clock: send no value"
            raise BadRequest(message, {"arg": "value"})
        if not stamp and "value" not in args:
            raise BadRequest("value is required", {"arg": "value"})
        value = None if stamp else _stored_value(args, "value")
        ttl = positive_number(args, "ttl", required=False)
        nx = optional_bool(args, "nx")
        gt = optional_bool(args, "gt")
        compare = "eq" in args
        if compare:
            for name, given in (("nx", nx), ("gt", gt), ("stamp", stamp)):
                if given:
                    raise BadRequest(f"eq cannot be combined with {name}", {"arg": name})
        expected = _compared_value(args) if compare else None
        now = self._clock()  # the command's instant: nothing else runs until it has written
        if stamp:
            value = now
        if gt and not _is_number(value):
            raise BadRequest("gt compares numbers: value must be a number", {"arg": "value"})
        self._kv.sweep()
        if nx and self._kv.contains(key):
            return False
        if gt and self._kv.contains(key):
            # A high-water mark (a time up to which something must be remembered): several
            # writers may announce it at once, and a lower value must never replace a higher.
            current = self._kv.get(key)
            if _is_number(current) and current >= value:
                return False
        if compare and not (self._kv.contains(key) and _same(self._kv.get(key), expected)):
            return False
        expires_at = None if ttl is None else now + ttl
        self._kv.set(key, value, expires_at)
        if self._writer.journal:
            self._writer.changes.append(("kv_set", key, value, expires_at))
        return True

    def check_credential(self, credential: Any) -> None:
        """Refuse (``CredentialRevoked``) a write sent in the name of a credential that has
        ended: ``{"session_key", "user_key", "issued_at"}``, the keys of its revocation marks
        and its issue time. Ended when the session's key holds any value, or the user's a time
        at or after ``issued_at`` (the API's rule, ``api.auth.sessions.check_not_revoked``).

        The API checks its caller's token as a request begins; a request can run for seconds
        before its write (a transaction of twenty bcrypt hashes), and the write then landed
        after a demotion or deletion that had already been answered (QA: a demoted admin's
        transaction created an admin account 6.4 s later). Checked here, in the write's own
        turn, no write is applied after the mark that ended its caller's session."""
        if type(credential) is not dict or credential.keys() != _CREDENTIAL_KEYS:
            message = "_actor.credential must be {session_key, user_key, issued_at}"
            raise BadRequest(message, {"arg": "_actor"})
        session_key, user_key = credential["session_key"], credential["user_key"]
        issued_at = credential["issued_at"]
        if type(session_key) is not str or type(user_key) is not str or not _is_number(issued_at):
            message = "_actor.credential: two string keys and a number issued_at"
            raise BadRequest(message, {"arg": "_actor"})
        reason = _ended(self._kv.get(session_key), self._kv.get(user_key), issued_at)
        if reason is not None:
            raise CredentialRevoked(reason, {})

    def kv_get(self, args: Args) -> Any:
        check_keys(args, _KEY_ARGS)
        key = _key(args)
        self._kv.sweep()
        return self._kv.get(key)

    def kv_get_many(self, args: Args) -> list[Any]:
        """Several keys in one round trip (e.g. a session's and its user's revocation marks)."""
        check_keys(args, _KEYS_ARGS)
        return self._kv_values(args.get("keys"), "keys")

    def _kv_values(self, keys: Any, arg: str) -> list[Any]:
        """The values of ``keys`` (the ``arg`` argument), ``None`` where absent or expired."""
        if type(keys) is not list:
            raise BadRequest(f"{arg} must be a list of keys", {"arg": arg})
        if len(keys) > self.max_in:  # as get_many's ids (QA: said "at most max_in keys")
            message = f"{arg} takes at most {self.max_in} keys"
            raise LimitExceeded(message, {"arg": arg, "max": self.max_in})
        self._kv.sweep()
        values = []
        for index, key in enumerate(keys):
            if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
                message = (
                    f"{arg} must hold non-empty strings of at most {MAX_KEY_LENGTH} characters"
                )
                raise BadRequest(message, {"arg": arg, "index": index})
            values.append(self._kv.get(key))
        return values

    def kv_delete(self, args: Args) -> bool:
        check_keys(args, _KEY_ARGS)
        key = _key(args)
        self._kv.sweep()
        existed = self._kv.delete(key)
        if existed and self._writer.journal:
            self._writer.changes.append(("kv_delete", key))
        return existed

    def rate_hit(self, args: Args) -> dict[str, Any]:
        """One hit; with ``peek`` (a list of keys) also their values, as ``kv_get_many`` would
        give them: a worker checks a request's limit and its token's revocation marks in one
        round trip instead of two. ``refund`` (a key) first takes back one hit of that key.

        With ``issued_at`` and ``fallback`` (a key), ``peek`` names a token's session mark
        and its user's (``check_credential``'s rule): if they end a token issued then, the
        hit counts against ``fallback`` (the client's address) instead, and the answer says
        ``"fallback": true``. Decided in this one command: counted against the user first and
        taken back by a second, each replay of a revoked token held one of its user's hits in
        between (QA: a flood of a logged-out token put the user's live session at 429)."""
        check_keys(args, _RATE_ARGS)
        key = _key(args)
        hits = args.get("limit")
        if type(hits) is not int or hits < 1:
            raise BadRequest("limit must be an integer >= 1", {"arg": "limit"})
        window = positive_number(args, "window")
        assert window is not None
        peek = args.get("peek")
        if peek is not None:
            peeked = self._kv_values(peek, "peek")  # checked before the hit counts
        fell_back = False
        if "issued_at" in args or "fallback" in args:
            issued_at = args.get("issued_at")
            if peek is None or len(peeked) != 2 or not _is_number(issued_at):
                message = "issued_at (a number) and fallback go with peek: [session, user] marks"
                raise BadRequest(message, {"arg": "issued_at"})
            fallback = _key(args, "fallback")
            if _ended(peeked[0], peeked[1], issued_at) is not None:
                key, fell_back = fallback, True
        refund = args.get("refund")
        if refund is not None:
            # A hit counted against another key that should not have been (the client's
            # address, for a token that verified only with the key a worker switched to
            # during the request): taken back in the same command as this one.
            self._rates.refund(_key(args, "refund"))
        result = self._rates.hit(key, hits, window)
        if peek is not None:
            result = {**result, "peek": peeked}
        if fell_back:
            result["fallback"] = True
        return result

    def rate_refund(self, args: Args) -> bool:
        """Take back one hit of ``key`` counted in the window ending at ``reset`` (the
        ``reset`` its ``rate_hit`` answered): ``False``, nothing taken, if that window has
        ended (a later one's hits are not this caller's to take) or holds no hit.

        The API takes back a successful login's count on its username so; it may end a
        bcrypt check after the username's window did."""
        check_keys(args, _RATE_REFUND_ARGS)
        key = _key(args)
        ends_at = positive_number(args, "reset")
        return self._rates.refund(key, ends_at)


def _is_number(value: Any) -> bool:
    """A finite int, float or Decimal: NaN compares false with every mark, so an issued_at of
    NaN passed every revocation (QA); an infinity is no time either."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int or (kind is Decimal and value.is_finite())


def _compared_value(args: Args) -> Any:
    """``eq``'s value, checked as a stored value would be (only such a value can match)."""
    try:
        return _stored_value(args, "eq")
    except BadRequest as error:
        raise BadRequest(f"eq: {error.message}", {"arg": "eq"}) from None


def _stored_value(args: Args, arg: str) -> Any:
    """A copy of ``args[arg]`` if a key may hold it; ``LIMIT_EXCEEDED`` past either bound,
    the count checked as it copies (so before a big value is built) and the bytes after."""
    try:
        value = copy_value(args[arg], max_values=MAX_KV_VALUES)
    except LimitExceeded:
        raise _too_big(arg, None) from None
    if type(value) is list or type(value) is dict or type(value) is str:
        size = len(pack_value(value))
        if size > MAX_KV_VALUE_BYTES:
            raise _too_big(arg, size)
    return value


def _too_big(arg: str, size: int | None) -> LimitExceeded:
    details: dict[str, Any] = {
        "arg": arg,
        "max_bytes": MAX_KV_VALUE_BYTES,
        "max_values": MAX_KV_VALUES,
    }
    if size is not None:
        details["size"] = size
    found = f"{size} bytes" if size is not None else f"more than {MAX_KV_VALUES} values"
    return LimitExceeded(
        f"{arg}: a key's value takes at most {MAX_KV_VALUE_BYTES} bytes encoded and holds at"
        f" most {MAX_KV_VALUES} values (maps, lists and scalars); this one has {found}",
        details,
    )


def _same(stored: Any, expected: Any) -> bool:
    """Equal and of the same types all the way down (``==`` alone takes ``1`` for ``True``)."""
    if type(stored) is not type(expected):
        return False
    if type(stored) is list:
        return len(stored) == len(expected) and all(map(_same, stored, expected))
    if type(stored) is dict:
        return stored.keys() == expected.keys() and all(
            _same(value, expected[name]) for name, value in stored.items()
        )
    return bool(stored == expected)


def _ended(session_mark: Any, user_not_before: Any, issued_at: Any) -> str | None:
    """Why a token issued at ``issued_at`` has ended, given its session's revocation mark and
    its user's not-before time (the API's rule, ``api.auth.sessions.check_not_revoked``), or
    ``None`` while it is valid."""
    if session_mark is not None:
        return "the caller's session was ended"
    if _is_number(user_not_before) and issued_at <= user_not_before:
        return "the caller's sessions were ended"
    return None


def _key(args: Args, name: str = "key") -> str:
    key = required_str(args, name)
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"{name} longer than {MAX_KEY_LENGTH}", {"arg": name})
    return key
