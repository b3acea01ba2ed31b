"""Fixtures shared by the API tests (the stack, the clients: ``tests/conftest.py``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.stack import Stack


@pytest.fixture(scope="module")
def spec(stack: Stack) -> dict[str, Any]:
    """The OpenAPI document the running stack serves (``test_openapi_document`` reads the
    app's own, in-process, under the same name)."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        document: dict[str, Any] = http.get("/openapi.json").json()
    return document
