"""If-Match / If-None-Match → the store's ``expected_version``, so the check and the write are
one command."""

from __future__ import annotations

from api.conditions import WriteConditions
from api.errors import ApiError
from api.etags import record_etag
from api.store import Store


def precondition_failed(
    message: str = "If-Match does not match the current version",
    headers: dict[str, str] | None = None,
) -> ApiError:
    return ApiError(412, "PRECONDITION_FAILED", message, headers=headers)


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
    if conditions.if_match is not None and not conditions.if_match:
        raise precondition_failed()
    current = await store.call("get", {"table": table, "id": record_id})
    version = int(current["version"])
    if conditions.if_match is not None and version not in conditions.if_match:
        raise precondition_failed()
    refused = conditions.if_none_match or frozenset()
    if conditions.none_match_any or version in refused:
        etag = record_etag(version)
        message = f"If-None-Match matches the current version ({etag}): nothing written"
        raise precondition_failed(message, {"ETag": etag})
    return frozenset({version})


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
