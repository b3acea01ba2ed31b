"""If-Match → the store's ``expected_version``, so the check and the write are one command."""

from __future__ import annotations

from api.errors import ApiError
from api.store import Store


def precondition_failed(message: str = "If-Match does not match the current version") -> ApiError:
    return ApiError(412, "PRECONDITION_FAILED", message)


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
