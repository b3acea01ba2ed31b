"""The audit log: who changed which table, when, how (field names only, never values).

Entries are compact tuples in a bounded deque (``max_entries``, and ``max_age`` seconds
checked on every append), turned into maps only by ``audit_list``. A command's entries are
collected in ``pending`` while it runs and committed only if it succeeds, so a failed command
leaves no audit trace; committed entries also go to the journal (``("audit", entry)``), so
they are persisted, snapshotted and replayed like the data.

Entry layout (``FIELDS``): seq, at, user_id, role, request_id, table, op, record_id, filter
(the sorted field names a ``*_where`` filter tests, else ``None``), fields (a tuple of names),
count. Tables whose name starts with ``_`` are not audited.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from storeserver.arguments import Args, check_keys, limit, offset
from storeserver.errors import BadRequest, StoreError
from storeserver.filters import fields_of, parse_where
from storeserver.records import META_FIELDS, format_timestamp

FIELDS = (
    "seq",
    "at",
    "user_id",
    "role",
    "request_id",
    "table",
    "op",
    "record_id",
    "filter",
    "fields",
    "count",
)
_LIST_ARGS = frozenset({"user_id", "table", "since", "until", "offset", "limit"})
_AT, _USER, _TABLE = 1, 2, 5
_ANY_LENGTH = 1 << 62  # ``in`` lists of a logged filter were checked when it ran
# Names kept per entry, and characters per name: a field name may be any length and a record
# may have thousands, and an entry outlives the data (QA: twenty 1 MB names made the default
# page too large to send, and held their megabytes after the table was dropped).
MAX_NAMES = 32
MAX_NAME_CHARS = 64
SHARED_NAME_SETS = 1024
"""Distinct ``fields`` tuples kept for entries to share: a table's inserts list the same
names each time (ten names: ~140 bytes an entry, soak QA measured ~650 bytes per entry)."""
Entry = tuple[Any, ...]
_intern = sys.intern


class AuditLog:
    def __init__(
        self, clock: Callable[[], float], max_entries: int = 100_000, max_age: float = 0
    ) -> None:
        self._clock = clock
        # Timestamps for entries that are not a record's write; the engine sets it to the
        # records' own generator, so ``at`` is strictly increasing along the log.
        self.stamp: Callable[[], str] = lambda: format_timestamp(int(clock() * 1_000_000))
        self.entries: deque[Entry] = deque(maxlen=max_entries)
        self.max_age = max_age
        self.seq = 0
        self.pending: list[Entry] = []
        # (user_id, role, request_id) of the running command, set by the engine.
        self.context: tuple[str | None, str | None, str | None] = (None, None, None)
        self._cutoff_at = 0.0  # clock second the cached cutoff string belongs to
        self._cutoff = ""
        self._name_sets: dict[Sequence[str], Sequence[str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(
        self,
        table: str,
        op: str,
        record_id: str | None,
        fields: Any,
        count: int,
        filter_fields: list[str] | None = None,
        at: str | None = None,
    ) -> None:
        """Note one mutation of the running command (``fields``: names, e.g. a record's keys;
        store-owned names among them are left out when listed; ``filter_fields``: the names
        a filter tests, ``filters.fields_of``)."""
        if table[0] == "_":
            return
        user, role, request = self.context
        names = self._shared(bounded(tuple(fields), META_FIELDS))
        if filter_fields is not None:
            filter_fields = [*bounded(filter_fields)]
        self.seq += 1
        self.pending.append(
            (
                self.seq,
                at or self.stamp(),
                user,
                role,
                request,
                table,
                op,
                record_id,
                filter_fields,
                names,
                count,
            )
        )

    def commit(self, journal: list[tuple[Any, ...]] | None) -> None:
        """The running command succeeded: keep its entries and journal them."""
        pending, self.pending = self.pending, []
        for entry in pending:
            self._append(entry)
            if journal is not None:
                journal.append(("audit", entry))

    def discard(self) -> None:
        """The running command failed: forget its entries (and their numbers)."""
        self.seq -= len(self.pending)
        self.pending = []

    def restore(self, entry: Any) -> None:
        """Replay a journaled entry (from the log or a snapshot)."""
        entry = tuple(entry)
        if len(entry) != len(FIELDS):
            return
        logged = _filter_fields(entry[8])
        user, role = entry[2], entry[3]
        entry = (
            *entry[:2],
            _intern(user) if type(user) is str else user,
            _intern(role) if type(role) is str else role,
            *entry[4:8],
            None if logged is None else [*bounded(logged)],
            self._shared(bounded(tuple(entry[9]), META_FIELDS)),
            entry[10],
        )
        if entry[0] > self.seq:
            self.seq = entry[0]
        self._append(entry)

    def _shared(self, names: Sequence[str]) -> Sequence[str]:
        """``names``, as the tuple an earlier entry holds when one does (up to
        ``SHARED_NAME_SETS`` distinct ones are kept for that, then the kept ones are let go)."""
        sets = self._name_sets
        shared = sets.get(names)
        if shared is not None:
            return shared
        if len(sets) >= SHARED_NAME_SETS:
            sets.clear()  # started afresh: the sets written now, not the first ever, are shared
        sets[names] = names
        return names

    def _append(self, entry: Entry) -> None:
        self.entries.append(entry)
        if self.max_age > 0:
            self._expire()

    def _expire(self) -> None:
        cutoff = self._age_cutoff()
        entries = self.entries
        while entries and entries[0][_AT] < cutoff:
            entries.popleft()

    def _age_cutoff(self) -> str:
        now = self._clock()
        if now - self._cutoff_at >= 1.0 or not self._cutoff:
            self._cutoff_at = now
            self._cutoff = format_timestamp(int((now - self.max_age) * 1_000_000))
        return self._cutoff

    def query(self, args: Args, max_limit: int) -> dict[str, Any]:
        """``audit_list``: entries matching the filters, newest first, paginated."""
        check_keys(args, _LIST_ARGS)
        user = _optional_str(args, "user_id")
        table = _optional_str(args, "table")
        since = _optional_str(args, "since")
        until = _optional_str(args, "until")
        start = offset(args)
        size = limit(args, 100, max_limit)
        if self.max_age > 0:
            self._expire()
        items = []
        total = 0
        for entry in reversed(self.entries):
            at = entry[_AT]
            if until is not None and at > until:
                continue
            if since is not None and at < since:
                break  # ``at`` increases along the log: every older entry is out too
            if (user is not None and entry[_USER] != user) or (
                table is not None and entry[_TABLE] != table
            ):
                continue
            if start <= total < start + size:
                items.append(_as_map(entry))
            total += 1
        return {"items": items, "total": total}

    def state(self) -> list[Entry]:
        return [*self.entries]


def bounded(names: Sequence[str], managed: frozenset[str] = frozenset()) -> Sequence[str]:
    """``names`` as they are when within the bounds (the usual case: one cheap check), else at
    most ``MAX_NAMES`` of them, the last ``"+N more"``, each cut to ``MAX_NAME_CHARS``
    characters (ending in "…"); ``managed`` names (a record's store-owned keys, never listed)
    are left out first. Bounded names are within the bounds: a replayed entry comes back the
    same."""
    if len(names) <= MAX_NAMES and max(map(len, names), default=0) <= MAX_NAME_CHARS:
        return names
    names = [name for name in names if name not in managed]
    shown = names if len(names) <= MAX_NAMES else names[: MAX_NAMES - 1]
    kept = [
        name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…" for name in shown
    ]
    if len(shown) < len(names):
        kept.append(f"+{len(names) - len(shown)} more")
    return tuple(kept)


def _as_map(entry: Entry) -> dict[str, Any]:
    out = dict(zip(FIELDS, entry, strict=True))
    out["fields"] = [f for f in entry[9] if f not in META_FIELDS]
    return out


def _filter_fields(logged: Any) -> list[str] | None:
    """An entry's filter as this version keeps it: a log written before it holds the whole
    ``where``, values too; only its field names are kept when it is read back."""
    if logged is None:
        return None
    if type(logged) in (list, tuple) and all(type(name) is str for name in logged):
        return [*logged]  # names (a leaf of a ``where`` is a list, never a string)
    try:
        return fields_of(parse_where(logged, frozenset(), True, _ANY_LENGTH))
    except StoreError:  # cannot happen for a filter the store once ran; keep no values
        return []


def _optional_str(args: Args, key: str) -> str | None:
    value = args.get(key)
    if value is not None and type(value) is not str:
        raise BadRequest(f"{key} must be a string", {"arg": key})
    return value


_ACTOR_KEYS = frozenset({"user_id", "role", "credential"})


def parse_actor(value: Any) -> tuple[str | None, str | None]:
    """The ``_actor`` argument: ``{"user_id": str|None, "role": str|None}``, and the
    ``credential`` the engine checks before a write (``KeyCommands.check_credential``)."""
    if value is None:
        return None, None
    if type(value) is not dict or not value.keys() <= _ACTOR_KEYS:
        raise BadRequest("_actor must be {user_id, role, credential?}", {"arg": "_actor"})
    user, role = value.get("user_id"), value.get("role")
    if (user is not None and type(user) is not str) or (role is not None and type(role) is not str):
        raise BadRequest("_actor.user_id and _actor.role are strings or null", {"arg": "_actor"})
    # Interned: the same few callers write again and again, and every audit entry of theirs
    # holds these (one string each instead of ~85 bytes per entry for a UUID, soak QA).
    return (None if user is None else _intern(user)), (None if role is None else _intern(role))
