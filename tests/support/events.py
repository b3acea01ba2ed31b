"""API log lines as the workers write them, from ``caplog``: for tests of named events.

Our events are structlog's; unconfigured, structlog prints instead of reaching ``logging`` (and
so ``caplog``). A test module configures logging first, as ``create_app`` does in a worker
(``structured_logs`` in tests/api/security/conftest.py), then reads the records rendered by
the JSON formatter.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from api.logs import json_formatter


def logged(caplog: pytest.LogCaptureFixture, logger: str = "api.auth") -> list[dict[str, Any]]:
    """Every line of ``logger`` that ``caplog`` took, as the JSON formatter writes it."""
    formatter = json_formatter()
    return [
        orjson.loads(formatter.format(record)) for record in caplog.records if record.name == logger
    ]


def named(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The lines whose ``event`` is exactly ``event`` (what an operator's alert matches)."""
    return [line for line in logged(caplog) if line["event"] == event]
