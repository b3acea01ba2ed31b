"""storeserver.memory: the limit follows the memory the data holds, not RSS that stays high."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from storeserver.memory import MemoryGauge

MB = 1_000_000
ROOT = Path(__file__).resolve().parents[2]


class FakeProcess:
    """RSS that a trim brings down to ``after_trim``, and the free memory Python holds."""

    def __init__(self, rss: int, after_trim: int, reusable: int = 0) -> None:
        self.rss = rss
        self.after_trim = after_trim
        self.reusable = reusable
        self.trims = 0

    def trim(self) -> None:
        self.trims += 1
        self.rss = self.after_trim

    def gauge(self, limit: int, trim_s: float = 3600.0) -> MemoryGauge:
        return MemoryGauge(
            limit,
            refresh_s=0.0,
            trim_s=trim_s,
            rss_reader=lambda: self.rss,
            trimmer=self.trim,
            reusable_reader=lambda: self.reusable,
        )


def test_a_freed_spike_does_not_keep_writes_refused() -> None:
    """4,000 unauthenticated peers took RSS 178 -> 434 MB; after they left, glibc kept the
    pages and every write got MEMORY_LIMIT for minutes. Now the gauge returns them first."""
    process = FakeProcess(rss=434 * MB, after_trim=180 * MB)
    gauge = process.gauge(limit=384 * MB)
    assert not gauge.over_limit()
    assert process.trims == 1 and gauge.rss() == 180 * MB


def test_rows_deleted_at_the_limit_make_room_though_rss_stays() -> None:
    """Deleted records leave free blocks all over Python's arenas: RSS does not fall, but the
    next records fill those blocks first."""
    process = FakeProcess(rss=400 * MB, after_trim=398 * MB, reusable=150 * MB)
    gauge = process.gauge(limit=384 * MB)
    assert not gauge.over_limit()
    assert gauge.used() == 398 * MB - 384 * MB // 4  # counted up to a quarter of the limit
    process.reusable = 10 * MB  # the free blocks filled again
    assert process.gauge(limit=384 * MB).over_limit()
    # Records of other sizes cannot use the free blocks: RSS passes the limit by a quarter at
    # most.
    process.rss = process.after_trim = 480 * MB
    process.reusable = 150 * MB
    assert process.gauge(limit=384 * MB).over_limit()


def test_what_a_burst_of_reads_left_behind_does_not_keep_writes_refused_after_deletes() -> None:
    """QA: eight aggregates left RSS ~60 MB up over a 250 MB limit; with the free space
    counted up to a tenth of the limit, deleting 60 % of the rows (RSS 300 MB, much of it free
    again) kept every write refused until a restart."""
    process = FakeProcess(rss=300 * MB, after_trim=300 * MB, reusable=170 * MB)
    assert not process.gauge(limit=250 * MB).over_limit()


@pytest.mark.parametrize(
    ("rss", "reusable", "over"),
    [
        (300 * MB, 0, False),  # in use: 300, under 250 + 62.5
        (320 * MB, 0, True),  # in use past a quarter over the limit
        (400 * MB, 150 * MB, False),  # RSS high, but most of it free again (a read ended)
        (100 * MB, 0, False),
    ],
)
def test_long_reads_stop_when_the_memory_in_use_is_a_quarter_past_the_limit(
    rss: int, reusable: int, over: bool
) -> None:
    process = FakeProcess(rss=rss, after_trim=rss, reusable=reusable)
    assert process.gauge(limit=250 * MB).reads_over() is over
    assert not process.gauge(limit=0).reads_over()  # no limit


def test_data_that_fills_the_limit_is_refused_and_trims_once_per_period() -> None:
    process = FakeProcess(rss=500 * MB, after_trim=490 * MB, reusable=5 * MB)
    gauge = process.gauge(limit=384 * MB)
    for _ in range(50):
        assert gauge.over_limit()
    assert process.trims == 1  # not once per write: a trim of a big heap takes milliseconds
    often = process.gauge(limit=384 * MB, trim_s=0.0)
    for _ in range(3):
        assert often.over_limit()
    assert process.trims == 4


def test_below_the_limit_the_gauge_costs_a_read_of_rss_only() -> None:
    process = FakeProcess(rss=100 * MB, after_trim=0, reusable=50 * MB)
    gauge = process.gauge(limit=384 * MB)
    assert not gauge.over_limit()
    assert process.trims == 0 and gauge.used() == 100 * MB
    assert not process.gauge(limit=0).over_limit()  # no limit


# The real allocators, in a fresh interpreter (a clean heap, not the test run's): garbage is
# allocated and freed so that RSS stays high, and a limit set between the baseline and the
# peak must not refuse writes.
_SPIKE = """
import json
from storeserver.memory import MemoryGauge, read_rss
base = read_rss()
buffers, pinned = [], []
for i in range({count}):
    buffers.append(b"\\x01" * 65_000)  # a peer's frame buffer: glibc's heap
    pinned.append(b"\\x02" * 600)  # something that outlives it, just above it
peak = read_rss()
del buffers
freed = read_rss()
limit = base + (peak - base) // 2
print(json.dumps({{"peak": peak - base, "freed": freed - base, "limit": limit - base,
                   "over": MemoryGauge(limit).over_limit(), "after": read_rss() - base}}))
"""
_DELETES = """
import json
from storeserver.memory import MemoryGauge, read_rss
base = read_rss()
rows = [{{"id": str(i), "s": "x" * 300 + str(i)}} for i in range({count})]  # Python's arenas
peak = read_rss()
del rows[::2]  # scattered deletes: no arena comes free
freed = read_rss()
limit = freed * 100 // 105  # refused when the last rows came in; a few percent below RSS now
print(json.dumps({{"peak": peak - base, "freed": freed - base, "limit": limit - base,
                   "over": MemoryGauge(limit).over_limit(), "after": read_rss() - base}}))
"""


def _run(script: str, count: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", script.format(count=count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout.splitlines()[-1])  # after any log line
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_a_real_spike_of_freed_buffers_does_not_keep_writes_refused() -> None:
    result = _run(_SPIKE, 1500)  # ~100 MB
    assert result["peak"] > 80 * MB
    assert result["freed"] >= result["limit"]  # what kept writes refused: RSS stays up
    assert result["over"] is False
    assert result["after"] < result["limit"]


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or platform.libc_ver()[0] != "glibc",
    reason="CPython's allocator statistics, read through glibc's open_memstream",
)
def test_real_scattered_deletes_make_room() -> None:
    result = _run(_DELETES, 200_000)  # ~120 MB
    assert result["peak"] > 80 * MB
    assert result["freed"] >= result["limit"]  # what kept writes refused: RSS stays up
    assert result["over"] is False
