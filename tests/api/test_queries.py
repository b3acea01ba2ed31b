"""List-query parsing: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ApiError
from api.queries import (
    EXPANDABLE,
    FINER_THAN_STORED,
    OUT_OF_RANGE,
    OUTSIDE_INT64,
    RESERVED,
    Fields,
    ListQuery,
    Page,
    build_list_query,
    parse_filter,
    parse_scalar,
    parse_sort,
    parse_timestamp,
    store_time,
)
from api.services import orders, users


def build(
    params: list[tuple[str, str]],
    fields: Fields | None = users.FIELDS,
    reserved: frozenset[str] = RESERVED,
    *,
    sort: str | None = None,
    after: str | None = None,
    before: str | None = None,
) -> ListQuery:
    return build_list_query(params, Page(2, 10), sort, after, before, fields, reserved)


def test_page_offset_and_find_args() -> None:
    query = build([])
    assert query.find_args("users") == {"table": "users", "offset": 10, "limit": 10}


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("age", "30", ["age", "eq", 30]),
        ("age__gt", "30", ["age", "gt", 30]),
        ("age__gte", "-1", ["age", "gte", -1]),
        ("age__lt", "+5", ["age", "lt", 5]),
        ("age__ne", "7", ["age", "ne", 7]),
        ("age__in", "1,2,3", ["age", "in", [1, 2, 3]]),
        ("email", "a@b.co", ["email", "eq", "a@b.co"]),
        ("full_name__contains", "Ada", ["full_name", "contains", "Ada"]),
        ("created_at__gte", "2024-01-01", ["created_at", "gte", "2024-01-01T00:00:00.000000Z"]),
    ],
)
def test_typed_filters(key: str, raw: str, expected: list[object]) -> None:
    assert parse_filter(key, raw, users.FIELDS) == expected


def test_decimal_filter_is_exact() -> None:
    assert parse_filter("total_price__gte", "10.10", orders.FIELDS) == [
        "total_price",
        "gte",
        Decimal("10.10"),
    ]


@pytest.mark.parametrize(
    ("key", "named"),
    [("nope", "nope"), ("age__between", "between"), ("password_hash", "password_hash")],
)
def test_unknown_field_or_operator_is_400_naming_it(key: str, named: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_filter(key, "1", users.FIELDS)
    assert info.value.status_code == 400
    assert named in info.value.message
    assert info.value.details[0]["field"] == key


@pytest.mark.parametrize("fields", [orders.FIELDS, users.FIELDS])
def test_expand_is_an_unknown_field_where_a_list_does_not_embed(fields: Fields) -> None:
    """``GET /data/orders?expand=user`` embedded nothing and said nothing."""
    with pytest.raises(ApiError) as info:
        build([("expand", "user")], fields)
    assert info.value.status_code == 400
    assert info.value.details == [{"field": "expand", "message": "unknown field 'expand'"}]
    assert build([("expand", "user")], fields, reserved=EXPANDABLE).where == []


def test_expand_is_a_filter_on_a_generic_table() -> None:
    assert build([("expand", "user")], None).where == [["expand", "eq", "user"]]


def test_contains_on_a_number_is_a_bad_operator() -> None:
    with pytest.raises(ApiError) as info:
        parse_filter("age__contains", "1", users.FIELDS)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("key", "raw", "fields"),
    [
        ("age", "thirty", users.FIELDS),
        ("age__in", "1,x", users.FIELDS),
        ("age", "99999999999999999999", users.FIELDS),
        ("total_price", "NaN", orders.FIELDS),
        ("total_price", "12,5", orders.FIELDS),
        ("order_date__gt", "yesterday", orders.FIELDS),
    ],
)
def test_uncoercible_value_is_422(key: str, raw: str, fields: dict[str, str]) -> None:
    with pytest.raises(ApiError) as info:
        parse_filter(key, raw, fields)  # type: ignore[arg-type]
    assert info.value.status_code == 422
    assert info.value.details[0]["field"] == f"query.{key}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30", 30),
        ("1.5", 1.5),
        ("true", True),
        ("null", None),
        ('"30"', "30"),
        ("blue", "blue"),
        ("[1,2]", "[1,2]"),
        ("1e999999", "1e999999"),
    ],
)
def test_generic_values_parse_as_json_scalars(raw: str, expected: object) -> None:
    assert parse_scalar(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["9223372036854775808", "18446744073709551615", "18446744073709551616", "-9223372036854775809"],
)
def test_generic_integers_past_signed_64_bits_are_floats(raw: str) -> None:
    """orjson reads up to 2**64 - 1 as an int; the store's integers stop at 2**63 - 1."""
    value = parse_scalar(raw)
    assert type(value) is float and value == float(raw)
    assert parse_filter("v__in", f"1,{raw}", None) == ["v", "in", [1, float(raw)]]
    assert type(parse_scalar(raw[:-1])) is int  # 64 bits: kept


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("age", "9223372036854775807", 2**63 - 1),
        ("age__gte", "-9223372036854775808", -(2**63)),
        ("age", "-" + "0" * 40 + "7", -7),  # zeros padding it are not digits of its size
    ],
)
def test_typed_int_filters_take_the_whole_64_bit_range(key: str, raw: str, expected: int) -> None:
    assert parse_filter(key, raw, users.FIELDS)[2] == expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("age", "9223372036854775808"),
        ("age__in", "1,18446744073709551615"),
        ("age__lt", "-9223372036854775809"),
        ("age", "1" * 5000),
        ("version", "18446744073709551615"),
    ],
)
def test_a_typed_integer_past_64_bits_is_a_422_saying_so(key: str, raw: str) -> None:
    fields = None if key == "version" else users.FIELDS  # a generic table's store field
    with pytest.raises(ApiError) as info:
        parse_filter(key, raw, fields)
    assert info.value.status_code == 422
    assert info.value.details == [{"field": f"query.{key}", "message": OUTSIDE_INT64}]


def test_generic_filters_accept_dotted_fields_and_keep_contains_a_string() -> None:
    assert parse_filter("address.city", "Oslo", None) == ["address.city", "eq", "Oslo"]
    assert parse_filter("tags__contains", "30", None) == ["tags", "contains", "30"]
    assert parse_filter("stock__in", "1,two", None) == ["stock", "in", [1, "two"]]


@pytest.mark.parametrize("key", ["a b", "1abc", "", "x;drop", "ü"])
def test_generic_bad_field_names_are_400(key: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_filter(key, "1", None)
    assert info.value.status_code == 400


def test_sort() -> None:
    assert parse_sort("age:desc,email", users.FIELDS) == [["age", "desc"], ["email", "asc"]]
    assert parse_sort(None, users.FIELDS) == []
    assert parse_sort("whatever.deep:asc", None) == [["whatever.deep", "asc"]]


@pytest.mark.parametrize("text", ["age:sideways", "nope:asc", "a,b,c,d,e"])
def test_bad_sort_is_400(text: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_sort(text, users.FIELDS)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31", "2024-01-31T00:00:00.000000Z"),
        ("2024-01-31T12:30:00", "2024-01-31T12:30:00.000000Z"),
        ("2024-01-31T12:30:00Z", "2024-01-31T12:30:00.000000Z"),
        ("2024-01-31T12:30:00.5+02:00", "2024-01-31T10:30:00.500000Z"),
        # ten characters and eight, as datetime.fromisoformat reads them (README)
        ("2024-W05-3", "2024-01-31T00:00:00.000000Z"),
        ("20240131", "2024-01-31T00:00:00.000000Z"),
    ],
)
def test_timestamps_normalize_to_the_store_format(text: str, expected: str) -> None:
    assert parse_timestamp(text, "created_after") == expected


@pytest.mark.parametrize(
    "text",
    [
        *("2024-13-01", "soon", "0001-01-01T00:00:00+01:00", "", "2024-01-31T00:00:00Z\x00junk"),
        # QA: ten characters that begin with eight digits were read as YYYYMMDD, the last two
        # dropped: seconds since 1970 (1704110400) became the date 1704-11-04
        *("1704110400", "20240101xx", "2099123199"),
    ],
)
def test_bad_timestamps_are_422(text: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_timestamp(text, "created_after")
    assert info.value.status_code == 422


def test_created_bounds_and_reserved_params() -> None:
    query = build(
        [("page", "2"), ("per_page", "10"), ("sort", "age"), ("age__gte", "3")],
        sort="age",
        after="2024-01-01",
        before="2024-02-01",
    )
    assert query.where == [
        ["age", "gte", 3],
        ["created_at", "gt", "2024-01-01T00:00:00.000000Z"],
        ["created_at", "lt", "2024-02-01T00:00:00.000000Z"],
    ]
    assert query.sort == [["age", "asc"]]


def test_too_many_filters_or_in_values_are_400() -> None:
    with pytest.raises(ApiError) as filters:
        build([("age", "1")] * 21)
    with pytest.raises(ApiError) as values:
        parse_filter("age__in", ",".join(["1"] * 101), users.FIELDS)
    assert [(e.value.status_code, e.value.code) for e in (filters, values)] == [
        (400, "LIMIT_EXCEEDED")
    ] * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0999-01-01", "0999-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:30:00-01:00", "0001-01-01T01:30:00.000000Z"),
        ("0500-01-01T00:00:00+01:00", "0499-12-31T23:00:00.000000Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_years_before_1000_are_zero_padded(text: str, expected: str) -> None:
    # strftime("%Y") writes "999-...", which sorts after "2024-..." in the store's string order.
    assert parse_timestamp(text, "created_after") == expected


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(UTC)),
)
def test_store_time_is_fixed_width_and_sorts_like_time(a: datetime, b: datetime) -> None:
    assert len(store_time(a)) == len("2024-01-31T12:00:00.000000Z")
    assert (store_time(a) < store_time(b)) == (a < b)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("created_before", "9999-12-31T23:59:59-01:00"),  # year 10000 in UTC
        ("created_after", "0001-01-01T00:30:00+01:00"),  # year 0 in UTC
    ],
)
def test_a_bound_out_of_range_in_utc_is_a_422_naming_it(name: str, text: str) -> None:
    with pytest.raises(ApiError) as info:
        build([], after=text) if name == "created_after" else build([], before=text)
    assert info.value.status_code == 422
    assert info.value.details == [{"field": f"query.{name}", "message": OUT_OF_RANGE}]


@pytest.mark.parametrize(
    ("text", "op", "expected"),
    [
        ("2024-01-31T12:30:00.0000005Z", "lt", "2024-01-31T12:30:00.000001Z"),
        ("2024-01-31T12:30:00.0000005Z", "gte", "2024-01-31T12:30:00.000001Z"),
        ("2024-01-31T12:30:00.0000005Z", "lte", "2024-01-31T12:30:00.000000Z"),
        ("2024-01-31T12:30:00.0000005Z", "gt", "2024-01-31T12:30:00.000000Z"),
        ("2024-01-31T12:30:00.0000000Z", "lt", "2024-01-31T12:30:00.000000Z"),
        ("2024-01-31t12:30:00.000250z", "lt", "2024-01-31T12:30:00.000250Z"),
    ],
)
def test_finer_than_microsecond_bounds_round_by_operator(text: str, op: str, expected: str) -> None:
    assert parse_timestamp(text, "created_before", op) == expected


def test_created_before_with_nanoseconds_keeps_the_microsecond_it_passes() -> None:
    query = build([], before="2024-02-01T00:00:00.000000001Z")
    assert query.where == [["created_at", "lt", "2024-02-01T00:00:00.000001Z"]]


@pytest.mark.parametrize("key", ["created_at", "updated_at__ne", "created_at__in"])
def test_an_equality_finer_than_a_microsecond_is_a_422_naming_the_parameter(key: str) -> None:
    # Rounded, ...09.8989885Z would match a record made at ...09.898988Z: a different instant.
    with pytest.raises(ApiError) as info:
        parse_filter(key, "2026-11-22T20:25:09.8989885Z", users.FIELDS)
    assert info.value.status_code == 422
    assert info.value.details == [{"field": f"query.{key}", "message": FINER_THAN_STORED}]


def test_trailing_zeros_past_the_microsecond_and_ranges_are_still_exact() -> None:
    at = "2026-11-22T20:25:09.898988Z"
    assert parse_filter("created_at", "2026-11-22T20:25:09.898988000Z", users.FIELDS)[2] == at
    assert parse_filter("order_date__in", "2026-11-22T20:25:09.8989880Z", orders.FIELDS)[2] == [at]
    assert parse_filter("created_at__lte", "2026-11-22T20:25:09.8989885Z", users.FIELDS)[2] == at


@pytest.mark.parametrize(
    "raw",
    [
        "\u0661\u0660\u0660",
        "\uff11\uff10\uff10",
        "1_0_0",
        "100,5",
        "Infinity",
        "0x10",
        "",
        "1e9999999999999999999",
    ],
)
def test_decimal_filters_take_ascii_digits_only_as_writes_do(raw: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_filter("total_price", raw, orders.FIELDS)
    assert info.value.status_code == 422
    assert info.value.details[0]["field"] == "query.total_price"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("100", "100"),
        (" 100 ", "100"),
        ("1e2", "1E+2"),
        ("-1.5", "-1.5"),
        ("0", "0"),
        (".5", "0.5"),
    ],
)
def test_decimal_filters_keep_every_ascii_notation(raw: str, expected: str) -> None:
    assert parse_filter("total_price__gte", raw, orders.FIELDS)[2] == Decimal(expected)


def test_repeated_created_bounds_are_anded() -> None:
    params = [
        ("created_after", "2030-01-01"),
        ("created_after", "2000-01-01"),
        ("created_before", "2000-06-01"),
        ("created_before", "2040-01-01"),
    ]
    # As FastAPI passes them: the last of each.
    query = build(params, after="2000-01-01", before="2040-01-01")
    assert query.where == [
        ["created_at", "gt", "2030-01-01T00:00:00.000000Z"],
        ["created_at", "lt", "2000-06-01T00:00:00.000000Z"],
    ]


def test_every_repeated_bound_is_checked() -> None:
    with pytest.raises(ApiError) as info:
        build([("created_after", "soon"), ("created_after", "2024-01-01")], after="2024-01-01")
    assert info.value.status_code == 422
    assert info.value.details[0]["field"] == "query.created_after"


def test_a_malformed_timestamp_is_named_as_such_whatever_its_digits() -> None:
    with pytest.raises(ApiError) as info:
        parse_filter("created_at", "soon.1234567", users.FIELDS)
    assert info.value.details[0]["message"].startswith("expected an ISO 8601")


@pytest.mark.parametrize("offset", ["01:00", "0100", "05"])
def test_an_offset_whose_plus_was_not_encoded_is_told_so(offset: str) -> None:
    """QA: ``created_after=...T05:06:07+01:00`` unencoded arrives as ``...T05:06:07 01:00``."""
    with pytest.raises(ApiError) as info:
        parse_timestamp(f"2024-01-01T05:06:07 {offset}", "created_after")
    assert info.value.details[0]["message"].endswith(
        "(no leap second 60, no 24:00, no ordinal date); a '+' in a query"
        " string is a space: send an offset's '+' as %2B"
    )


def test_other_malformed_times_get_no_hint_about_plus() -> None:
    with pytest.raises(ApiError) as info:
        parse_timestamp("2024-01-01T05:06:07 soon", "created_after")
    assert "%2B" not in info.value.details[0]["message"]
