"""``create_app()``: the application each gunicorn worker runs.

The store client is opened in the lifespan (after gunicorn forks), lives on ``app.state``,
and closes on shutdown. Run with ``gunicorn -c deploy/gunicorn.conf.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.auth.startup import adopt_store_secret, ensure_admin_step, install_limiters, start_auth
from api.docs import install_docs
from api.errors import install_error_handlers
from api.jobs import start_jobs, stop_jobs
from api.logs import configure_logging
from api.metrics import install_metrics
from api.middleware import install_middleware
from api.openapi import install_openapi
from api.routes import (
    admin,
    auth,
    batch,
    data,
    dump,
    filter_writes,
    join,
    orders,
    probes,
    table_indexes,
    table_schemas,
    tables,
    users,
)
from api.routes import jobs as job_routes
from api.routes import transactions as transaction_routes
from api.services.schema import ensure_schema
from api.settings import Settings, get_settings
from api.store import connect_store
from storeserver.client import Caller
from storeserver.errors import MemoryLimit

log = logging.getLogger("api.main")

API_PREFIX = "/api/v1"
TAGS = [
    {"name": "auth", "description": "Log in, refresh and log out (JWT bearer tokens)."},
    {"name": "users", "description": "Registration and user records (email unique)."},
    {"name": "orders", "description": "Orders; each belongs to an existing user."},
    {"name": "data", "description": 'Generic tables: any JSON record under `{"data": {...}}`.'},
    {"name": "tables", "description": "Schemas, indexes, update/delete by filter (admin)."},
    {"name": "join", "description": "Paginated inner joins of two tables."},
    {"name": "dump", "description": "Whole-table export, streamed as NDJSON."},
    {"name": "batch", "description": "CSV import (validated per row) and streamed CSV export."},
    {"name": "admin", "description": "Operator actions: snapshots, audit log, stats (admin only)."},
    {"name": "jobs", "description": "Background jobs: status from any worker, cancel, results."},
    {"name": "probes", "description": "Liveness and readiness for orchestrators."},
]
DESCRIPTION = """
An in-memory database behind a REST API. Every response is an envelope:
`{"status": "success", "data": ..., "meta": {"page", "per_page", "total"}}` (meta on lists) or
`{"status": "error", "error": {"code", "message", "details"}, "request_id"}`.

Single records carry a weak `ETag` (`W/"<version>"`): send it back in `If-None-Match` for a
304, or in `If-Match` on PUT/PATCH/DELETE to write only if nobody changed the record, or in
`If-None-Match` there to write only if it is not at that version (`*`: never over an existing
record); a failed condition is 412 and writes nothing.
Decimal amounts (`total_price`) are strings, so they stay exact.

Lists take `page` (from 1), `per_page` (1 to 100, default 20), `sort=field:asc|desc[,...]`,
`created_after` / `created_before` (ISO dates or datetimes, UTC if no offset), and filters: any
other query parameter, as `field=value` or `field__op=value` with op in `gt gte lt lte ne in
contains startswith exists` (`in` takes comma-separated values, `exists` true or false). On
users and orders an unknown field or operator is a 400 and a value of the wrong type a 422; on
generic tables values are read as JSON scalars when they parse (`30`, `true`, `null`, `"30"`
for the string), else as strings.

**Authentication.** Register with `POST /api/v1/users`, log in with `POST /api/v1/auth/token`
(OAuth2 password form, username = email; the Authorize button above does it) and send
`Authorization: Bearer <access_token>`. Access tokens last 15 minutes; exchange the refresh
token at `POST /api/v1/auth/refresh` (each refresh token works once) and end the session with
`POST /api/v1/auth/logout`. Users see and change only themselves and their own orders (someone
else's is a 404); the user list, generic tables, joins and dumps are for admins (403).
Requests are rate limited per user (per client IP without a token): `X-Rate-Limit-Limit`,
`X-Rate-Limit-Remaining`, `X-Rate-Limit-Reset` (Unix time), and 429 with `Retry-After`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    adopt_secret = adopt_store_secret(app.state, settings)
    ensure_admin = ensure_admin_step(settings)

    async def on_connect(call: Caller) -> None:
        # Every (re)connection: a store that came back empty is made usable before any request.
        for step in (ensure_schema, adopt_secret, ensure_admin):
            try:
                await step(call)
            except MemoryLimit:
                # A store at its memory limit holds data, so its tables (and, most likely, the
                # admin) exist: serving reads beats refusing to start. Each step is idempotent
                # and runs again at the next connection.
                log.warning("store at its memory limit: connection set-up step skipped")

    store = await connect_store(
        settings.store_socket,
        settings.store_timeout,
        settings.store_wait_seconds,
        on_connect=on_connect,
        secret=settings.store_secret_value,
        long_timeout=settings.store_long_timeout,
    )
    try:
        await start_auth(app.state, store, settings)
        app.state.store = store
        await start_jobs(app.state, store, settings)
        yield
    finally:
        await stop_jobs(app.state)
        await store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing is opened until the lifespan starts."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="memdb-service",
        version="0.1.0",
        summary="An in-memory database service with a REST API",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # api.docs serves the pages with their bundles (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    install_limiters(app.state, settings)
    install_error_handlers(app)
    install_middleware(app, settings)
    install_metrics(app)
    # The router tries routes in this order: the busiest (users, orders) first, since each
    # route tried before the match costs about a microsecond. Table management (schemas,
    # indexes, writes by filter, drop) before data: /data/{table}/schema is not a read of a
    # record called "schema".
    table_management = (table_schemas, table_indexes, filter_writes, tables)
    for module in (users, orders, auth, *table_management, data, join, dump, admin, probes):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(job_routes.router, prefix=API_PREFIX)
    app.include_router(batch.router, prefix=API_PREFIX)
    app.include_router(transaction_routes.router, prefix=API_PREFIX)
    install_openapi(app)
    install_docs(app)
    return app
