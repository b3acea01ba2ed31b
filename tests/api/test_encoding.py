"""Response JSON (``api.encoding``): decimals travel as strings in plain notation."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from api.encoding import dumps


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("19.99"), "19.99"),
        (Decimal("1E+2"), "100"),  # a CSV cell "1e2"
        (Decimal("5.000000000000000000000000000E+49"), "5" + "0" * 49),  # an average
        (Decimal("1E-7"), "0.0000001"),
        (Decimal("-2.5E+3"), "-2500"),
    ],
)
def test_decimals_are_strings_in_plain_notation(value: Decimal, text: str) -> None:
    assert orjson.loads(dumps({"v": value})) == {"v": text}


def test_a_huge_exponent_is_not_written_out() -> None:
    """Plain notation for 1E+500 would be 501 digits (and 1E+999999 a megabyte)."""
    assert orjson.loads(dumps([Decimal("1E+500"), Decimal("1E-500")])) == ["1E+500", "1E-500"]
