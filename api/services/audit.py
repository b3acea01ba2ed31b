"""The store's audit log: every table mutation, who made it, when, in which request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.queries import Page, parse_timestamp
from api.store import Store


@dataclass(frozen=True)
class AuditFilter:
    """Filters of ``GET /admin/audit``; times as ISO dates or datetimes (UTC if no offset)."""

    user_id: str | None = None
    table: str | None = None
    since: str | None = None
    until: str | None = None

    def args(self) -> dict[str, Any]:
        """The store's ``audit_list`` filter arguments (timestamps in the store's format)."""
        args: dict[str, Any] = {}
        if self.user_id is not None:
            args["user_id"] = self.user_id
        if self.table is not None:
            args["table"] = self.table
        if self.since is not None:
            # Inclusive, as gte: finer digits round up (down, it took an entry before it: QA).
            args["since"] = parse_timestamp(self.since, "since", "gte")
        if self.until is not None:
            args["until"] = parse_timestamp(self.until, "until")
        return args


async def list_audit(
    store: Store, where: AuditFilter, page: Page
) -> tuple[list[dict[str, Any]], int]:
    """A page of audit entries, newest first, and how many match in all."""
    args = {**where.args(), "offset": page.offset, "limit": page.per_page}
    found = await store.call("audit_list", args)
    return list(found["items"]), int(found["total"])
