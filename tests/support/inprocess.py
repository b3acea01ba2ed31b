"""A client for the app called in this process, with no server (``httpx.ASGITransport``)."""

from __future__ import annotations

from typing import Any

import httpx


def in_process(app: Any) -> httpx.AsyncClient:
    """``async with in_process(app) as client``: exceptions the app lets out are answered as
    its 500 handler answers them, as under uvicorn, instead of raised into the test."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")
