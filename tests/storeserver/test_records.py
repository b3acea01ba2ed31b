"""storeserver.records: which values the store keeps, and which a filter may compare with."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import pytest

from storeserver import records
from storeserver.engine import Engine
from storeserver.errors import BadRequest
from storeserver.protocol import Result, decode_body, encode_result
from storeserver.records import check_value, copy_value
from tests.support.engine import FakeClock, fail, run

MAX_DECIMAL_DIGITS = 100  # records.MAX_DECIMAL_DIGITS, MAX_DECIMAL_PLACES: the documented bounds
MAX_DECIMAL_PLACES = 10_000

LONG = Decimal("7" * 300_000)  # held a schema-checked insert 3.9 s (int() is quadratic)


@pytest.fixture
def engine() -> Engine:
    return Engine(clock=FakeClock())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Decimal("1" * (MAX_DECIMAL_DIGITS + 1)), "at most 100 digits"),
        (Decimal("1." + "0" * MAX_DECIMAL_DIGITS), "at most 100 digits"),  # zeros are digits
        (LONG, "at most 100 digits"),
        (Decimal("1E+100"), "at most 100 digits before its point"),
        (Decimal("-9.9E+100"), "at most 100 digits before its point"),
        (Decimal("1E+999999999999999999"), "at most 100 digits before its point"),
        (Decimal("1E-10001"), "at most 10000 digits after its point"),
        (Decimal("1E-999999999"), "at most 10000 digits after its point"),
        (Decimal("Infinity"), "finite"),
        (Decimal("-Infinity"), "finite"),
        (Decimal("NaN"), "finite"),
        (math.inf, "NaN and infinities"),
        (-math.inf, "NaN and infinities"),
        (math.nan, "NaN and infinities"),
        (2**63, "signed 64-bit range"),
        (2**64 - 1, "signed 64-bit range"),
        (-(2**63) - 1, "signed 64-bit range"),
    ],
)
def test_a_value_outside_the_documented_range_is_refused_with_the_reason(
    engine: Engine, value: Any, reason: str
) -> None:
    for record in ({"v": value}, {"v": [1, {"w": value}]}):
        error = fail(engine, BadRequest, "insert", table="t", record=record)
        assert error.code == "BAD_REQUEST" and reason in error.message
        assert error.details == {"reason": "value"}
    run(engine, "insert", table="t", record={"id": "r", "v": 1})
    for command, args in [
        ("patch", {"id": "r", "changes": {"v": value}}),
        ("replace", {"id": "r", "record": {"v": value}}),
    ]:
        error = fail(engine, BadRequest, command, table="t", **args)
        assert reason in error.message
    assert run(engine, "get", table="t", id="r")["v"] == 1
    with pytest.raises(BadRequest, match=reason):
        copy_value(value)  # kv_set's check too


@pytest.mark.parametrize(
    "value",
    [
        Decimal("9" * MAX_DECIMAL_DIGITS),
        Decimal("-9.99E+99"),
        Decimal("1E-" + str(MAX_DECIMAL_PLACES)),
        Decimal("1" * MAX_DECIMAL_DIGITS + "E-" + str(MAX_DECIMAL_PLACES)),
        Decimal("0." + "0" * (MAX_DECIMAL_PLACES - 1) + "1"),
        Decimal("999999999999.99"),  # the largest price the API takes (14 digits)
        Decimal("0E-10000"),
        Decimal("-0"),
        2**63 - 1,
        -(2**63),
        1.7976931348623157e308,
        -0.0,
    ],
)
def test_values_at_the_bounds_are_kept(engine: Engine, value: Any) -> None:
    stored = run(engine, "insert", table="t", record={"v": value})
    assert repr(run(engine, "get", table="t", id=stored["id"])["v"]) == repr(value)


@pytest.mark.parametrize(
    "value",
    # what api.services.csvio makes of the cells 12.50, -3., 0.0000001, a 100-digit number and
    # [1.25, {"a": 0.5}] (tests/api/test_csv_import_decimal_bounds.py imports longer ones)
    [
        Decimal("12.50"),
        Decimal("-3"),
        Decimal("1E-7"),
        Decimal("1" * 60 + "." + "2" * 40),
        [Decimal("1.25"), {"a": Decimal("0.5")}],
    ],
)
def test_the_decimals_a_csv_import_makes_are_kept(engine: Engine, value: Any) -> None:
    run(engine, "insert", table="t", record={"v": value})


def test_a_long_decimal_is_refused_before_a_schema_sees_it(engine: Engine) -> None:
    run(engine, "set_schema", table="t", schema={"properties": {"v": {"multipleOf": 0.01}}})
    started = time.perf_counter()
    error = fail(engine, BadRequest, "insert", table="t", record={"v": LONG})
    assert time.perf_counter() - started < 0.2
    assert "at most 100 digits" in error.message
    assert run(engine, "count", table="t") == 0


@pytest.mark.parametrize(
    "bound",
    # query bounds the API passes: simply past every stored value
    [Decimal("1e999999999999999999"), Decimal("-1E+400"), Decimal("1E-999999999")],
)
def test_a_filter_may_compare_with_a_decimal_outside_the_stored_range(
    engine: Engine, bound: Decimal
) -> None:
    run(engine, "insert", table="t", record={"v": Decimal("19.99")})
    check_value(bound)
    check_value([bound, 1])
    below = run(engine, "count", table="t", where=[["v", "lt", bound]])
    assert below == (1 if bound > 1 else 0)
    assert run(engine, "count", table="t", where=[["v", "in", [bound]]]) == 0


@pytest.mark.parametrize("bound", [LONG, Decimal("NaN"), math.inf, 2**64 - 1])
def test_a_filter_operand_is_still_bounded_in_digits_and_finite(engine: Engine, bound: Any) -> None:
    run(engine, "insert", table="t", record={"v": 1})
    fail(engine, BadRequest, "count", table="t", where=[["v", "lt", bound]])


def test_the_quick_path_agrees_with_the_rule() -> None:
    """``decimal_problem`` skips ``as_tuple`` for short texts: same answers either way."""
    from storeserver.records import decimal_problem

    assert (records.MAX_DECIMAL_DIGITS, records.MAX_DECIMAL_PLACES) == (100, 10_000)
    for digits in (1, 14, 99, 100, 101):
        for exponent in (-10_100, -10_001, -10_000, -9_901, -9_900, -2, 0, 99 - digits, 100):
            value = Decimal(f"{'3' * digits}E{exponent}")
            _, coefficient, _ = value.as_tuple()
            bad_digits = len(coefficient) > MAX_DECIMAL_DIGITS
            out_of_range = value.adjusted() >= 100 or exponent < -MAX_DECIMAL_PLACES
            assert (decimal_problem(value) is None) == (not bad_digits and not out_of_range)
            assert (decimal_problem(value, stored=False) is None) == (not bad_digits)


def test_sums_of_the_largest_decimals_still_encode(engine: Engine) -> None:
    big = Decimal("9" * MAX_DECIMAL_DIGITS)
    for _ in range(3):  # (-big would round to the context's 28 digits: 1.000...E+100)
        run(engine, "insert", table="t", record={"v": big, "w": big.copy_negate()})
    metrics = [{"op": op, "field": f, "as": f"{op}_{f}"} for op in ("sum", "avg") for f in "vw"]
    result = run(engine, "aggregate", table="t", metrics=metrics)
    [row] = result["items"]
    assert row["sum_v"] == row["sum_w"].copy_negate() > Decimal("2.9E+100")
    decoded = decode_body(encode_result(1, result)[4:])  # was PROTOCOL_ERROR past the range
    assert isinstance(decoded, Result) and decoded.value == result
