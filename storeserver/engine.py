"""The store engine: every command of docs/STORE.md (but ``ping``) on in-memory state.

Plain synchronous code, no I/O (``stats`` reads ``/proc/self/statm``). The server calls
``execute(command, args)`` for one command at a time; each runs to completion, so each is
atomic. Expected failures raise ``StoreError`` subclasses; anything else is a bug. The
commands themselves live in ``reads``, ``writes``, ``bulk``, ``definitions`` (tables, indexes,
schemas) and ``keys`` (``kv_*``, ``rate_hit``); the engine dispatches them and runs batches,
scans and the journal around them.

Design notes:

- Records are plain dicts in ``Table.rows`` (insertion order = creation order) and are never
  mutated once stored: a write builds a new dict and swaps it in. Results may therefore be the
  stored dicts themselves; callers must treat them as read-only.
- Single commands check everything before changing anything. ``batch`` runs its operations
  with an undo log and rolls everything back on the first failure.
- Every reply fits in a frame once a write is done: no record is kept over
  ``max_record_bytes`` (half a frame, ``records.max_record_bytes``), a scan page stops at a
  quarter frame plus one record, and a batch whose results would not fit is rolled back
  (``LIMIT_EXCEEDED``). Only reads can be answered ``LIMIT_EXCEEDED`` by the server's reply
  check, which never follows a write that was applied.
- Every change is appended to a journal list drained by ``drain_changes`` (for the append-only
  log); ``apply_change`` replays an entry (``journal.py``). A failed command leaves nothing in
  it, nor in the audit log (``audit.py``: entries are committed when the command succeeds).
- Commands that would read a big table at once (``create_index``, ``set_schema``, reads and
  ``*_where`` writes over many rows) return a ``builds.Job`` instead of a result; the server
  calls ``advance`` once per loop turn until it is done (``run_job`` does it all at once, for
  callers without a loop).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from storeserver.arguments import Args, check_keys, limit, optional_bool, required_str
from storeserver.audit import AuditLog, parse_actor
from storeserver.batchrefs import REF_ARGS, encoded_floor, resolve_refs
from storeserver.builds import ChunkedRead, IndexBuild, Job, SchemaCheck
from storeserver.bulk import BulkWrite, BulkWriter
from storeserver.catalog import Catalog
from storeserver.definitions import TableDefinitions
from storeserver.errors import BadRequest, InternalError, LimitExceeded, StoreError, UnknownCommand
from storeserver.filters import parse_where
from storeserver.journal import JournalReplay
from storeserver.keys import KeyCommands
from storeserver.keyvalue import KeyValueStore
from storeserver.protocol import MAX_FRAME_SIZE, pack_value
from storeserver.ratelimit import FixedWindowCounters
from storeserver.reads import DEFAULT_LIMIT, RecordReader
from storeserver.records import REPLY_ROOM, max_record_bytes, one_budget
from storeserver.scans import MAX_SCAN_IDS, ScanCursors
from storeserver.writes import RecordWriter, Undo

KeyUndo = list[tuple[str, tuple[Any, float | None] | None]]
"""A batch's ``kv_set`` writes, as (key, its entry before): put back if the batch fails."""

MAX_PENDING_CHANGES = 100_000
"""Undrained journal entries tolerated before journaling stops (see ``drain_changes``)."""

_SCAN_ARGS = frozenset({"table", "cursor", "limit", "include_hidden", "fields", "where"})
_SCAN_CLOSE_ARGS = frozenset({"cursor"})
STORE_FIELDS_ROOM = 512
"""Bytes the store may add to a record a client sent (id, timestamps, version), at most."""
RESULT_ROOM = 256
"""Bytes of a batch result beyond the record the op sent (the store's fields; a delete's)."""


class Engine:
    WRITE_COMMANDS: frozenset[str] = frozenset(
        {
            "create_table",
            "drop_table",
            "create_index",
            "drop_index",
            "set_schema",
            "insert",
            "replace",
            "patch",
            "delete",
            "batch",
            "update_where",
            "delete_where",
            "kv_set",
            "kv_delete",
        }
    )
    """Commands that add or change data (journaled, audited)."""
    GROWING_COMMANDS: frozenset[str] = WRITE_COMMANDS - {
        "delete",
        "delete_where",
        "drop_table",
        "drop_index",
        "kv_set",
        "kv_delete",
    }
    """The writes the server refuses over its memory limit (Redis's ``noeviction``).

    Not refused: deletes and index and table drops, which free memory (how an operator makes
    room), and ``kv_set``: the keys hold token revocations, refresh markers and high-water
    marks, and a logout or a token refresh must still work when the store is full. That is
    safe because a key's value is small (``keys.MAX_KV_VALUE_BYTES``, ``MAX_KV_VALUES``: at
    most ~200 KB of memory a call, the API's take under 100 bytes) and the API sets them at
    the pace of logins and refreshes, which it rate-limits. Their memory still counts: the
    gauge reads the process's RSS, so keys written over the limit keep the other writes
    refused until room is made. ``rate_hit`` is not a write at all: rate limiting keeps
    working, its counters small and short-lived. Also taken: a ``patch`` or ``update_where``
    of an internal table's records (``server._bookkeeping``: the API's job states).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_tables: int = 1000,
        max_limit: int = 1000,
        max_batch: int = 1000,
        max_in: int = 1000,
        journal: bool = True,
        max_bulk_rows: int = 10_000,
        audit_max_entries: int = 100_000,
        audit_max_age: float = 0.0,
        scan_idle: float = 60.0,
        max_frame_bytes: int = MAX_FRAME_SIZE,
        max_scan_ids: int = MAX_SCAN_IDS,
    ) -> None:
        """``journal=False`` stops recording changes (when nothing calls ``drain_changes``).

        ``max_bulk_rows``: default and ceiling of ``update_where``/``delete_where``'s
        ``max_rows``; ``audit_max_*``: the audit log's bounds (age in seconds, 0 = none);
        ``scan_idle``: seconds a ``scan`` cursor may go unread (``STORE_SCAN_IDLE``);
        ``max_frame_bytes``: the server's frame limit, which every reply must fit;
        ``max_scan_ids``: ids the open ``scan`` cursors hold between them (8 bytes each).
        """
        self._clock = clock
        self._started = clock()
        self.max_batch = max_batch
        self.max_limit = max_limit
        self._catalog = Catalog(max_tables)
        self.audit = AuditLog(clock, audit_max_entries, audit_max_age)
        self.max_record_bytes = max_record_bytes(max_frame_bytes)
        self.max_reply_bytes = max_frame_bytes - REPLY_ROOM
        # A request up to this size cannot hold a record over the limit: re-encoded, a value
        # grows at most 9/5 (a float32 the client sent is stored as a float64), and the store
        # adds its fields. So only bigger ones pay for measuring the records sent whole.
        self._trusted_request = (self.max_record_bytes - STORE_FIELDS_ROOM) * 5 // 9
        self._request_bytes: int | None = None
        self._writer = RecordWriter(
            self._catalog, clock, journal, self.audit, self.max_record_bytes
        )
        self.audit.stamp = self._writer.timestamps
        self._bulk = BulkWriter(self._writer, max_bulk_rows, max_in)
        self._reader = RecordReader(self._catalog, max_limit, max_in)
        self._scans = ScanCursors(
            clock, idle=scan_idle, max_bytes=max_frame_bytes // 4, max_ids=max_scan_ids
        )
        self._kv = KeyValueStore(clock)
        self._rates = FixedWindowCounters(clock)
        self._definitions = TableDefinitions(self._catalog, self._writer, self.audit, self._scans)
        self._keys = KeyCommands(self._kv, self._rates, self._writer, clock, max_in)
        self._replay = JournalReplay(self._catalog, self._writer, self._kv, self.audit, clock)
        w, r, d, k = self._writer, self._reader, self._definitions, self._keys
        self._handlers: dict[str, Callable[[Args], Any]] = {
            "create_table": d.create_table,
            "drop_table": d.drop_table,
            "create_index": d.create_index,
            "drop_index": d.drop_index,
            "list_indexes": d.list_indexes,
            "set_schema": d.set_schema,
            "list_tables": d.list_tables,
            "insert": w.insert,
            "get": r.get,
            "get_many": r.get_many,
            "replace": w.replace,
            "patch": w.patch,
            "delete": w.delete,
            "find": r.find,
            "count": r.count,
            "join": r.join,
            "aggregate": r.aggregate,
            "describe": r.describe,
            "batch": self._batch,
            "update_where": self._bulk.update_where,
            "delete_where": self._bulk.delete_where,
            "audit_list": self._audit_list,
            "scan": self._scan,
            "scan_close": self._scan_close,
            "stats": self._stats,
            "kv_set": k.kv_set,
            "kv_get": k.kv_get,
            "kv_get_many": k.kv_get_many,
            "kv_delete": k.kv_delete,
            "rate_hit": k.rate_hit,
            "rate_refund": k.rate_refund,
        }
        self._batch_ops: dict[str, Callable[[Args, Undo], Any]] = {
            "insert": w.insert,
            "replace": w.replace,
            "patch": w.patch,
            "delete": w.delete,
        }
        self._ops = dict.fromkeys(self._handlers, 0)
        self._journal_overflowed = False

    COMMANDS: frozenset[str] = frozenset(
        {
            "create_table",
            "drop_table",
            "create_index",
            "drop_index",
            "list_indexes",
            "set_schema",
            "list_tables",
            "insert",
            "get",
            "get_many",
            "replace",
            "patch",
            "delete",
            "find",
            "count",
            "join",
            "aggregate",
            "describe",
            "batch",
            "update_where",
            "delete_where",
            "audit_list",
            "scan",
            "scan_close",
            "stats",
            "kv_set",
            "kv_get",
            "kv_get_many",
            "kv_delete",
            "rate_hit",
            "rate_refund",
        }
    )

    # -- the server's interface -------------------------------------------------------------

    def execute(
        self,
        command: str,
        args: dict[str, Any],
        *,
        actor: Any = None,
        request_id: str | None = None,
        request_bytes: int | None = None,
    ) -> Any:
        """Run one command atomically; ``StoreError`` subclasses for expected failures.

        ``actor`` (``{"user_id", "role"}``) and ``request_id`` are named in audit entries.
        ``request_bytes``: the size of the frame the request came in (``None``: unknown, so
        every record written is measured against the record limit).
        May return a ``builds.Job`` (see the module doc).
        """
        handler = self._handlers.get(command) if type(command) is str else None
        if handler is None:
            raise UnknownCommand(f"unknown command {command!r}", {"command": repr(command)[:80]})
        if type(args) is not dict:
            raise BadRequest("arguments must be a map", {"arg": None})
        self._ops[command] += 1
        self._request_bytes = request_bytes
        self._writer.measure_sent = request_bytes is None or request_bytes > self._trusted_request
        audit = self.audit
        if actor is None and request_id is None:
            audit.context = _NO_CONTEXT
        else:
            user, role = parse_actor(actor)
            if actor is not None and "credential" in actor:  # a dict: parse_actor said so
                self._keys.check_credential(actor["credential"])
            audit.context = (user, role, request_id if type(request_id) is str else None)
        changes = self._writer.changes
        mark = len(changes)
        if mark > MAX_PENDING_CHANGES:
            self._journal_overflow()
            changes = self._writer.changes
            mark = 0
        try:
            result = handler(args)
        except BaseException:
            del changes[mark:]
            if audit.pending:
                audit.discard()
            raise
        if audit.pending:
            audit.commit(changes if self._writer.journal else None)
        return result

    def check_credential(self, credential: Any) -> None:
        """``CredentialRevoked`` if the caller a long write runs for has been logged out or
        had its sessions ended since it began (checked before each of its steps)."""
        self._keys.check_credential(credential)

    def uncount(self, command: str) -> None:
        """Take back one ``ops`` count: the server set the command aside, to run it again."""
        self._ops[command] -= 1

    def count(self, command: str) -> None:
        """Count one ``command`` the server answered without ``execute`` (``replycache``)."""
        self._ops[command] += 1

    def stored_get(self, args: Args) -> tuple[dict[str, Any], frozenset[str]] | None:
        """What a plain ``get`` (``table`` and ``id`` only) of an existing record answers
        from: the stored record and its table's hidden fields (``replycache`` keeps replies
        by them). ``None`` for any other ``get``: ``execute`` answers or refuses it."""
        if len(args) != 2:
            return None
        name = args.get("table")
        rid = args.get("id")
        if type(name) is not str or type(rid) is not str:
            return None
        table = self._catalog.tables.get(name)
        if table is None:
            return None
        record = table.rows.get(rid)
        return None if record is None else (record, table.hidden)

    def spill_reads(self) -> None:
        """Let a read over few rows (or a ``set_schema``) that turns out slow go on as a job
        (``builds.spill``): for a server, whose scheduler steps jobs; a direct caller keeps
        getting answers."""
        self._reader.spill = True
        self._definitions.spill = True

    def advance(self, job: Job) -> tuple[bool, Any]:
        """Run one step of a long command: ``(False, None)``, or ``(True, its result)``."""
        audit = self.audit
        audit.context = job.context
        changes = self._writer.changes
        mark = len(changes)
        try:
            if not job.step():
                return False, None
            result = self._finish(job)
        except BaseException:
            job.abort()
            del changes[mark:]
            audit.discard()
            raise
        if audit.pending:
            audit.commit(changes if self._writer.journal else None)
        return True, result

    def run_job(self, result: Any) -> Any:
        """``result`` itself, or, for a ``Job``, its result once every step has run."""
        while isinstance(result, Job):
            done, value = self.advance(result)
            if done:
                return value
        return result

    def drain_changes(self) -> list[tuple[Any, ...]]:
        """The journal entries of the writes since the previous call, oldest first.

        Raises ``InternalError`` if changes were dropped because nobody drained them.
        """
        if self._journal_overflowed:
            raise InternalError(
                f"over {MAX_PENDING_CHANGES} changes were left undrained; journaling stopped",
                {"reason": "journal_overflow"},
            )
        changes = self._writer.changes
        self._writer.changes = []
        return changes

    def _journal_overflow(self) -> None:
        """Nobody drains the journal (no persistence): stop recording instead of leaking."""
        self._writer.journal = False
        self._writer.changes = []
        self._journal_overflowed = True

    def apply_change(self, change: tuple[Any, ...]) -> None:
        """Re-apply one journal entry (replay: ``journal.JournalReplay.apply_change``)."""
        self._replay.apply_change(change)

    def iter_state(self) -> Iterator[tuple[Any, ...]]:
        """The whole state as journal entries, for snapshots (``journal.JournalReplay``)."""
        return self._replay.iter_state()

    def stats(self) -> dict[str, Any]:
        tables = {
            name: {
                "rows": len(t.rows),
                "indexes": t.index_specs(),
                "foreign_keys": t.spec()["foreign_keys"],
                "hidden": sorted(t.hidden),
            }
            for name, t in self._catalog.tables.items()
        }
        return {
            "tables": tables,
            "memory_bytes": self.memory_bytes(),
            "ops": dict(self._ops),
            "uptime_s": self._clock() - self._started,
            "kv_keys": len(self._kv),
            "rate_keys": len(self._rates),
            "cursors": len(self._scans),
            "journal": "overflowed"
            if self._journal_overflowed
            else ("on" if self._writer.journal else "off"),
            "pending_changes": len(self._writer.changes),
            "audit": {
                "entries": len(self.audit),
                "max_entries": self.audit.entries.maxlen,
                "max_age_s": self.audit.max_age,
            },
        }

    @staticmethod
    def memory_bytes() -> int:
        """Resident set size of this process (peak RSS where /proc is missing)."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # -- commands ---------------------------------------------------------------------------

    def _finish(self, job: Job) -> Any:
        if isinstance(job, ChunkedRead):
            return job.result
        if isinstance(job, BulkWrite):
            return job.finish()
        assert isinstance(job, IndexBuild | SchemaCheck)
        return self._definitions.finish(job)

    def _audit_list(self, args: Args) -> dict[str, Any]:
        return self.audit.query(args, self.max_limit)

    def _batch(self, args: Args) -> dict[str, list[Any]]:
        check_keys(args, frozenset({"ops", "refs"}))
        ops = args.get("ops")
        if type(ops) is not list:
            raise BadRequest("ops must be a list", {"arg": "ops"})
        # refs=false: the ops carry data written as is ({"$ref": ...} maps included).
        refs = args.get("refs", True)
        if type(refs) is not bool:
            raise BadRequest("refs must be a boolean", {"arg": "refs"})
        if len(ops) > self.max_batch:
            raise LimitExceeded(
                f"at most {self.max_batch} operations", {"arg": "ops", "max": self.max_batch}
            )
        measure_results = self._request_bytes is None
        with one_budget():  # the ops' values count together: see records.one_budget
            return self._run_batch(ops, refs, measure_results)

    def _run_batch(self, ops: list[Any], refs: bool, measure_results: bool) -> dict[str, Any]:
        keys: KeyUndo = []
        try:
            return self._apply_batch(ops, refs, measure_results, keys)
        except BaseException:
            for key, entry in reversed(keys):  # the records' writes are undone already
                self._kv.restore(key, entry)
            raise

    def _batch_kv_set(self, args: Args, undo: KeyUndo) -> bool:
        """``kv_set`` as a batch op: a record write and a key go together (the API ends a
        user's sessions, a ``kv_set stamp`` mark, in the batch that changes their password)."""
        key = args.get("key")
        before = self._kv.entry(key) if type(key) is str else None
        written = self._keys.kv_set(args)  # refuses a key that is not a string
        if written:
            undo.append((str(key), before))
        return written

    def _apply_batch(
        self, ops: list[Any], refs: bool, measure_results: bool, keys: KeyUndo
    ) -> dict[str, Any]:
        undo: Undo = []
        results: list[Any] = []
        unchanged: list[int] = []
        merged: list[int] = []  # ops whose result is a whole record, whatever they sent
        # A floor of the reply's size, counted as the ops whose results are not bounded by
        # the request run (values copied by reference, whole records a merge returns): such
        # a batch is refused once that passes a frame, not after the last op and one encoding
        # of it all (QA: 100 ops copying a 200 kB string 40 times each held the store 1.1 s
        # and left it 800 MB bigger before the refusal; 1,000 records, 2.8 s and 1 GB).
        floor = 0
        for index, op in enumerate(ops):
            name = op.get("op") if type(op) is dict else None
            try:
                handler = self._batch_ops.get(name) if type(name) is str else None
                if handler is None and name != "kv_set":
                    raise BadRequest(
                        "each op is {op: insert|replace|patch|delete|kv_set, ...}",
                        {"arg": "ops"},
                    )
                op_args = {k: v for k, v in op.items() if k != "op"}
                for key in REF_ARGS:
                    if refs and key in op_args:
                        sent = op_args[key]
                        op_args[key] = resolve_refs(sent, results)
                        if op_args[key] is not sent:
                            # Values copied from earlier results: a small request can
                            # make big records (and results) this way.
                            self._writer.measure_sent = measure_results = True
                # A merge returns the whole record, whatever the size of the request: its
                # result is measured (not the whole reply: an import's batch of 500 records
                # sent whole carries one patch of its job's record).
                if name == "patch" or "upsert" in op_args:
                    merged.append(index)
                if handler is None:  # kv_set: a key, not a record; its own undo, never "unchanged"
                    results.append(self._batch_kv_set(op_args, keys))
                    continue
                written = len(undo)
                results.append(handler(op_args, undo))
                if len(undo) == written:  # every write notes its undo: this one wrote nothing
                    unchanged.append(index)
                if measure_results or merged[-1:] == [index]:
                    floor += encoded_floor(results[-1])
                    if floor > self.max_reply_bytes:
                        raise LimitExceeded(
                            f"the batch's results would take more than {self.max_reply_bytes}"
                            " bytes, more than a reply can hold: send fewer operations",
                            {"arg": "ops", "max": self.max_reply_bytes},
                        )
            except StoreError as exc:
                self._writer.rollback(undo)
                exc.details = {
                    **exc.details,
                    "index": index,
                    "op": name if type(name) is str else None,
                }
                raise
            except BaseException:
                self._writer.rollback(undo)
                raise
        reply = {"results": results}
        if unchanged:  # a patch, replace or upsert of the values stored already
            reply["unchanged"] = unchanged
        self._check_reply(reply, len(ops), measure_results, undo, merged)
        return reply

    def _check_reply(
        self, reply: Any, ops: int, measure: bool, undo: Undo, merged: Sequence[int] = ()
    ) -> None:
        """Roll back a batch whose reply would not fit in a frame (the server could only
        report the writes as failed once applied). Results of records sent whole take at most
        9/5 of the request (see ``_trusted_request``): only a big request, or results holding
        records it did not carry, are measured: the ``merged`` ones (whole records returned
        by a patch or an upsert) one by one, and the whole reply only when the bound with
        them does not fit."""
        if not measure:
            sent = self._request_bytes or 0
            bound = sent * 9 // 5 + ops * RESULT_ROOM
            if merged and bound <= self.max_reply_bytes:
                results = reply["results"]
                bound += sum(len(pack_value(results[i])) for i in merged)
            if bound <= self.max_reply_bytes:
                return
        size = len(pack_value(reply))
        if size > self.max_reply_bytes:
            self._writer.rollback(undo)
            raise LimitExceeded(
                f"the batch's results would take {size} bytes, more than a reply can hold"
                f" ({self.max_reply_bytes}): send fewer operations",
                {"arg": "ops", "max": self.max_reply_bytes, "size": size},
            )

    def expire_idle(self) -> None:
        """Free what outlived its idle time (scan cursors); the server calls it on a timer."""
        self._scans.expire()

    def _scan(self, args: Args) -> dict[str, Any]:
        check_keys(args, _SCAN_ARGS)
        size = limit(args, DEFAULT_LIMIT, self.max_limit)
        cursor = args.get("cursor")
        if cursor is not None:
            if args.keys() & {"table", "include_hidden", "fields", "where"}:
                raise BadRequest("give either table (to open) or cursor", {"arg": "cursor"})
            return self._scans.read(required_str(args, "cursor"), size)
        table = self._catalog.get(args)
        include_hidden = optional_bool(args, "include_hidden")
        where = parse_where(args.get("where"), table.hidden, include_hidden, self._reader.max_in)
        since = self._writer.timestamps.latest()
        cursor_id = self._scans.open(table, include_hidden, since, args.get("fields"), where)
        return self._scans.read(cursor_id, size)

    def _scan_close(self, args: Args) -> bool:
        """Free a cursor before its end; False if it was gone already (so closing twice is fine)."""
        check_keys(args, _SCAN_CLOSE_ARGS)
        return self._scans.close(required_str(args, "cursor"))

    def _stats(self, args: Args) -> dict[str, Any]:
        check_keys(args, frozenset())
        return self.stats()


_NO_CONTEXT: tuple[None, None, None] = (None, None, None)
