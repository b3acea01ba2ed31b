"""Keep-alive connections pinned to distinct gunicorn workers.

A burst of new connections can all be accepted by one worker, so a test that only fires
concurrent requests may never reach a second worker. Here each client holds one keep-alive
connection; connections are opened one at a time until every wanted worker PID (read from the
test-only X-Worker-PID header) holds enough of them. Tests still check the PID on every
response rather than assume the pinning held.
"""

from __future__ import annotations

from collections import defaultdict

import httpx


async def pinned_clients(
    base_url: str,
    workers: int = 2,
    per_worker: int = 1,
    attempts: int = 200,
    headers: dict[str, str] | None = None,
) -> dict[str, list[httpx.AsyncClient]]:
    """``{pid: [client, ...]}`` with ``per_worker`` clients on each of ``workers`` PIDs;
    ``headers`` (say, a bearer token) go with every request of every client."""
    by_pid: dict[str, list[httpx.AsyncClient]] = defaultdict(list)
    spare: list[httpx.AsyncClient] = []
    try:
        for _ in range(attempts):
            client = httpx.AsyncClient(
                base_url=base_url,
                timeout=30.0,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                headers=headers,
            )
            pid = (await client.get("/api/v1/health")).headers["x-worker-pid"]
            if len(by_pid[pid]) < per_worker:
                by_pid[pid].append(client)
            else:
                spare.append(client)
            full = [p for p, clients in by_pid.items() if len(clients) >= per_worker]
            if len(full) >= workers:
                return dict(by_pid)
        raise AssertionError(f"reached only workers {sorted(by_pid)} in {attempts} connections")
    except BaseException:
        await close_all(by_pid)
        raise
    finally:
        for client in spare:
            await client.aclose()


async def close_all(by_pid: dict[str, list[httpx.AsyncClient]]) -> None:
    for clients in by_pid.values():
        for client in clients:
            await client.aclose()
