"""If-Match / If-None-Match → the store's ``expected_version``, so the check and the write are
one command; and ``RecordWrite``, a write that also holds only while the record is still the
caller's (an order an admin gives to someone else in between is not written)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from api.conditions import WriteConditions
from api.errors import ApiError
from api.etags import record_etag
from api.store import Store
from storeserver.errors import NotFound, VersionMismatch

T = TypeVar("T")
# Tries of a write without preconditions whose record another write changed since it was read
# (each on a new read of the record, still the caller's); past them, 503 CHANGED_WHILE_WRITTEN.
WRITE_ATTEMPTS = 5


def precondition_failed(
    message: str = "If-Match does not match the current version",
    headers: dict[str, str] | None = None,
) -> ApiError:
    return ApiError(412, "PRECONDITION_FAILED", message, headers=headers)


def changed_while_written() -> ApiError:
    """503: ``WRITE_ATTEMPTS`` writes in a row met another client's change."""
    return ApiError(
        503,
        "CHANGED_WHILE_WRITTEN",
        "The record kept changing while it was written; retry shortly",
        headers={"Retry-After": "1"},
    )


def not_found(table: str, record_id: str) -> NotFound:
    """Exactly the store's 404 for a missing record, so "not yours" leaks no existence."""
    return NotFound(f"no record {record_id!r} in {table}", {"table": table, "id": record_id})


def check_preconditions(conditions: WriteConditions, version: int) -> None:
    """412 unless a write at ``version`` meets If-Match and If-None-Match (weak comparison;
    If-None-Match ``*``: any version, the record exists)."""
    if conditions.if_match is not None and version not in conditions.if_match:
        raise precondition_failed()
    refused = conditions.if_none_match or frozenset()
    if conditions.none_match_any or version in refused:
        etag = record_etag(version)
        message = f"If-None-Match matches the current version ({etag}): nothing written"
        raise precondition_failed(message, {"ETag": etag})


async def accepted_versions(
    store: Store, table: str, record_id: str, conditions: WriteConditions
) -> frozenset[int] | None:
    """The If-Match the write goes on with (``expected_version`` below takes it).

    Without If-None-Match, If-Match's versions as they are. With it, the version is read:
    412 if If-Match does not name it or If-None-Match does (weak comparison; ``*``: any, the
    record exists), else that one version, so the write happens only at the version the
    decision was made on. A write in between makes the store refuse it: 412, as a stale
    If-Match (nothing is written; the client reads again and decides again). A record that
    does not exist is the 404 the write would answer (no write here creates a record).
    """
    if not conditions.refuses_some:
        return conditions.if_match
    # Read even when If-Match names no version: a missing record is its 404 (RFC 9110
    # §13.2.1: preconditions give way to an answer that would not be 2xx).
    current = await store.call("get", {"table": table, "id": record_id})
    version = int(current["version"])
    check_preconditions(conditions, version)
    return frozenset({version})


@dataclass(frozen=True)
class OwnerCheck:
    """A caller who is not an admin found to own a record: ``owner`` (their id) was its owner
    field when it was read at ``version``."""

    owner: str
    version: int


@dataclass(frozen=True)
class RecordWrite:
    """One write to one record: the client's preconditions and, for a caller who is not an
    admin, the ownership check that authorized it (``owned``; its field: ``owner_field``)."""

    store: Store
    table: str
    record_id: str
    conditions: WriteConditions
    owned: OwnerCheck | None = None
    owner_field: str = "user_id"

    async def run(self, write: Callable[[frozenset[int] | None], Awaitable[T]]) -> T:
        """``write(if_match)``: the write, made at the versions it is given.

        Without an ownership check (an admin), as ``accepted_versions`` decides. With one, the
        write is made at the version ownership was checked at, so that a change of owner in
        between makes the store refuse it; If-Match and If-None-Match are decided on that
        version too. Refused, the record is read again: no longer the caller's, 404 (as if it
        never was); still theirs, the client's preconditions give the store's 412 as usual,
        and a write without any is made again at the new version.
        """
        owned = self.owned
        if owned is None:
            conditions = self.conditions
            return await write(
                await accepted_versions(self.store, self.table, self.record_id, conditions)
            )
        check_preconditions(self.conditions, owned.version)
        conditional = self.conditions.if_match is not None or self.conditions.refuses_some
        version = owned.version
        for _ in range(WRITE_ATTEMPTS):
            try:
                return await write(frozenset({version}))
            except VersionMismatch:
                current = await self.store.call("get", {"table": self.table, "id": self.record_id})
                if current.get(self.owner_field) != owned.owner:
                    raise not_found(self.table, self.record_id) from None
                if conditional:
                    raise
                version = int(current["version"])
        raise changed_while_written()


async def expected_version(
    store: Store, table: str, record_id: str, accepted: frozenset[int] | None
) -> int | None:
    """The version to pass as ``expected_version`` (``None``: no condition).

    One accepted version goes to the store as is. Several (``If-Match: W/"3", W/"4"``) are
    resolved by reading the current version; the write then still carries it as
    ``expected_version``, so a change in between gives 412, never a lost update.
    """
    if accepted is None:
        return None
    if not accepted:
        # If-Match names no record version (a list's ETag, W/"abc"): 412, but for a missing
        # record its 404, as with any other If-Match (QA: 412 there).
        await store.call("get", {"table": table, "id": record_id})
        raise precondition_failed()
    if len(accepted) == 1:
        return next(iter(accepted))
    current = await store.call("get", {"table": table, "id": record_id})
    version = current.get("version")
    if version not in accepted:
        raise precondition_failed()
    return int(version)


def with_version(args: dict[str, object], version: int | None) -> dict[str, object]:
    """Add ``expected_version`` to a write's arguments when there is one."""
    if version is not None:
        args["expected_version"] = version
    return args
