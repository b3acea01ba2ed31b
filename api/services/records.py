"""Generic tables. ``users`` and ``orders`` are routed to their own services, so a write through
``/data/users`` is validated and hashed exactly like one through ``/users``.

One record at a time (create, upsert, read, replace, update, delete) and bulk inserts. The
typed tables are in ``api.services.typed_tables``, the value checks in
``api.services.record_values`` and lists, queries and aggregations in
``api.services.record_queries``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from api.conditions import WriteConditions
from api.errors import ApiError
from api.services import users
from api.services.batches import check_refs, run_batch_noting_unchanged
from api.services.record_values import DATA, Record, check_generic, path_names_it
from api.services.typed_tables import TYPED, IfMatch, to_public
from api.services.versions import (
    WRITE_ATTEMPTS,
    accepted_versions,
    changed_while_written,
    expected_version,
    precondition_failed,
    with_version,
)
from api.store import Store
from storeserver import records as store_records
from storeserver.errors import Conflict, NotFound, StoreError


async def create_record(store: Store, table: str, data: Record) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.create(store, data)
    check_generic(data)
    return await store.call("insert", {"table": table, "record": data})


async def conditional_upsert(
    store: Store, table: str, data: Record, conditions: WriteConditions, match_any: bool
) -> tuple[Record, bool]:
    """An upsert sent with If-Match or If-None-Match, which RFC 9110 §13.1 has evaluated before
    it acts (QA: both were ignored, so "create only if absent" merged into the record there):
    If-None-Match ``*`` only creates; If-Match (versions, or ``*``: any, ``match_any``) only
    merges, into the record at one of them; If-None-Match versions merge unless the record is
    at one. A failed condition is 412 and nothing is written. Each decision goes to the store
    with its write: an insert refuses an id that exists, a merge carries the version decided
    on (``accepted_versions``). The record, and whether it was created."""
    refuse_typed_upsert(table)
    check_generic(data)
    must_exist = match_any or conditions.if_match is not None
    rid = data.get("id")
    if conditions.none_match_any and must_exist:
        raise precondition_failed(_BOTH)
    if conditions.none_match_any or type(rid) is not str:
        if must_exist:
            raise precondition_failed(_NOTHING_TO_MATCH)
        created = await _create(store, table, data)
        if created is None:
            raise precondition_failed("If-None-Match: * but a record with this id exists")
        return created, True
    changes = path_names_it(data)
    for _ in range(WRITE_ATTEMPTS):
        try:
            accepted = await accepted_versions(store, table, rid, conditions)
            return await update_record(store, table, rid, changes, accepted), False
        except NotFound:
            if must_exist:
                raise precondition_failed(_NOTHING_TO_MATCH) from None
        created = await _create(store, table, data)
        if created is not None:
            return created, True
        # Created by another client since the merge found nothing: the conditions are decided
        # again over that record (QA: this said "a record with this id exists" to a client
        # whose If-None-Match named another version, which that record satisfied).
    raise changed_while_written()


_NOTHING_TO_MATCH = "If-Match: there is no record with this id to merge into"
_BOTH = (
    "If-Match and If-None-Match: * cannot both hold: one needs the record to exist, the other"
    " needs it absent"
)


async def _create(store: Store, table: str, data: Record) -> Record | None:
    """The record an upsert creates, as an unconditional one would (QA: sent with
    If-None-Match it kept its nulls, which its repeat then merged away); ``None`` if one with
    its id exists (nothing written)."""
    try:
        # Merged onto an empty record (RFC 7396: nulls left out, in maps at any depth), as
        # the store's own upsert creates one (``writes.insert``).
        return await create_record(store, table, store_records.apply_patch({}, data))
    except Conflict as exc:
        if exc.details.get("reason") != "duplicate_id":
            raise
        return None


@dataclass(frozen=True)
class Written:
    """The records a bulk insert stored, in order, and how many it created or merged into
    (an upsert of values stored already is neither)."""

    records: list[Record]
    inserted: int
    updated: int


async def upsert_record(store: Store, table: str, data: Record) -> tuple[Record, bool]:
    """Insert, or merge into the record with the same ``id``; and whether it was created.

    A batch of one: only a batch's reply names an upsert that changed nothing, whose record
    may look just created (``updated_at`` still equal to ``created_at``)."""
    refuse_typed_upsert(table)
    check_generic(data)
    op = {"op": "insert", "table": table, "record": data, "upsert": True}
    try:
        reply = await store.call("batch", {"ops": [op], "refs": False})
    except StoreError as exc:  # the error of the single insert it is: no batch index or op
        exc.details = {k: v for k, v in exc.details.items() if k not in ("index", "op")}
        raise
    record: Record = reply["results"][0]
    return record, not reply.get("unchanged") and created_now(record)


def created_now(record: Record) -> bool:
    """Whether an upsert that wrote ``record`` created it: a merge is stamped after the
    creation. (Not ``version == 1``: a record created under a deleted id starts above it.)"""
    return bool(record.get("created_at") == record.get("updated_at"))


async def create_records(
    store: Store, table: str, items: list[Record], upsert: bool, refs: bool = False
) -> Written:
    """Many records in one atomic store batch; with ``upsert``, existing ids are merged into.

    With ``refs``, ``{"$ref": "<i>.<path>"}`` in a record is a value of record i of the same
    list (resolved by the store). Opt-in: otherwise such a map is data, written as sent, as by
    every other write of a record (a dump reloads unchanged, a JSON Schema's ``$ref`` is kept).
    """
    typed = TYPED.get(table)
    if upsert:
        refuse_typed_upsert(table)
    if typed:
        users.check_hash_budget(len(items) if table == users.TABLE else 0)
        builds: list[Coroutine[Any, Any, Record]] = []
        try:
            for index, item in enumerate(items):
                builds.append(typed.new_record(item, (*DATA, index)))  # validates at once
        except Exception:
            for build in builds:  # a record before the invalid one: its hashing never runs
                build.close()
            raise
        stored = list(await asyncio.gather(*builds))
    else:
        for index, item in enumerate(items):
            check_generic(item, (*DATA, index), allow_refs=refs)
            if refs:
                check_refs(item, index, (*DATA, index))  # record i may use an earlier one's values
        stored = items
    extra = {"upsert": True} if upsert else {}
    ops = [{"op": "insert", "table": table, "record": record, **extra} for record in stored]
    results, unchanged = await run_batch_noting_unchanged(store, ops, "record", refs=refs)
    written = [i for i in range(len(results)) if i not in unchanged]
    inserted = sum(1 for i in written if created_now(results[i]))
    public = [to_public(table, record) for record in results]
    return Written(public, inserted, len(written) - inserted)


def refuse_typed_upsert(table: str) -> None:
    if table in TYPED:
        raise ApiError(
            400,
            "BAD_REQUEST",
            f"upsert is for generic tables; {table} ids are assigned by the service",
            [{"field": "query.upsert", "message": f"not supported on {table}"}],
        )


async def read_record(store: Store, table: str, record_id: str) -> Record:
    return to_public(table, await store.call("get", {"table": table, "id": record_id}))


async def replace_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.replace(store, record_id, data, if_match)
    data = path_names_it(data)
    check_generic(data)
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "record": data}
    return await store.call("replace", with_version(args, version))


async def update_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.update(store, record_id, data, if_match)
    data = path_names_it(data)
    check_generic(data)
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "changes": data}
    return await store.call("patch", with_version(args, version))


async def delete_record(
    store: Store, table: str, record_id: str, if_match: IfMatch, cascade: bool
) -> None:
    if table == users.TABLE:
        await users.delete_user(store, record_id, if_match, cascade)  # ends their sessions
        return
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "cascade": cascade}
    await store.call("delete", with_version(args, version))
