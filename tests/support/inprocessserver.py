"""A uvicorn server in a thread of the test process, on a real socket: for tests of the HTTP
protocol (``api.connections``) in front of a small ASGI app, without gunicorn or the store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.support.stack import free_port


@contextmanager
def serving(app: Any, protocol: type, **config: Any) -> Iterator[int]:
    """Serve ``app`` over ``protocol`` on a free local port (yielded) until the block ends;
    ``config``: more ``uvicorn.Config`` settings."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=protocol,
            loop="uvloop",
            lifespan="off",
            log_level="warning",
            access_log=False,
            **config,
        )
    )
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        for _ in range(500):  # a failure bound, not a timing check
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "the server did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
