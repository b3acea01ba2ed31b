"""``loadtests.store_profile`` (the in-process breakdown ``make bench-store`` prints) runs."""

from __future__ import annotations

import asyncio

import pytest

from loadtests import store_profile


def test_the_breakdown_runs_and_times_every_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small: this checks that it runs (it broke once on the handshake timer), not the figures.
    monkeypatch.setattr(store_profile, "N", 64)
    monkeypatch.setattr(store_profile, "GET_IDS", 100)
    out = asyncio.run(store_profile._in_a_loop())
    assert set(out) == {"get", "insert"}
    assert "StoreServer.handle (run + encode + stats)" in out["get"]
    for stages in out.values():
        assert stages["data_received, 1 frame per read"] > 0
        assert all(value >= 0 for value in stages.values())


def test_the_profile_leaves_the_servers_turn_limits_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It lifts them for its loop-less harness; left lifted, they broke the fairness tests
    that ran after it in the same session."""
    from storeserver import connection

    monkeypatch.setattr(store_profile, "N", 64)
    monkeypatch.setattr(store_profile, "GET_IDS", 100)
    before = connection.TURN_BUDGET, connection.TURN_REPLY_BYTES
    asyncio.run(store_profile._in_a_loop())
    assert before == (connection.TURN_BUDGET, connection.TURN_REPLY_BYTES)
