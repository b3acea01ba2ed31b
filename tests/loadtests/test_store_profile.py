"""``loadtests.store_profile`` (the in-process breakdown ``make bench-store`` prints) runs."""

from __future__ import annotations

import asyncio
import gc

import pytest

from loadtests import store_profile
from storeserver import connection


def test_the_breakdown_runs_times_every_stage_and_puts_the_turn_limits_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small: this checks that it runs (it broke once on the handshake timer), not the figures.
    monkeypatch.setattr(store_profile, "N", 64)
    monkeypatch.setattr(store_profile, "GET_IDS", 100)
    # Each stage collects garbage before it is timed: in a test session's heap that took
    # ~0.5 s a time (~20 s a run), and the figures are not what this checks.
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)
    before = connection.TURN_BUDGET, connection.TURN_REPLY_BYTES
    out = asyncio.run(store_profile._in_a_loop())
    assert set(out) == {"get", "insert"}
    assert "StoreServer.handle (run + encode + stats)" in out["get"]
    for stages in out.values():
        assert stages["data_received, 1 frame per read"] > 0
        assert all(value >= 0 for value in stages.values())
    # It lifts them for its loop-less harness; left lifted, they broke the fairness tests
    # that ran after it in the same session.
    assert before == (connection.TURN_BUDGET, connection.TURN_REPLY_BYTES)
