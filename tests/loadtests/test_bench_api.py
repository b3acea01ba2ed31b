"""The login latency percentiles ``make bench-api`` reports."""

from __future__ import annotations

import pytest

from loadtests.bench_api import percentile


@pytest.mark.parametrize(
    ("n", "p", "rank"),
    [
        (20, 95, 19),
        (20, 50, 10),
        (60, 95, 57),
        (100, 95, 95),
        (100, 99, 99),
        (1, 99, 1),
        (7, 50, 4),
    ],
)
def test_percentile_is_the_nearest_rank(n: int, p: float, rank: int) -> None:
    """QA: the p95 of 20 logins was their maximum (rank 20): ``round(x + 0.5)`` rounds 19.5
    up to 20, Python rounding halves to even."""
    values = [float(i) for i in range(n, 0, -1)]  # unsorted: ranks 1..n
    assert percentile(values, p) == rank
