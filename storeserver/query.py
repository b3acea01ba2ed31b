"""Where leaves, equality and mixed-type ordering, sort keys and pagination.

(``where`` trees, their parsing and limits are in ``storeserver.filters``.)

Semantics (docs/STORE.md):

- Equality is by value within a kind: ``1 == 1.0 == Decimal("1")``, but ``True != 1`` and a
  string never equals a number. Missing fields read as ``None``.
- Ordering: ``None``/missing < booleans < numbers (int, float, Decimal together) < strings <
  lists < maps < anything else. Sorting never raises (NaN is refused at the door).
- Range operators are true only between two values of the same kind among booleans, numbers
  and strings; anything else is simply false.
- A field with a ``casefold`` unique index (``users.email``) compares strings ignoring case in
  ``eq``, ``ne`` and ``in``, as the index does (a case-insensitive collation); ``contains``,
  ranges and sorts stay exact.
- ``startswith`` is a string prefix test (false for any other kind); ``exists`` with ``true``
  holds when the field is present and not ``None``, with ``false`` otherwise.
"""

from __future__ import annotations

import decimal
import heapq
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from itertools import islice
from typing import Any, NamedTuple

from storeserver.errors import BadRequest, LimitExceeded

Getter = Callable[[dict[str, Any]], Any]
Predicate = Callable[[dict[str, Any]], bool]

OPERATORS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "exists"}
)
_NUMBERS = frozenset({int, float, Decimal})
_INTS, _STRS = {int}, {str}
_RANGE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class _Tag:
    """A hashable marker that equals only itself (keeps ``True`` apart from ``1`` in keys)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_TRUE, _FALSE, _COMPOSITE, _DECIMAL, _OTHER = (
    _Tag(n) for n in ("true", "false", "composite", "decimal", "other")
)
# Normalizing under it never rounds: a stored Decimal has 100 digits, a frame fewer than MAX_PREC.
_EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)


def compile_getter(field: str) -> Getter:
    """A function reading ``field`` (a dotted path into nested maps) from a record."""
    if "." not in field:
        return operator.methodcaller("get", field)
    parts = tuple(field.split("."))

    def get_path(record: dict[str, Any]) -> Any:
        value: Any = record
        for part in parts:
            if type(value) is not dict:
                return None
            value = value.get(part)
        return value

    return get_path


def check_field(field: Any, arg: str) -> str:
    if type(field) is not str or not field or "" in field.split("."):
        raise BadRequest(f"{arg}: field must be a non-empty (dotted) name", {"arg": arg})
    return field


def index_key(value: Any) -> Any:
    """A hashable stand-in for ``value`` under the store's equality (see module doc), whose
    hash a client cannot steer onto another key's (see ``_decimal_key``)."""
    t = type(value)
    if t is str or t is int or t is float or value is None:
        return value
    if t is Decimal:
        return _decimal_key(value)
    if t is bool:
        return _TRUE if value else _FALSE
    if t is list or t is tuple or t is dict:
        out: list[str] = []
        _write_text(value, out)
        return (_COMPOSITE, "".join(out))
    return (_OTHER, repr(value))


def _decimal_key(value: Decimal) -> Any:
    """Python hashes a number by its value modulo 2**61 - 1, so hundred-digit Decimals give
    without end values that share a hash (every multiple of that prime hashes as 0): a client
    writing them into an indexed field, or an ``in`` list, made each lookup walk all of them
    (1,000 against 20,000 rows held the loop 0.7 s). A Decimal equal to an int (under 10**20)
    or a float takes that number as its key, and those share a hash at most a few thousand at
    a time (an int64 with about a dozen others, a float with its 2**61-fold multiples); any
    other is keyed by its normalized text, which hashes with the process's secret key."""
    if value.adjusted() < 20:
        whole = int(value)
        if whole == value:
            return whole
    near = float(value)  # the nearest float; 0.0 or an infinity past the float range
    if near == value:  # exact: a Decimal compares with a float by value
        return near
    return (_DECIMAL, str(value.normalize(_EXACT)))


def _write_text(value: Any, out: list[str]) -> None:
    """An unambiguous text of ``value``, the same for equal values (so for ``1`` and ``1.0``):
    a container's key is its text, not a tuple of its items' keys, whose hash combines theirs
    without a secret and so collides whenever every item's does (a dozen int64s per hash
    make 12**4 four-item lists with one hash)."""
    t = type(value)
    if t is str:
        out.append(f"s{len(value)}:")
        out.append(value)
    elif t is list or t is tuple:
        out.append("[")
        kinds = set(map(type, value))
        if kinds == _INTS:  # the same text as item by item, without a call per item
            out.append("i" + ";i".join(map(str, value)) + ";")
        elif kinds == _STRS:
            out.append("".join([f"s{len(item)}:{item}" for item in value]))
        else:
            for item in value:
                _write_text(item, out)
        out.append("]")
    elif t is dict:
        out.append("{")
        for k in sorted(value, key=str):
            _write_text(k, out)
            _write_text(value[k], out)
        out.append("}")
    else:
        key = index_key(value)
        kt = type(key)
        if kt is int or (kt is float and key.is_integer()):
            out.append(f"i{int(key)};")
        elif kt is float:
            out.append(f"f{key!r};")
        elif kt is tuple:  # a Decimal's or another value's (_Tag, text)
            out.append(f"{key[0].name}{len(key[1])}:")
            out.append(key[1])
        else:  # None, booleans
            out.append(f"{key!r};")


def values_equal(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int or ta is float or ta is Decimal):
        return bool(a == b)
    return bool(index_key(a) == index_key(b))


def sort_key(value: Any) -> tuple[Any, ...]:
    """The key giving the store's total order over mixed types."""
    t = type(value)
    if t is str:
        return (3, value)
    if t is int or t is float or t is Decimal:
        return (2, value)
    if value is None:
        return (0, 0)
    if t is bool:
        return (1, value)
    if t is list or t is tuple:
        return (4, tuple(map(sort_key, value)))
    if t is dict:
        return (5, tuple(sorted((k, sort_key(v)) for k, v in value.items())))
    return (6, repr(value))


def _kind(value: Any) -> int:
    """1 bool, 2 number, 3 string, 0 not range-comparable."""
    t = type(value)
    if t is bool:
        return 1
    if t in _NUMBERS:
        return 2
    if t is str:
        return 3
    return 0


class Condition(NamedTuple):
    field: str
    op: str
    value: Any


def check_visible(field: str, hidden: frozenset[str], include_hidden: bool) -> None:
    """Refuse to filter, sort or group on a hidden field (it would leak its value)."""
    if hidden and not include_hidden and field.split(".", 1)[0] in hidden:
        raise BadRequest(f"field {field!r} is not readable", {"field": field})


def folded_key(value: Any) -> Any:
    """The key of ``value`` where strings compare ignoring case (a casefold unique field)."""
    return value.casefold() if type(value) is str else index_key(value)


def _compile_case_insensitive(cond: Condition) -> Predicate:
    """``eq``/``ne``/``in`` on a field whose unique index casefolds: strings ignore case."""
    get = compile_getter(cond.field)
    keys = frozenset(map(folded_key, cond.value if cond.op == "in" else [cond.value]))
    if cond.op == "ne":
        return lambda r: folded_key(get(r)) not in keys
    return lambda r: folded_key(get(r)) in keys


def compile_condition(cond: Condition, casefold: frozenset[str] = frozenset()) -> Predicate:
    """A function testing one leaf (its arguments were checked by ``filters.parse_where``)."""
    op, value = cond.op, cond.value
    if cond.field in casefold and op in ("eq", "ne", "in"):
        return _compile_case_insensitive(cond)
    get = compile_getter(cond.field)
    t = type(value)
    if op == "eq" or op == "ne":
        test: Predicate
        if value is None:

            def test(r: dict[str, Any]) -> bool:
                return get(r) is None

        elif t is bool:

            def test(r: dict[str, Any]) -> bool:
                return get(r) is value

        elif t is str:

            def test(r: dict[str, Any]) -> bool:
                return bool(get(r) == value)

        elif t in _NUMBERS:

            def test(r: dict[str, Any]) -> bool:
                x = get(r)
                return type(x) in _NUMBERS and bool(x == value)

        else:
            key = index_key(value)

            def test(r: dict[str, Any]) -> bool:
                return bool(index_key(get(r)) == key)

        if op == "eq":
            return test
        return lambda r: not test(r)
    if op == "in":
        keys = frozenset(map(index_key, value))
        return lambda r: index_key(get(r)) in keys
    if op == "contains":
        if t is list or t is dict:
            # The operand's key once, not once per item of every row (QA: a 5,000-item map
            # against a 5,000-item list held the loop 4.9 s); only items of its kind can match.
            key = index_key(value)

            def member(e: Any) -> bool:
                return type(e) is t and index_key(e) == key

        else:

            def member(e: Any) -> bool:
                return values_equal(e, value)

        def contains(r: dict[str, Any]) -> bool:
            x = get(r)
            tx = type(x)
            if tx is str:
                return t is str and value in x
            if tx is list:
                return any(map(member, x))
            return False

        return contains
    if op == "startswith":
        return lambda r: type(x := get(r)) is str and x.startswith(value)
    if op == "exists":
        if value:
            return lambda r: get(r) is not None
        return lambda r: get(r) is None
    kind = _kind(value)
    compare = _RANGE_OPS[op]
    if kind == 0:
        return lambda r: False
    if kind == 2:
        return lambda r: type(x := get(r)) in _NUMBERS and compare(x, value)
    expected = bool if kind == 1 else str
    return lambda r: type(x := get(r)) is expected and compare(x, value)


class SortField(NamedTuple):
    field: str
    descending: bool


MAX_SORT_FIELDS = 32
"""Fields one sort orders by (the API: 4). Each comparison walks them: 100,000 held the loop
5.8 s per step of 200 rows (QA)."""


def parse_sort(
    raw: Any, hidden: frozenset[str], include_hidden: bool, allowed: Iterable[str] | None = None
) -> list[SortField]:
    """Validate ``sort``: a list of ``[field, "asc"|"desc"]``; ``allowed`` limits the fields."""
    if raw is None:
        return []
    if type(raw) is not list:
        raise BadRequest("sort must be a list of [field, 'asc'|'desc']", {"arg": "sort"})
    if len(raw) > MAX_SORT_FIELDS:
        raise LimitExceeded(
            f"sort: at most {MAX_SORT_FIELDS} fields", {"arg": "sort", "max": MAX_SORT_FIELDS}
        )
    allowed_set = None if allowed is None else frozenset(allowed)
    out = []
    for item in raw:
        if type(item) not in (list, tuple) or len(item) != 2 or item[1] not in ("asc", "desc"):
            raise BadRequest("sort: each entry is [field, 'asc'|'desc']", {"arg": "sort"})
        field = check_field(item[0], "sort")
        if allowed_set is not None and field not in allowed_set:
            raise BadRequest(f"sort: unknown field {field!r}", {"arg": "sort", "field": field})
        check_visible(field, hidden, include_hidden)
        out.append(SortField(field, item[1] == "desc"))
    return out


class _Descending:
    """Inverts the order of a key inside a tuple key (for mixed asc/desc sorts)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.key == other.key)

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.key < self.key)

    __hash__ = None  # type: ignore[assignment]


def sort_key_function(
    sort: list[SortField], getter: Callable[[str], Getter] = compile_getter
) -> tuple[Callable[[Any], Any], bool]:
    """``(key, reverse)`` for sorting records by ``sort`` (ties keep the input order)."""
    getters = [getter(s.field) for s in sort]
    reverse = sort[0].descending
    if all(s.descending == reverse for s in sort):
        if len(getters) == 1:
            (get,) = getters
            return (lambda r: sort_key(get(r))), reverse
        return (lambda r: tuple([sort_key(g(r)) for g in getters])), reverse
    flags = [s.descending for s in sort]

    def mixed(r: Any) -> tuple[Any, ...]:
        return tuple(
            [
                _Descending(sort_key(g(r))) if d else sort_key(g(r))
                for g, d in zip(getters, flags, strict=True)
            ]
        )

    return mixed, False


def top(
    items: Iterable[Any],
    count: int,
    key: Callable[[Any], Any],
    reverse: bool,
    offset: int,
    limit: int,
) -> list[Any]:
    """``sorted(items, key, reverse)[offset:offset+limit]`` without sorting more than needed.

    ``count`` is the number of items; a heap is used when the page ends well before it.
    """
    end = offset + limit
    if end < count // 2:
        chosen = (heapq.nlargest if reverse else heapq.nsmallest)(end, items, key=key)
    else:
        chosen = sorted(items, key=key, reverse=reverse)
    return chosen[offset:end]


def page(items: Iterable[Any], offset: int, limit: int) -> list[Any]:
    return list(islice(items, offset, offset + limit))
