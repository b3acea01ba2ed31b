"""The soak's judgement (``loadtests.soak``), offline: samples in the Sampler's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import load, soak


def samples(workers: dict[str, list[tuple[float, float]]], end: float) -> list[dict]:
    """A sample every 5 s to ``end``: the store flat at 100 MB, each worker's RSS (MB) by time
    while it lives (``[(from_s, mb), ...]``, a worker absent after its last point's time)."""
    out = []
    t = 0.0
    while t <= end:
        living = {}
        for pid, points in workers.items():
            if points[0][0] <= t <= points[-1][0]:
                mb = max(v for s, v in points if s <= t)
                living[pid] = {"rss": mb * 2**20}
        out.append({"t": t, "store_rss": 100 * 2**20, "workers": living})
        t += 5.0
    return out


def test_a_worker_that_dies_before_the_end_is_not_judged_flat() -> None:
    """QA: a worker leaking until it was killed (gunicorn starts another) had no samples in
    the last minute and was dropped from the verdict without a word: "flat"."""
    leak = [(float(t), 100.0 + t) for t in range(0, 241, 5)]  # +1 MB/s, gone at 240 s
    steady = [(0.0, 100.0), (360.0, 100.0)]
    replacement = [(245.0, 100.0), (360.0, 100.0)]
    result = soak.analyse(
        samples({"101": steady, "102": leak, "103": replacement}, 360.0), warmup_s=90.0
    )
    assert result["unjudged"] == ["worker 102"]
    assert set(result["processes"]) == {"store", "worker 101"}
    assert result["flat"] is False
    flat = soak.analyse(samples({"101": steady}, 360.0), warmup_s=90.0)
    assert flat["flat"] is True and "unjudged" not in flat


def test_an_interrupted_soak_judges_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: Ctrl-C during the load step (130, no new results) went on to judge the previous
    run's soak.json and rewrite it, with its plot."""
    previous = {"run_id": "earlier", "samples": []}
    (tmp_path / "soak.json").write_text(json.dumps(previous))
    monkeypatch.setattr(load, "RESULTS", tmp_path)
    monkeypatch.setattr(load, "main", lambda argv: 130)
    drawn: list[object] = []
    monkeypatch.setattr(soak.plots, "soak_rss", lambda *a: drawn.append(a))
    assert soak.main(["--minutes", "0.1"]) == 130
    assert json.loads((tmp_path / "soak.json").read_text()) == previous
    assert drawn == [] and "no verdict" in capsys.readouterr().out
