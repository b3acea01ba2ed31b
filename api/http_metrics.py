"""The HTTP series of ``/metrics``: requests, latency and requests in progress, per route template.

prometheus-client holds the values (in multiprocess mode, one file per worker, summed by the
scrape); this module only decides the labels and when to count, in a few microseconds:

- ``HttpMetricsMiddleware`` (pure ASGI) counts every request but ``/metrics`` once its response
  has started or it failed: ``http_requests_total`` and ``http_request_duration_seconds``;
- ``MeteredRoute`` (the ``route_class`` of every router) keeps ``http_requests_inprogress`` while
  a route's handler runs.

The ``handler`` label is the route template (``/api/v1/users/{user_id}``), read from the route
the router picked (``scope["route"]``) rather than by matching the path again against every route
before the request, which prometheus-fastapi-instrumentator (used until then) did and which cost
more than the rest of its work. A request no route took (404, or one an outer middleware
answered first: 413, 415, 429) is matched against the routes afterwards, once; 404s count
under ``none``. Label children are cached: ``labels()`` takes a lock and builds a key every time.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi.routing import APIRoute
from prometheus_client import Counter, Gauge, Histogram, values
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import asked_with_head

METRICS_PATH = "/metrics"
UNMATCHED = "none"
OTHER_METHOD = "OTHER"
"""The ``method`` label of a method outside ``METHODS``, and of a request refused before it
was parsed whole (its method may be no method at all)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own name. The parser takes any token as a method, and each
label value is a series per route and status, kept until the worker ends: QA sent 27
WebDAV and extension methods (405 to anyone, before any login) to every route and took
/metrics from 56 samples to 15,180 (1.7 MB a scrape)."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Pid:
    """This process's id, read again only after a fork.

    In multiprocess mode every ``inc``/``observe`` asks for the pid to notice a fork (and
    switch to the child's own files); ``os.getpid`` is a system call each time, five per
    request here. ``MultiProcessValue`` takes the function to use; this one is kept right by
    ``os.register_at_fork``. Set before any value exists: values are made on first use.
    """

    value = os.getpid()

    @classmethod
    def refresh(cls) -> None:
        cls.value = os.getpid()

    @classmethod
    def get(cls) -> int:
        return cls.value


os.register_at_fork(after_in_child=_Pid.refresh)
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=_Pid.get)

# Created once per process (tests build many apps in one process).
REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template (handler) and status code.",
    ("method", "handler", "status"),
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration in seconds by method, route template (handler) and status code.",
    ("method", "handler", "status"),
    buckets=LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    "http_requests_inprogress",
    "HTTP requests being served, by method and route template (handler).",
    ("method", "handler"),
    multiprocess_mode="livesum",
)

# Label children by label values; a few hundred at most (methods x routes x statuses).
_finished: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_in_progress: dict[tuple[str, str], Any] = {}


def _template(route: Any) -> str:
    # Every route sits on the app's own router with its full path (``api.main.mount``), so its
    # path is the template.
    return str(getattr(route, "path", UNMATCHED))


def _match_template(scope: Scope) -> str:
    """The template of the route this request would have taken (the first full match, else the
    first path-only match, as the router decides); ``none`` if no route matches."""
    app = scope.get("app")
    if app is None or not hasattr(app, "router"):
        return UNMATCHED
    partial: str | None = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return _template(route)
        if match == Match.PARTIAL and partial is None:
            partial = _template(route)
    return partial or UNMATCHED


def handler_of(scope: Scope, status: int, root_path: str = "") -> str:
    """The ``handler`` label of a request that has been served; ``root_path``: the scope's on
    entry. A mount (the docs' assets) extends it before its app serves, and then no longer
    matches the request (QA: assets served 200 counted under ``none``)."""
    route = scope.get("route")
    if route is not None:
        return _template(route)
    if status == 404:
        return UNMATCHED
    if scope.get("root_path", "") != root_path:
        scope = {**scope, "root_path": root_path}
    return _match_template(scope)


def method_label(scope: Scope) -> str:
    method: str = scope["method"]
    return method if method in METHODS else OTHER_METHOD


def observe(method: str, handler: str, status: int, seconds: float) -> None:
    key = (method, handler, status)
    children = _finished.get(key)
    if children is None:
        labels = (method, handler, str(status))
        children = _finished[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
    children[0].inc()
    children[1].observe(seconds)


class HttpMetricsMiddleware:
    """Count each request and its duration by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server error handler sends 500
        root_path = scope.get("root_path", "")

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            observe(method_label(scope), handler_of(scope, status, root_path), status, seconds)


class MeteredRoute(APIRoute):
    """An APIRoute that counts itself in ``http_requests_inprogress`` while it serves."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A method the route does not take comes here too, to be answered 405.
        # A HEAD reaches the route as the GET it asks about (``RequestIdMiddleware``): label it
        # HEAD, as ``http_requests_total`` does (QA).
        key = ("HEAD" if asked_with_head(scope) else method_label(scope), self.path)
        gauge = _in_progress.get(key)
        if gauge is None:
            gauge = _in_progress[key] = IN_PROGRESS.labels(*key)
        gauge.inc()
        try:
            await super().handle(scope, receive, send)
        finally:
            gauge.dec()
