"""``make bench-dump-abort``: an API worker's RSS across NDJSON dumps its clients abandon.

A client that closes its connection partway through ``GET /api/v1/dump/{table}`` leaves the
response's stream cancelled mid-way. Starlette's ``StreamingResponse`` kept everything that
stream held (its current page, the page read ahead, their NDJSON) in a reference cycle until
the worker's next cyclic collection, which is rare (``api.collector``): the worker's RSS grew
with every few aborts. ``api.responses.ReleasingStreamingResponse`` lets go at once.

One store and one gunicorn worker; a table of ``ROWS`` records of ~1 KB; one whole dump to warm
up; then ``ROUNDS`` rounds of ``ABORTS`` dumps each read for ``READ_BYTES`` and dropped. Prints
the worker's RSS after the warm-up and after each round. No file is written: a memory check.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from storeserver.client import StoreClient

from .bench_api import start_gunicorn, wait_ready
from .servers import Processes, child_pids, rss_bytes, start_store

ROWS = 20_000
ABORTS = 10
ROUNDS = 3
READ_BYTES = 300_000
ADMIN_EMAIL = "dump-bench-admin@example.com"
ADMIN_PASSWORD = secrets.token_urlsafe(16)


async def fill(sock: Path) -> None:
    store = StoreClient(f"unix:{sock}", timeout=60.0)
    await store.connect()
    try:
        for start in range(0, ROWS, 500):
            ops = [
                {"op": "insert", "table": "big", "record": {"id": f"r{n}", "blob": "x" * 1000}}
                for n in range(start, min(start + 500, ROWS))
            ]
            await store.call("batch", {"ops": ops})
    finally:
        await store.close()


def abort_one(port: int, token: str) -> None:
    """Start a dump, read ``READ_BYTES`` of it, and close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request = f"GET /api/v1/dump/big HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}"
        conn.sendall(request.encode() + b"\r\n\r\n")
        got = 0
        while got < READ_BYTES:
            chunk = conn.recv(65536)
            if not chunk:
                raise RuntimeError("the dump ended before the client left")
            got += len(chunk)


def main() -> int:
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dump-abort-"))
    try:
        _, sock = start_store(procs, tmp)
        asyncio.run(fill(sock))
        admin = {"ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD}
        server = start_gunicorn(procs, tmp, "api", sock, workers=1, extra_env=admin)
        wait_ready(server, "/api/v1/ready", 1, tmp)
        (worker,) = child_pids(server.proc.pid)
        with httpx.Client(base_url=server.base, timeout=60) as client:
            form = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            token = client.post("/api/v1/auth/token", data=form).json()["access_token"]
            whole = client.get("/api/v1/dump/big", headers={"Authorization": f"Bearer {token}"})
            if whole.status_code != 200 or whole.text.count("\n") != ROWS:
                raise RuntimeError(f"the warm-up dump failed: {whole.status_code}")
        time.sleep(1.0)
        seen = [rss_bytes(worker)]
        for _ in range(ROUNDS):
            for _ in range(ABORTS):
                abort_one(server.port, token)
                time.sleep(0.1)  # the worker sees the close and ends the stream
            time.sleep(1.0)
            seen.append(rss_bytes(worker))
        mib = [round(value / 2**20, 1) for value in seen]
        print(f"worker RSS (MiB) after a whole dump, then after each {ABORTS} aborted dumps: {mib}")
        print(f"growth over {ROUNDS * ABORTS} aborts: {mib[-1] - mib[0]:.1f} MiB")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
