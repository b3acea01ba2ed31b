"""Order models. ``total_price`` is an exact decimal: send it as a string ("19.99") to keep it
exact end to end (a JSON number is accepted too); it is stored with exactly two places, so
responses always carry it as a string of that one form ("5", 5.0 and "5.00" are all "5.00")."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from api.queries import OUT_OF_RANGE
from api.schemas.lookalikes import refuse_invisible_name

# Shown to people like a user's full_name, so held to the same rules (QA: NUL, ANSI escapes,
# bidi overrides and a lone zero-width space were stored and exported as sent).
ProductName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(refuse_invisible_name),
    Field(
        description="1 to 200 characters, some visible; surrounding whitespace is trimmed;"
        " no control or format characters (newlines, escapes, bidi overrides, zero-width)"
    ),
]
Quantity = Annotated[int, Field(strict=True, gt=0, le=1_000_000_000)]


PRICE_WHOLE_DIGITS, PRICE_PLACES = 12, 2  # max_digits 14 = 12 before the point + 2 after
_PRICE_PATTERN = r"^\s*\+?(?=[^eE]*[1-9])(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_PRICE_TEXT = re.compile(_PRICE_PATTERN, re.ASCII)
_CENT = Decimal("0.01")


def _price_text(value: object) -> object:
    """A string price must be the documented notation (ASCII digits): ``Decimal()`` alone also
    takes "1_000", Arabic-Indic and full-width digits, which the OpenAPI pattern refuses."""
    if isinstance(value, str) and _PRICE_TEXT.match(value) is None:
        raise PydanticCustomError(
            "decimal_parsing", 'Input should be a positive decimal number, as in "19.99"'
        )
    return value


def _cents(value: Decimal) -> Decimal:
    """The same amount with exactly two places, whatever notation or JSON type it came in:
    "5", 5, 5.0, "5.00" and "5e0" are all 5.00, "1e2" is 100.00 (never 1E+2), "1.2300" is
    1.23. An amount with nonzero digits past the cents is left as it is, for the
    ``decimal_places`` limit to refuse.

    Runs before pydantic's digit limits, so the size is checked first: writing out
    "1e999999999" would take a billion characters and hold the worker for minutes.
    """
    exponent = value.as_tuple().exponent  # an int for finite values (gt=0 refuses the rest)
    if not isinstance(exponent, int):
        return value
    if value.adjusted() >= PRICE_WHOLE_DIGITS:
        raise PydanticCustomError(
            "decimal_whole_digits",
            "Decimal input should have no more than {whole_digits} digits before the decimal point",
            {"whole_digits": PRICE_WHOLE_DIGITS},
        )
    cents = value.quantize(_CENT)  # at most 14 digits here: exact, no context overflow
    return cents if cents == value else value


_PRICE_DOC = (
    "Exact amount with at most 2 decimal places (stored and returned with exactly 2);"
    " a string keeps it exact"
)
Price = Annotated[
    Decimal,
    BeforeValidator(_price_text),
    AfterValidator(_cents),
    Field(gt=0, max_digits=14, decimal_places=2),
    # Pydantic cannot put gt/max_digits/decimal_places on its number-or-string schema, and
    # wrote them as keywords JSON Schema does not know: the limits, in its own terms. The
    # string form is any positive decimal notation (a nonzero digit before any exponent); its
    # places are checked by the server.
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 999_999_999_999.99},
                {
                    "type": "string",
                    "pattern": _PRICE_PATTERN,
                },
            ],
            "description": _PRICE_DOC,
            "examples": ["19.99"],
        }
    ),
]


# What the field takes: an ISO time with a zone, or seconds since 1970 (UTC), as pydantic
# reads a number; documented as both (QA: the document said a string only).
OrderDate = Annotated[
    AwareDatetime,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "description": "seconds since 1970-01-01T00:00:00Z"},
            ]
        }
    ),
]


class OrderCreate(BaseModel):
    """A new order for an existing user (409 if ``user_id`` names no user). ``order_date`` is
    kept only from an admin (``POST /orders``, and the admin-only ``/data/orders`` and
    transactions); anyone else's order is dated by the server."""

    model_config = ConfigDict(
        extra="forbid",
        # A number is always seconds: pydantic's default reads one past ±2e10 as milliseconds,
        # so year 0001 in seconds was stored as 1968 and a future date as 1970 (QA).
        val_temporal_unit="seconds",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1",
                    "product_name": "Widget Pro",
                    "quantity": 2,
                    "total_price": "39.98",
                }
            ]
        },
    )

    user_id: UUID
    product_name: ProductName
    quantity: Quantity
    total_price: Price
    order_date: OrderDate | None = Field(
        default=None,
        description="Admin only: when the order was placed (with a time zone, or a number of"
        " seconds since 1970 in UTC; not in the future); default, and always for non-admins:"
        " the server's time (a non-admin's is still validated: 422 if it breaks these rules)",
        examples=["2024-05-01T12:00:00Z"],
    )

    @field_validator("order_date")
    @classmethod
    def check_order_date(cls, value: datetime | None) -> datetime | None:
        """In years 0001-9999 once in UTC (how it is stored), and not in the future."""
        if value is None:
            return value
        try:
            # Stored in UTC: "0001-01-01T00:30:00+01:00" is valid ISO but before year 1 there.
            value.astimezone(UTC)
        except OverflowError:  # a 500 if it escaped; pydantic turns a ValueError into a 422
            raise ValueError(OUT_OF_RANGE) from None
        if value > datetime.now(UTC):
            raise ValueError("may not be in the future")
        return value


class OrderUpdate(BaseModel):
    """A partial update; no field may be null."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"quantity": 3}]})

    # ``None`` is the "not sent" default only: the document shows no null (SkipJsonSchema),
    # and a null sent is refused below.
    user_id: UUID | SkipJsonSchema[None] = None
    product_name: ProductName | SkipJsonSchema[None] = None
    quantity: Quantity | SkipJsonSchema[None] = None
    total_price: Price | SkipJsonSchema[None] = None

    @field_validator("user_id", "product_name", "quantity", "total_price")
    @classmethod
    def refuse_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null")
        return value


class OrderPublic(BaseModel):
    """An order as every endpoint returns it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0d6c1c52-8a7e-4f0e-b8b8-5a1f8f7b2c11",
                    "user_id": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1",
                    "product_name": "Widget Pro",
                    "quantity": 2,
                    "total_price": "39.98",
                    "order_date": "2024-05-01T12:00:00.000000Z",
                    "created_at": "2024-05-01T12:00:00.000000Z",
                    "updated_at": "2024-05-01T12:00:00.000000Z",
                    "version": 1,
                }
            ]
        }
    )

    id: str
    user_id: str
    product_name: str
    quantity: int
    total_price: str = Field(
        description="Exact decimal, as a string with exactly two places (an order written"
        " before prices were stored that way keeps the form it was sent in)",
        examples=["39.98"],
    )
    order_date: datetime
    created_at: datetime
    updated_at: datetime
    version: int
