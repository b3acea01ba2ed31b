"""Count the calls of a module's function, for tests that bound work by calls, not time."""

from __future__ import annotations

from typing import Any

import pytest


class CallCount:
    calls = 0


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> CallCount:
    """Replace ``module.name`` (as the module's own code looks it up) with a counting wrapper."""
    counter = CallCount()
    real = getattr(module, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return counter
