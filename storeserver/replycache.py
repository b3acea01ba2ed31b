"""Encoded ``get`` replies, kept per stored record and reused while the record is unchanged.

Encoding a record is the largest part of a ``get`` the store's own code does: an order record
takes ~1.4 µs in msgpack (its Decimal goes through a Python callback), of ~7 µs of user CPU
per ``get`` over the socket. Reads repeat (an API worker reads the same user on each of its
requests), so the store keeps the msgpack bytes of what a plain ``get`` answered and sends
them again until the record changes: under callgrind, 46k instructions per ``get`` became 33k.

Correct without any invalidation: stored record dicts are never changed in place (every
write stores a new dict, see ``records``), so an entry, keyed by the record object's ``id()``
and holding that object, matches only while the table still holds that very object. It also
holds the table's hidden-field set, which ``create_table`` replaces (never changes) when it
adds hidden fields: a reply encoded before that never shows a newly hidden field.

Bounded: past ``budget`` bytes (the encoded replies and a fixed estimate per entry) the
cache is emptied and fills again with what is read next. Entries of records that were
changed or deleted keep the old record object alive until then. The memory gauge empties it
too when the store reaches its memory limit, before it trims the heap (``server``).
"""

from __future__ import annotations

from typing import Any

from .protocol import pack_value

StoredGet = tuple[dict[str, Any], frozenset[str]]
"""A stored record and its table's hidden fields: what a plain ``get`` answers from."""

ENTRY_BYTES = 200
"""Memory an entry takes besides the reply's bytes: its tuple (56), the bytes object's
header (33), the int key (32) and its slot in the dict (~50 at the usual load), rounded up."""


class ReplyCache:
    __slots__ = ("budget", "entries", "held", "hits", "misses")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        """Bytes the entries may take (estimated); 0 turns the cache off."""
        self.entries: dict[int, tuple[dict[str, Any], frozenset[str], bytes]] = {}
        self.held = 0
        self.hits = 0
        self.misses = 0

    def find(self, stored: StoredGet) -> bytes | None:
        """The encoded reply for ``stored`` (a record and its table's hidden fields, as
        ``Engine.stored_get`` gives them), if one is kept."""
        record, hidden = stored
        entry = self.entries.get(id(record))
        if entry is not None and entry[0] is record and entry[1] is hidden:
            self.hits += 1
            return entry[2]
        self.misses += 1
        return None

    def keep(self, stored: StoredGet, reply: Any) -> bytes:
        """``pack_value(reply)``, kept for ``stored`` (``reply`` is what ``get`` answered
        for it)."""
        body = pack_value(reply)
        size = len(body) + ENTRY_BYTES
        if size > self.budget:
            return body  # never kept: emptying the cache for it would only lose the rest
        if self.held + size > self.budget:
            self.clear()
        record, hidden = stored
        old = self.entries.get(id(record))
        if old is not None:  # the same record, another hidden set: replaced
            self.held -= len(old[2]) + ENTRY_BYTES
        self.entries[id(record)] = (record, hidden, body)
        self.held += size
        return body

    def clear(self) -> None:
        self.entries = {}
        self.held = 0

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self.entries),
            "bytes": self.held,
            "budget": self.budget,
            "hits": self.hits,
            "misses": self.misses,
        }
