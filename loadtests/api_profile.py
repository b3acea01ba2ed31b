"""Where a worker's CPU per ``GET /api/v1/users/{id}`` goes: the app called in-process.

``python -m loadtests.api_profile`` starts its own store (``servers.start_store``), builds the
apps below in this one process (each opens its own store connection, as a worker would),
creates a user through the user service and signs it an access token, then drives each app
directly through ASGI (no uvicorn, no HTTP parsing, no client sockets) from CONCURRENCY tasks on
a uvloop loop. The figure is this process's CPU time (``time.process_time``) per request, with
the store's (/proc) beside it. Each variant removes one thing from the deployed app, so the
differences say what it costs:

- ``full``: ``api.main:create_app()`` as gunicorn runs it, bearer token, access line logged
  (to a file), Prometheus in multiprocess mode, RATE_LIMIT far above the load;
- ``no-access-log``: the same app with ``api.middleware.log_access`` replaced by a no-op;
- ``no-metrics``: without the Prometheus HTTP middleware;
- ``no-gzip``: without Starlette's GZipMiddleware;
- ``no-guard``: without the request guard (no rate-limit hit; the token is then checked by the
  ``Caller`` dependency's fallback: cached JWT verification + the revocation read);
- ``lean``: no access line, no metrics, no gzip (authenticated, rate-limited);
- ``noauth``: ``loadtests.noauth_app`` (no token, no ownership check; rate-limited by IP);
- ``ceiling``: ``loadtests.baseline_app`` (the same record from a dict).

Once every app is built, ``api.collector.tune()`` freezes them out of the garbage collector's
way and raises its young threshold, as ``post_worker_init`` does in a gunicorn worker.

Two more figures: the share of ``full``'s CPU spent in FastAPI's dependency solving (the
process time of each request's top-level ``solve_dependencies``: the API's routes await
nothing there, so no other task's work is counted), and what one ``Depends`` costs on its own:
a minimal route with 0, 1, 2 and 4 dependencies that return at once.

The variants are measured interleaved, ``--rounds`` times; on a shared machine CPU time per
request only grows with interference, so the minimum is the least disturbed figure (the median
is printed too). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import logging.config
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvloop
from fastapi import Depends, FastAPI, Request

from .servers import Processes, cpu_seconds, start_store

CONCURRENCY = 25  # 50 connections over 2 workers
ROUNDS = 6
REQUESTS = 1500  # per variant and round
VARIANTS = (
    "full",
    "no-access-log",
    "no-metrics",
    "no-gzip",
    "no-guard",
    "lean",
    "noauth",
    "ceiling",
)
NO_LOG = frozenset({"no-access-log", "lean"})


def without(app: Any, *names: str) -> Any:
    """Drop middleware classes by name before the stack is built (at the first request)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ not in names]
    return app


def build_apps(full: Any) -> dict[str, Any]:
    """Every variant; ``full`` is already built (its lifespan made the user)."""
    from api.main import create_app

    from .baseline_app import create_app as create_baseline

    apps = {
        "full": full,
        "no-access-log": full,
        "no-metrics": without(create_app(), "HttpMetricsMiddleware"),
        "no-gzip": without(create_app(), "GZipMiddleware"),
        "no-guard": without(create_app(), "RequestGuardMiddleware"),
        "lean": without(create_app(), "HttpMetricsMiddleware", "GZipMiddleware"),
        "ceiling": create_baseline(),
    }
    # noauth_app must define the routes again with its UserId: forget the route modules (the
    # apps above keep theirs) and import it last.
    for name in [m for m in sys.modules if m == "api.main" or m.startswith("api.routes")]:
        del sys.modules[name]
    from .noauth_app import create_noauth_app

    apps["noauth"] = create_noauth_app()
    return apps


async def make_user(app: Any) -> tuple[dict[str, Any], str]:
    """A user (through the user service) and an access token for it (a new session)."""
    from api.auth.tokens import new_session_id
    from api.schemas.users import UserCreate
    from api.services import users

    payload = UserCreate(
        email=f"profile-{secrets.token_hex(6)}@example.com",
        full_name="Profile User",
        age=42,
        password="profile password 1",
    )
    user = await users.create_user(app.state.store, payload)
    token = app.state.tokens.issue_pair(str(user["id"]), "user", new_session_id()).access_token
    return user, token


def scope_for(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def drive(app: Any, path: str, headers: list[tuple[bytes, bytes]], n: int) -> int:
    """``n`` requests (rounded down) from CONCURRENCY tasks; every answer must be a 200."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def task(count: int) -> None:
        for _ in range(count):
            status: list[int] = []

            async def send(message: dict[str, Any], status: list[int] = status) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope_for(path, headers), receive, send)
            if status != [200]:
                raise RuntimeError(f"GET {path} answered {status}")

    each = n // CONCURRENCY
    await asyncio.gather(*(task(each) for _ in range(CONCURRENCY)))
    return each * CONCURRENCY


class DependencyClock:
    """Process time spent in the top-level ``solve_dependencies`` of each request, while on."""

    def __init__(self) -> None:
        import fastapi.routing

        self.routing = fastapi.routing
        self.solve = fastapi.routing.solve_dependencies
        self.seconds = 0.0
        self.on = False

    async def timed(self, *args: Any, **kwargs: Any) -> Any:
        if not self.on:
            return await self.solve(*args, **kwargs)
        self.on = False  # the nested calls (sub-dependencies) are inside this one's time
        started = time.process_time()
        try:
            return await self.solve(*args, **kwargs)
        finally:
            self.seconds += time.process_time() - started
            self.on = True

    def __enter__(self) -> DependencyClock:
        self.routing.solve_dependencies = self.timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.routing.solve_dependencies = self.solve


def dependency_app(count: int) -> Any:
    """A route reading a path parameter with ``count`` dependencies that return at once."""

    async def dependency(request: Request) -> object:
        return request.app

    app = FastAPI()

    async def endpoint(item_id: str, **_: object) -> dict[str, str]:
        return {"id": item_id}

    # FastAPI reads the parameters from the signature: give it ``count`` distinct ones.
    parameters = [inspect.Parameter("item_id", inspect.Parameter.KEYWORD_ONLY, annotation=str)]
    parameters += [
        inspect.Parameter(
            f"d{k}", inspect.Parameter.KEYWORD_ONLY, default=Depends(dependency), annotation=object
        )
        for k in range(count)
    ]
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app.get("/items/{item_id}")(endpoint)
    return app


async def dependency_costs(requests: int, rounds: int) -> dict[int, float]:
    """CPU µs per request of ``dependency_app(n)`` for n = 0, 1, 2, 4 (the least of ``rounds``)."""
    base = [(b"host", b"127.0.0.1:8000")]
    out = {}
    for count in (0, 1, 2, 4):
        app = dependency_app(count)
        await drive(app, "/items/abc", base, requests // 5)  # warm-up
        best = float("inf")
        for _ in range(rounds):
            cpu0 = time.process_time()
            n = await drive(app, "/items/abc", base, requests)
            best = min(best, (time.process_time() - cpu0) / n * 1e6)
        out[count] = best
    return out


async def run(args: argparse.Namespace, store_pid: int) -> dict[str, Any]:
    import api.middleware
    from api import collector
    from api.main import create_app

    log_access = api.middleware.log_access
    full = create_app()
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(full.router.lifespan_context(full))
        user, token = await make_user(full)
        os.environ["BASELINE_RECORD"] = json.dumps(user)
        apps = build_apps(full)
        for app in {id(a): a for a in apps.values() if a is not full}.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        collector.tune()  # as gunicorn's post_worker_init does in every worker
        path = f"/api/v1/users/{user['id']}"
        base = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")]
        bearer = [*base, (b"authorization", f"Bearer {token}".encode())]
        solving: list[float] = []
        clock = stack.enter_context(DependencyClock())
        for k in range(args.rounds):
            for variant in VARIANTS:
                headers = base if variant in ("noauth", "ceiling") else bearer
                api.middleware.log_access = (  # type: ignore[assignment]
                    (lambda *_: None) if variant in NO_LOG else log_access
                )
                await drive(apps[variant], path, headers, args.requests // 5)  # warm-up
                store0 = cpu_seconds(store_pid)
                clock.seconds, clock.on = 0.0, variant == "full"
                cpu0 = time.process_time()
                n = await drive(apps[variant], path, headers, args.requests)
                cpu = time.process_time() - cpu0
                clock.on = False
                store = cpu_seconds(store_pid) - store0
                samples[variant].append((cpu / n * 1e6, store / n * 1e6))
                if variant == "full":
                    solving.append(clock.seconds / n * 1e6)
            print(f"[api-profile] round {k + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        costs = await dependency_costs(args.requests, args.rounds)
    api.middleware.log_access = log_access  # type: ignore[assignment]
    out: dict[str, Any] = {"requests_per_sample": args.requests, "rounds": args.rounds}
    out["full_dependency_solving_us_median"] = statistics.median(solving)
    out["dependency_cost_us"] = {str(count): us for count, us in costs.items()}
    for variant, values in samples.items():
        cpus = [c for c, _ in values]
        stores = [s for _, s in values]
        out[variant] = {
            "cpu_us_min": min(cpus),
            "cpu_us_median": statistics.median(cpus),
            "cpu_us_all": cpus,
            "store_cpu_us_median": statistics.median(stores) if variant != "ceiling" else None,
        }
    return out


def print_table(result: dict[str, Any]) -> None:
    full = result["full"]["cpu_us_min"]
    print(
        f"full: FastAPI's dependency solving {result['full_dependency_solving_us_median']:.0f}"
        f" µs/req (median) of {result['full']['cpu_us_median']:.0f}"
    )
    costs = ", ".join(f"{n}: {us:.0f}" for n, us in result["dependency_cost_us"].items())
    print(f"minimal route, CPU µs/req by number of Depends ({costs})")
    print(f"{'variant':<15} {'CPU µs/req min':>14} {'median':>7} {'vs full':>8} {'store µs':>9}")
    for variant in VARIANTS:
        r = result[variant]
        store = r["store_cpu_us_median"]
        print(
            f"{variant:<15} {r['cpu_us_min']:>14.0f} {r['cpu_us_median']:>7.0f} "
            f"{r['cpu_us_min'] - full:>+8.0f} {'' if store is None else f'{store:.0f}':>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="api-profile-"))
    try:
        store, sock = start_store(procs, tmp)
        (tmp / "prometheus").mkdir()
        os.environ.update(
            {
                "STORE_SOCKET": str(sock),
                "LOG_LEVEL": "info",
                "JWT_SECRET": secrets.token_urlsafe(48),
                "RATE_LIMIT": "100000000/minute",
                "BCRYPT_ROUNDS": "4",  # only the setup hashes a password
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
            }
        )
        for key in ("ADMIN_EMAIL", "ADMIN_PASSWORD", "EXPOSE_WORKER_PID", "CORS_ORIGINS"):
            os.environ.pop(key, None)
        # What gunicorn's master does with logconfig_dict, with the lines going to a file.
        from api.logs import logging_config

        logging.config.dictConfig(logging_config("info"))
        fd = os.open(tmp / "app.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for handler in logging.getLogger().handlers:
            handler.fd = fd  # type: ignore[attr-defined]
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run(args, store.pid))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
