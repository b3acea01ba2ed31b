"""``make soak``: a long run at moderate load; is the memory of the store and the workers flat?

Runs ``loadtests.load`` against a local stack (``--users`` users, default 30, for ``--minutes``,
default 6) with ``LOAD_MAX_RECORDS`` set, so each simulated user keeps a bounded number of
orders (it deletes before creating past the bound): the data set stops growing early, and what
memory still grows after that is a leak candidate. RSS of the store and of every gunicorn worker
is sampled every ``--sample`` seconds (default 5). After the ``--warmup`` (default 90 s), per
process: the change between the first and the last minute (medians), and the least-squares slope
in MB per minute; a process is "flat" when the change is under both 10 MB and 5 %.

Writes ``loadtests/results/soak.json`` (and locust's soak_* files) and ``docs/img/soak_rss.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from . import load, plots

FLAT_MB = 10.0
FLAT_SHARE = 0.05


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes) in MB per minute."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points) or 1e-9
    return sum((t - mt) * (v - mv) for t, v in points) / den * 60 / 2**20


def analyse(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    series: dict[str, list[tuple[float, float]]] = {"store": []}
    for s in samples:
        series["store"].append((s["t"], s["store_rss"]))
        for pid, w in s["workers"].items():
            series.setdefault(f"worker {pid}", []).append((s["t"], w["rss"]))
    end = max((s["t"] for s in samples), default=0.0)
    out: dict[str, Any] = {"warmup_s": warmup_s, "duration_s": end, "processes": {}}
    for name, points in series.items():
        after = [(t, v) for t, v in points if t >= warmup_s]
        first = [v for t, v in after if t < warmup_s + 60]
        last = [v for t, v in after if t >= end - 60]
        if not first:
            continue  # started after the first minute: a replacement, judged by its end
        if not last:
            # Gone before the end (killed, or recycled by gunicorn): not judged flat; a
            # worker that leaked until it was killed must not pass unseen (QA).
            out.setdefault("unjudged", []).append(name)
            continue
        start_mb, end_mb = statistics.median(first) / 2**20, statistics.median(last) / 2**20
        change = end_mb - start_mb
        out["processes"][name] = {
            "rss_after_warmup_mb": start_mb,
            "rss_end_mb": end_mb,
            "change_mb": change,
            "change_share": change / start_mb if start_mb else 0.0,
            "slope_mb_per_min": slope_mb_per_min(after),
            "peak_mb": max(v for _, v in points) / 2**20,
            "flat": abs(change) < FLAT_MB and abs(change) < FLAT_SHARE * start_mb,
        }
    out["flat"] = (
        bool(out["processes"])
        and not out.get("unjudged")
        and all(p["flat"] for p in out["processes"].values())
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak")
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=90.0)
    p.add_argument("--sample", type=float, default=5.0)
    p.add_argument("--max-records", type=int, default=20)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ["LOAD_MAX_RECORDS"] = str(args.max_records)
    path = load.RESULTS / "soak.json"
    before = path.stat().st_mtime_ns if path.exists() else None
    code = load.main(
        [
            "--prefix",
            "soak",
            "--users",
            str(args.users),
            "--spawn-rate",
            "5",
            "--run-time",
            f"{round(args.minutes * 60)}s",
            "--sample",
            str(args.sample),
        ]
    )
    if not path.exists() or path.stat().st_mtime_ns == before:
        # Interrupted (Ctrl-C: 130) or failed before the run wrote its results: there is
        # nothing of this run to judge (QA: the previous run's file was judged and rewritten).
        print(f"  soak: the load run ended ({code}) without results; no verdict, nothing written")
        return code or 1
    data = json.loads(path.read_text())
    data["soak"] = analyse(data.get("samples", []), args.warmup)
    data["soak"]["max_records_per_user"] = args.max_records
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    plots.soak_rss(data.get("samples", []), args.warmup)
    print()
    for name, r in data["soak"]["processes"].items():
        print(
            f"  {name:14} after warm-up {r['rss_after_warmup_mb']:7.1f} MB, end "
            f"{r['rss_end_mb']:7.1f} MB, change {r['change_mb']:+6.1f} MB, slope "
            f"{r['slope_mb_per_min']:+.2f} MB/min: {'flat' if r['flat'] else 'GROWING'}"
        )
    for name in data["soak"].get("unjudged", []):
        print(f"  {name:14} ended before the run did: not judged (a worker killed or replaced)")
    print(f"  soak verdict: {'flat after warm-up' if data['soak']['flat'] else 'NOT flat'}")
    print("  wrote loadtests/results/soak.json and docs/img/soak_rss.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
