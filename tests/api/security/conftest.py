"""Fixtures shared by the security tests."""

from __future__ import annotations

import pytest

from api.logs import configure_logging


@pytest.fixture
def structured_logs() -> None:
    """structlog through the standard library, as in the workers (``create_app`` does it), so
    ``caplog`` takes our named events (``tests/support/events.py``). A module that reads them
    says ``pytestmark = pytest.mark.usefixtures("structured_logs")``."""
    configure_logging("info")
