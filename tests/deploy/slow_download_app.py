"""The real application plus ``GET /slow-download``: a streamed body that takes a minute, as a
large CSV export to a slow client does; what a graceful stop does to a download it cannot wait
for.

start_stack(app="tests.deploy.slow_download_app:create_slow_download_app()")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from api.main import create_app


def create_slow_download_app() -> FastAPI:
    app = create_app()

    @app.get("/slow-download")
    async def slow_download() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for number in range(600):
                yield f"{number}\n".encode()
                await asyncio.sleep(0.1)

        return StreamingResponse(lines(), media_type="text/plain")

    return app
