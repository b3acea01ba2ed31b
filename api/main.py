"""``create_app()``: the application each gunicorn worker runs.

The store client is opened in the lifespan (after gunicorn forks), lives on ``app.state``,
and closes on shutdown. Run with ``gunicorn -c deploy/gunicorn.conf.py``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from api import forms
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
from api.services.dumps import close_open_scans
from api.services.schema import SCHEMAS, ensure_schema
from api.settings import START_REFUSAL_FILE_ENV, Settings, get_settings
from api.solver import plan_dependencies
from api.store import START, StoreNotReady, connect_store
from storeserver.client import Caller
from storeserver.errors import LimitExceeded, MemoryLimit, SetupRefused, StoreError

log = structlog.get_logger("api.main")

API_PREFIX = "/api/v1"
NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
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

Single records carry a weak `ETag` (`W/"<version>"`; `GET /orders/{id}/user`, whose user may
change, `W/"u<hash>-<version>"`): send it back in `If-None-Match` for a
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
token at `POST /api/v1/auth/refresh` (each refresh token works once; sent again within 60 s,
before the new one is used, it gets the same new refresh token) and end the session with
`POST /api/v1/auth/logout`. Users see and change only themselves and their own orders (someone
else's is a 404); the user list, generic tables, joins and dumps are for admins (403).
Requests are rate limited per user (per client IP without a token): `X-Rate-Limit-Limit`,
`X-Rate-Limit-Remaining`, `X-Rate-Limit-Reset` (Unix time), and 429 with `Retry-After`.
"""


SETUP_LOG_SECONDS = 10.0
"""At most one line per this many seconds, per worker, about set-up steps the store refuses:
it is asked again at every reconnection attempt (up to a few a second)."""
SCAN_CLOSE_SECONDS = 1.0
"""How long a stopping worker waits for the store to close its downloads' cursors."""
MIB = 1 << 20


class StoreRefusedSetup(SetupRefused):
    """The store refuses the tables the API needs (its memory or table limit): only a setting
    of the store can mend that. A ``SetupRefused``, not a ``StoreError``: the client hands
    it on as it is, ``connect_store`` does not retry it as a store still starting, and the
    worker fails to boot at once, saying why."""


async def missing_tables(call: Caller) -> list[str]:
    """The API's tables (``SCHEMAS``) this store does not hold, in creation order."""
    present = set(await call("list_tables", {}))
    return [schema["table"] for schema in SCHEMAS if schema["table"] not in present]


async def setup_refusal(call: Caller, exc: StoreError, missing: list[str]) -> str:
    """Why the store refused the API's set-up and which store setting to change."""
    if not missing:
        return f"the store refused the API's set-up: {exc.code} ({exc.message})"
    refused = f"the store refused to create the {missing[0]} table: {exc.code}"
    if isinstance(exc, MemoryLimit):
        limit = exc.details.get("max_memory")
        with contextlib.suppress(StoreError):
            used = (await call("stats", {}))["rss_bytes"]
            return (
                f"{refused} (STORE_MAX_MEMORY={limit} bytes is below what the store uses"
                f" already, {used / MIB:.0f} MiB: raise it, to at least 64 MiB)"
            )
        return f"{refused} (STORE_MAX_MEMORY={limit} bytes is below what the store uses)"
    if exc.details.get("reason") == "tables":
        needed = ", ".join(schema["table"] for schema in SCHEMAS)
        return (
            f"{refused} ({exc.message}: STORE_MAX_TABLES={exc.details.get('max')} leaves no"
            f" room for it; the API needs {len(SCHEMAS)} tables ({needed}) besides yours)"
        )
    return f"{refused} ({exc.message})"


def record_start_refusal(reason: str) -> None:
    """Leave ``reason`` where deploy/start_gunicorn.py reads it once gunicorn has stopped
    ("Worker failed to boot", exit 3): it then exits 2, which `make run` and supervisord
    take as a configuration error (stop at once) rather than a crash to restart."""
    path = os.environ.get(START_REFUSAL_FILE_ENV)
    if path:
        # A new owner-only file, never through a link (another worker's says the same).
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(reason)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    adopt_secret = adopt_store_secret(app.state, settings)
    ensure_admin = ensure_admin_step(settings)
    starting = True
    logged_at: dict[str, float] = {}

    def log_throttled(level: str, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now - logged_at.get(event, -SETUP_LOG_SECONDS) >= SETUP_LOG_SECONDS:
            logged_at[event] = now
            getattr(log, level)(event, **fields)

    async def on_connect(call: Caller) -> None:
        # Every (re)connection: a store that came back empty is made usable before any request.
        for step in (ensure_schema, adopt_secret, ensure_admin):
            try:
                await step(call)
            except (MemoryLimit, LimitExceeded) as exc:
                missing = await missing_tables(call)
                if isinstance(exc, MemoryLimit) and not missing:
                    # A store at its memory limit that holds the tables holds data (most
                    # likely the admin too): serving reads beats refusing to start. Each step
                    # is idempotent and runs again at the next connection.
                    log_throttled("warning", "setup_step_skipped", code=exc.code)
                    continue
                # No table to serve from, or a limit (a setting) the API's tables or
                # indexes do not fit in: no retry helps.
                reason = await setup_refusal(call, exc, missing)
                log_throttled("error", "store_setup_refused", code=exc.code, message=reason)
                if starting:
                    raise StoreRefusedSetup(reason) from exc
                raise  # reconnected: requests get 503 until the store takes them

    try:
        store = await connect_store(
            settings.store_socket,
            settings.store_timeout,
            settings.store_wait_seconds,
            on_connect=on_connect,
            secret=settings.store_secret_value,
            long_timeout=settings.store_long_timeout,
        )
    except StoreRefusedSetup as exc:
        record_start_refusal(str(exc))
        raise
    except StoreNotReady as exc:
        # Away (restarting, still loading), not refusing a setting: in gunicorn, this worker
        # exits 1 rather than as a failed boot (deploy/gunicorn.conf.py, ``worker_exit``).
        START.store_not_ready = True
        log.error(
            "worker_store_not_ready",
            store_socket=settings.store_socket,
            wait_seconds=settings.store_wait_seconds,
            error=str(exc.__cause__ or exc),
        )
        raise
    starting = False
    try:
        await start_auth(app.state, store, settings)
        app.state.store = store
        await start_jobs(app.state, store, settings)
        yield
    finally:
        await stop_jobs(app.state)
        await close_open_scans(SCAN_CLOSE_SECONDS)
        await store.close()


def mount(app: FastAPI, router: APIRouter, prefix: str) -> None:
    """Add ``router``'s routes to ``app``'s own router, each under ``prefix``.

    ``app.include_router`` would keep each included router as one node that the app's router
    matches into, and then matches again to pick the route (FastAPI 0.16x): about 15 µs of a
    worker's CPU per request across our routers. Routes added to the app's router directly are
    matched once, by their full template, which is also what the metrics label them with.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only API routes are mounted")
        app.router.add_api_route(
            prefix + route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            route_class_override=type(route),
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing is opened until the lifespan starts."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    forms.install()
    app = FastAPI(
        title="memdb-service",
        version="0.1.0",
        summary="An in-memory database service with a REST API",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # api.docs serves the pages with their bundles (no CDN)
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks stay off: metrics are Prometheus's and logs are
        # ours (README, Observability). Left on, with no OpenTelemetry provider configured,
        # FastAPI still asks the three global providers on every request (about 5 µs).
        telemetry=NO_TELEMETRY,
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
    resources = (users, orders, auth, *table_management, data, join, dump, admin, probes)
    for module in (*resources, job_routes, batch, transaction_routes):
        mount(app, module.router, API_PREFIX)
    install_openapi(app)
    install_docs(app)
    plan_dependencies(app)
    return app
