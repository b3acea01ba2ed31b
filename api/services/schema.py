"""The tables the API relies on, with their unique index, foreign key and hidden field, and
the background jobs' ``_jobs`` with its indexes."""

from __future__ import annotations

from typing import Any

from api.jobs.model import SCHEMA as JOBS_SCHEMA
from api.services import orders, users
from storeserver.client import Caller

SCHEMAS: tuple[dict[str, Any], ...] = (users.SCHEMA, orders.SCHEMA, JOBS_SCHEMA)


async def ensure_schema(call: Caller) -> None:
    """Create (or extend) the typed tables; idempotent, so every worker may run it.

    Runs on every store connection before anything else uses it (``StoreClient(on_connect=)``),
    so a store restarted without its data has the unique index and foreign key back before
    the first write can reach it.
    """
    for schema in SCHEMAS:
        await call("create_table", schema)
