"""Prometheus metrics: ``GET /metrics`` at the root.

HTTP series are counted by ``api.http_metrics``. Under gunicorn,
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, prepared before Python
starts) gives every worker its own files, and a scrape, whichever worker serves it, sums them
all with ``MultiProcessCollector``. Without that variable (in-process tests) the default registry
is served.

Store metrics are read at scrape time: the worker serving the scrape calls the store's ``stats``
once, with a short timeout. If the store does not answer, the store series are left out and
``memdb_store_up`` is 0, so a dead store never hangs a scrape.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from pydantic import SecretStr
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.errors import ApiError
from api.http_metrics import METRICS_PATH, HttpMetricsMiddleware

# A scrape waits at most this long for the store's stats (Prometheus' default timeout is 10 s).
STORE_STATS_TIMEOUT = 1.0
# Media ranges of an Accept header read for /metrics (a scraper sends two or three).
MAX_MEDIA_RANGES = 32

log = structlog.get_logger("api.metrics")


class _DefaultRegistry(Collector):
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _gauge(name: str, documentation: str, value: Any) -> Iterator[Metric]:
    number = _number(value)
    if number is not None:
        yield GaugeMetricFamily(name, documentation, value=number)


class StoreCollector(Collector):
    """The store's ``stats`` answer (``None`` if it did not answer) as metric families."""

    def __init__(self, stats: dict[str, Any] | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        up = int(bool(stats))
        yield GaugeMetricFamily("memdb_store_up", "1 if the store answered this scrape.", value=up)
        if not stats:
            return
        tables = stats.get("tables") or {}
        yield GaugeMetricFamily("memdb_store_tables", "Tables in the store.", value=len(tables))
        rows = GaugeMetricFamily("memdb_store_table_rows", "Rows per table.", labels=["table"])
        for name, table in tables.items():
            count = _number(table.get("rows")) if isinstance(table, dict) else None
            if count is not None:
                rows.add_metric([str(name)], count)
        yield rows
        yield from _gauge("memdb_store_memory_rss_bytes", "Store RSS.", stats.get("rss_bytes"))
        yield from _gauge(
            "memdb_store_memory_limit_bytes",
            "STORE_MAX_MEMORY: writes are refused (HTTP 507) above it; 0 means no limit.",
            stats.get("max_memory"),
        )
        yield from _gauge("memdb_store_clients", "Connected store clients.", stats.get("clients"))
        yield from _gauge("memdb_store_uptime_seconds", "Store uptime.", stats.get("uptime_s"))
        yield from _gauge(
            "memdb_store_scan_cursors",
            "Open scan cursors (dumps and exports being read); past 1000, a new one is refused"
            " (503 STORE_BUSY) until one ends or is left unread for STORE_SCAN_IDLE.",
            stats.get("cursors"),
        )
        yield from self._commands(stats.get("commands") or {})
        yield from self._persistence(stats.get("persistence") or {})

    @staticmethod
    def _commands(commands: dict[str, Any]) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "memdb_store_commands", "Store commands run, by command.", labels=["command"]
        )
        seconds = CounterMetricFamily(
            "memdb_store_command_seconds",
            "Time the store spent running commands, by command (divide by the count: mean).",
            labels=["command"],
        )
        for name, entry in commands.items():
            if not isinstance(entry, dict):
                continue
            count, spent = _number(entry.get("count")), _number(entry.get("seconds"))
            if count is not None and spent is not None:
                counts.add_metric([str(name)], count)
                seconds.add_metric([str(name)], spent)
        yield counts
        yield seconds

    @staticmethod
    def _persistence(status: dict[str, Any]) -> Iterator[Metric]:
        enabled = bool(status.get("enabled"))
        yield GaugeMetricFamily(
            "memdb_store_persistence_enabled",
            "1 if the store keeps a snapshot and append log (STORE_DATA_DIR).",
            value=int(enabled),
        )
        if not enabled:
            return
        yield GaugeMetricFamily(
            "memdb_store_persistence_failed",
            "1 if the store reported a persistence error (see its logs).",
            value=int(status.get("error") is not None),
        )
        yield from _gauge("memdb_store_log_bytes", "Append log size.", status.get("log_bytes"))
        yield from _gauge(
            "memdb_store_last_snapshot_age_seconds",
            "Seconds since the last snapshot finished (absent: none yet).",
            status.get("last_snapshot_age_s"),
        )


async def read_store_stats(store: Any) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(STORE_STATS_TIMEOUT):
            stats = await store.call("stats", {})
    except Exception as exc:  # any failure means "store down" for this scrape
        log.warning("store_stats_unavailable", error=type(exc).__name__)
        return None
    return stats if isinstance(stats, dict) else None


def scrape_registry(stats: dict[str, Any] | None) -> CollectorRegistry:
    """A registry for one scrape: HTTP metrics of every worker plus the store's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_DefaultRegistry())
    registry.register(StoreCollector(stats))
    return registry


def _scraper_allowed(request: Request, token: SecretStr | None) -> bool:
    """Without METRICS_TOKEN anyone may scrape; with it, only ``Bearer <METRICS_TOKEN>``."""
    if token is None:
        return True
    sent = request.headers.get("authorization", "")
    scheme, _, credentials = sent.partition(" ")
    expected = token.get_secret_value().encode()  # stripped by Settings, as the sent one is
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), expected
    )


_VERSION = re.compile(r"\d{1,9}(?:\.\d{1,9}){0,3}")


def scraper_accept(header: str) -> str:
    """The Accept header as ``prometheus_client.choose_encoder`` can read it: the media ranges
    by preference (q, highest first; it takes the first it knows), without those refused
    (q=0, or a q that is not a number) or whose ``version`` is not dotted digits, which made
    it raise (QA: ``version=abc`` was a 500 for anyone, and ``q=0`` was not honoured), and
    none after ``text/plain``, which it would pass over (at version 0.0.4) for a later one."""
    ranked = []
    for position, media_range in enumerate(header.split(",")[:MAX_MEDIA_RANGES]):
        q = 1.0
        usable = True
        for parameter in media_range.split(";")[1:]:
            name, _, value = parameter.partition("=")
            name, value = name.strip().lower(), value.strip()
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    usable = False
            elif name == "version" and _VERSION.fullmatch(value) is None:
                usable = False
        if usable and 0 < q <= 1:
            ranked.append((-q, position, media_range))
    kept = []
    for _, _, media_range in sorted(ranked):
        kept.append(media_range)
        if media_range.split(";")[0].strip().lower() == "text/plain":
            break  # preferred to what follows; choose_encoder would pass over its 0.0.4
    return ",".join(kept)


async def read_metrics(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """Prometheus exposition (text, or OpenMetrics when asked for); never cached."""
    if not _scraper_allowed(request, settings.metrics_token):
        # Before any store call or file read: a refused scrape costs next to nothing.
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "METRICS_TOKEN is set: send Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    registry = scrape_registry(await read_store_stats(store))
    encoder, content_type = choose_encoder(scraper_accept(request.headers.get("accept", "")))
    # The format follows Accept: a cache in between must not serve one scraper's to another.
    headers = {"Content-Type": content_type, "Cache-Control": "no-store", "Vary": "Accept"}
    return Response(encoder(registry), headers=headers)


def install_metrics(app: FastAPI) -> None:
    """Add the HTTP metrics middleware (call it last: outermost) and ``GET /metrics``."""
    app.add_middleware(HttpMetricsMiddleware)
    app.add_api_route(METRICS_PATH, read_metrics, methods=["GET"], include_in_schema=False)
