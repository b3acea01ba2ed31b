"""storeserver.aggregation: sums that leave the range of their type."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storeserver.aggregation import Metric, aggregate, aggregate_steps
from storeserver.builds import run_steps
from storeserver.engine import Engine
from storeserver.errors import BadRequest
from storeserver.protocol import Result, decode_body, encode_result

STAMP = 1_700_000_000_000_000_000  # a nanosecond timestamp, well inside int64
SUM = Metric("sum", "n", "s")
AVG = Metric("avg", "n", "a")


@pytest.mark.parametrize(
    ("values", "total"),
    [
        ([STAMP] * 11, STAMP * 11),  # past 2**64 - 1
        ([-(2**63)] * 2, -(2**64)),  # below -2**63
        ([2**64 - 1, 2**64 - 1, "x", None], 2 * (2**64 - 1)),  # the per-value path
        # past int64 but inside uint64: was an int (a JSON number past int64), while the
        # same amount below -2**63 was a Decimal (a string)
        ([2**63, 2**63 - 1], 2**64 - 1),
        ([STAMP] * 6, STAMP * 6),
        ([-(2**63), -1], -(2**63) - 1),
        ([2**63, "x", 1], 2**63 + 1),  # the per-value path
    ],
)
def test_an_int_sum_past_64_bits_is_an_exact_decimal(values: list[Any], total: int) -> None:
    rows = [{"n": v} for v in values]
    [result] = aggregate(rows, [], [SUM, AVG])
    assert type(result["s"]) is Decimal and result["s"] == total
    assert str(result["s"]) == str(total)
    assert type(result["a"]) is float  # an int average stays a float
    assert result["a"] == total / sum(type(v) is int for v in values)


def test_an_int_sum_inside_64_bits_stays_an_int() -> None:
    for values in ([2**63 - 1, 0], [2**63 - 2, 1], [-(2**63), 0], [1, 2]):
        [result] = aggregate([{"n": v} for v in values], [], [SUM])
        assert type(result["s"]) is int and result["s"] == sum(values)


@pytest.mark.parametrize("stray", [None, "x"])  # the fast path, and the per-value one
def test_a_float_sum_past_the_float_range_is_a_decimal_and_avg_still_fits(stray: Any) -> None:
    values = [1e308, 1e308, 0.1, 0.2, stray]
    [result] = aggregate([{"n": v} for v in values], [], [SUM, AVG])
    # both were inf before (null through the API), with no error
    assert type(result["s"]) is Decimal and result["s"] == Decimal("2E+308")
    assert result["a"] == 5e307
    [negative] = aggregate([{"n": -v} for v in values if type(v) is float], [], [SUM, AVG])
    assert negative["s"] == Decimal("-2E+308") and negative["a"] == -5e307
    big = (1.7976931348623157e308, 1e308, 3)
    [with_ints] = aggregate([{"n": v} for v in big], [], [SUM])
    exact = sum(map(Decimal, big))
    assert abs(with_ints["s"] - exact) / exact < Decimal(2**-52)  # a float sum's precision


def test_a_float_sum_that_overflows_on_the_way_comes_back() -> None:
    values = [1e308, 1e308, -1e308, 0.5]
    [result] = aggregate([{"n": v} for v in values], [], [SUM, AVG])
    assert result["s"] == 1e308 and type(result["s"]) is float  # inf before
    assert result["a"] == 1e308 / 4


@pytest.mark.parametrize("rows_per_step", [1, 2, 3])
def test_an_overflowing_float_sum_fed_in_slices_equals_one_pass(rows_per_step: int) -> None:
    rows = [{"n": v} for v in (0.1, 1e308, "x", 1e308, 2.5, -1e308, 1e-300, 7)]
    whole = aggregate(rows, [], [SUM, AVG])
    stepped = run_steps(aggregate_steps([rows], [], [SUM, AVG], rows_per_step))
    assert repr(stepped) == repr(whole)
    assert whole[0]["s"] == 1e308 + 2.5 + 7


def test_infinite_values_still_sum_to_infinity() -> None:
    [result] = aggregate([{"n": v} for v in (float("inf"), 1e308, 1e308)], [], [SUM, AVG])
    assert result["s"] == float("inf") and result["a"] == float("inf")


@pytest.mark.parametrize(
    "values",
    [
        # kept from before the store bounded Decimals (1E+100) and refused infinities
        [Decimal("9E+999999999"), Decimal("9E+999999999")],
        [Decimal("1E+999999999999999999"), 1],
        [Decimal("1.5"), float("inf")],
        [Decimal("1.5"), float("inf"), float("-inf")],
    ],
)
def test_a_decimal_sum_the_wire_cannot_carry_is_bad_request(values: list[Any]) -> None:
    """It was a Decimal infinity, which the encoder refused: the client got PROTOCOL_ERROR
    (a malformed frame, per the docs) for a well-formed request."""
    for metric in (SUM, AVG):
        with pytest.raises(BadRequest, match="out of range") as info:
            aggregate([{"n": v} for v in values], [], [metric])
        assert info.value.code == "BAD_REQUEST"
        assert info.value.details == {"arg": "metrics", "field": "n"}


def test_a_sum_of_values_replayed_from_an_old_journal_is_bad_request_from_the_engine() -> None:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    for n in range(2):  # replay takes what an older store kept, unchecked
        stamp = f"2023-11-14T22:13:2{n}.000000Z"
        record = {"id": f"r{n}", "created_at": stamp, "updated_at": stamp, "version": 1}
        engine.apply_change(("put", "t", {**record, "n": Decimal("9E+999999999")}))
    metrics = [{"op": "sum", "field": "n", "as": "s"}]
    with pytest.raises(BadRequest, match="the sum of n is out of range"):
        engine.run_job(engine.execute("aggregate", {"table": "t", "metrics": metrics}))


def test_a_big_sum_goes_over_the_wire() -> None:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    for _ in range(11):
        engine.execute("insert", {"table": "t", "record": {"n": STAMP}})
    metrics = [
        {"op": "sum", "field": "n", "as": "s"},
        {"op": "min", "field": "n", "as": "lo"},
        {"op": "max", "field": "n", "as": "hi"},
    ]
    result = engine.run_job(engine.execute("aggregate", {"table": "t", "metrics": metrics}))
    # encoding the answer raised "cannot encode int" before: a 500 at the API
    decoded = decode_body(encode_result(1, result)[4:])
    assert isinstance(decoded, Result)
    assert decoded.value["items"] == [{"s": Decimal(STAMP * 11), "lo": STAMP, "hi": STAMP}]


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
_METRICS = [Metric(op, "v", f"{op}_v") for op in ("count", "sum", "avg", "min", "max")] + [
    Metric("count", None, "rows")
]


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=40),
    grouped=st.booleans(),
    rows_per_step=st.integers(1, 13),
)
def test_metrics_fed_a_slice_per_step_equal_one_pass(
    values: list[Any], grouped: bool, rows_per_step: int
) -> None:
    """A big group (no group_by: the whole table) is fed to its metrics a slice per step;
    sums stay exact or left to right, extremes agree across mixed types: as in one pass."""
    rows = [{"v": v, "g": i % 3} for i, v in enumerate(values)]
    group_by = ["g"] if grouped else []
    whole = aggregate(rows, group_by, _METRICS)
    stepped = run_steps(aggregate_steps([rows], group_by, _METRICS, rows_per_step))
    assert repr(stepped) == repr(whole)  # repr: types too (1 vs 1.0 vs Decimal)


def test_group_by_puts_equal_numbers_in_one_group_whatever_their_type() -> None:
    """Decimals are grouped by their ``index_key`` (not their own hash, which clients can
    make collide): equal values of any numeric type still share one group."""
    p = 2**61 - 1
    values = [Decimal("1.50"), 1.5, Decimal("1.5"), Decimal(p), p, Decimal(2 * p), 2, Decimal(2)]
    rows = [{"g": v} for v in values]
    groups = aggregate(rows, ["g"], [Metric("count", None, "n")])
    assert [(g["g"], g["n"]) for g in groups] == [
        (Decimal("1.50"), 3),
        (Decimal(p), 2),
        (Decimal(2 * p), 1),
        (2, 2),
    ]


def test_a_decimal_sum_past_its_precision_is_the_same_however_it_is_sliced() -> None:
    """QA: slices sized by time made one aggregate give three different sums: each slice was
    summed apart, then added, each sum rounded to 60 digits. Now left to right from the
    running total, wherever the slices fall."""
    rows = [{"n": Decimal("1E+40")}] + [{"n": Decimal("1E-20")} for _ in range(2_000)]
    metrics = [Metric("sum", "n", "s")]
    totals = {
        repr(run_steps(aggregate_steps([rows], [], metrics, rows_per_step)))
        for rows_per_step in (1, 3, 64, 2_001, 10_000)
    }
    assert len(totals) == 1, totals


@pytest.mark.parametrize(
    "values",
    [
        ["9" * 70 + ".5"],  # one value of 71 digits: its own sum
        ["1" + "0" * 60 + ".01", "0.01"],
        ["9" * 100, "1E-10000", "-" + "9" * 100],  # the widest a stored decimal can be
    ],
)
def test_a_decimal_sum_is_exact_for_any_values_the_store_keeps(values: list[str]) -> None:
    """QA: sums were rounded to 60 digits, so the sum of one 71-digit value was not that
    value, though the docs call decimal sums exact."""
    engine = Engine()
    for value in values:
        engine.execute("insert", {"table": "t", "record": {"v": Decimal(value)}})
    metrics = [{"op": "sum", "field": "v", "as": "s"}]
    [row] = engine.execute("aggregate", {"table": "t", "metrics": metrics})["items"]
    assert Fraction(row["s"]) == sum(Fraction(Decimal(v)) for v in values)  # exactly
