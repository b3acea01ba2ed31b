"""Group-by aggregation: count, sum, avg, min, max.

- ``count`` without a field counts rows; with one, rows where it is not ``None``.
- ``sum``/``avg`` read numbers only (int, float, Decimal; booleans and the rest are skipped).
  Ints and Decimals are summed exactly, floats as floats, left to right. The result is a
  Decimal if any Decimal was seen (a float part is added as ``Decimal(repr(f))``), else a
  float if any float was seen, else an int. A sum past what its type carries is a Decimal
  too (the API shows a Decimal as a string): an integer outside int64, whatever its sign,
  exactly (eleven nanosecond timestamps pass 2**63); a float sum past the float range, to 17
  significant digits. ``sum`` of nothing is ``0``; ``avg`` of nothing is ``None``. The
  average of Decimals is a Decimal division at 28 significant digits; of ints/floats a
  float, which always fits for finite values, even when their sum does not: once a float
  sum would overflow, it goes on scaled down by 2**-64 (exact but for values below 2**-958,
  lost in such a sum anyway). Stored values are finite, and Decimals under 1E+100
  (``records.decimal_problem``), so no sum overflows. Values kept from before the store
  refused them can still: float infinities give an infinite or NaN sum and average, as float
  arithmetic does; a Decimal sum or average that is not finite (which the wire cannot carry)
  is ``BAD_REQUEST`` "out of range".
- ``min``/``max`` use the store's mixed-type order over non-``None`` values.
- Groups appear in the order of their first row; without ``group_by`` there is one group,
  even over no rows.
"""

from __future__ import annotations

import decimal
import math
import operator
from collections import defaultdict
from collections.abc import Generator, Iterable
from decimal import Decimal
from functools import reduce
from typing import Any, NamedTuple

from storeserver.arguments import quoted
from storeserver.builds import Pace, run_steps
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.query import check_field, check_visible, compile_getter, index_key, sort_key
from storeserver.records import MAX_DECIMAL_PLACES, MAX_DECIMAL_WHOLE_DIGITS

METRIC_OPS = frozenset({"count", "sum", "avg", "min", "max"})

# Every digit of any sum of stored Decimals (at most 100 before the point and 10,000 after,
# ``records``; 20 more for the carries of up to 1E20 values): a sum is exact, as documented.
# QA: 60 digits rounded 1E60 + 0.01 + 0.01. An addition costs what its operands' digits
# do, not the precision: 1M sums of money took the same time at either. Traps off so no
# input can make arithmetic raise.
_SUM_CONTEXT = decimal.Context(prec=MAX_DECIMAL_WHOLE_DIGITS + MAX_DECIMAL_PLACES + 20, traps=[])
_AVG_CONTEXT = decimal.Context(prec=28, traps=[])
# Group values that are their own ``index_key`` (no bool: ``True == 1`` must stay apart; no
# Decimal: its key is chosen so that clients cannot make its hashes collide).
_PLAIN_KEYS = frozenset({str, int, float, type(None)})
_NONE = type(None)
_EXACT = frozenset({int, Decimal, _NONE})
_FLOATS = frozenset({float, _NONE})
_ORDERED = (frozenset({int, float, Decimal}), frozenset({str}))
# An integer sum outside int64 is a Decimal. msgpack carries uint64 too, but JSON clients
# read numbers past int64 wrongly, and the same rule for both signs is easier to rely on.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# A float sum that would overflow goes on scaled down by this (see ``_Sum.add_floats``).
_SCALE = 2.0**-64
_UNSCALE = 2.0**64
_DECIMAL_UNSCALE = Decimal(2**64)
_FLOAT_DIGITS = decimal.Context(prec=17, traps=[])  # a float's precision, in decimal digits
_INFINITIES = (math.inf, -math.inf)


class Metric(NamedTuple):
    op: str
    field: str | None
    name: str


MAX_GROUP_BY = 32
MAX_METRICS = 64
"""Fields an ``aggregate`` groups by, and metrics it computes (the API: 4 and 20). Each row
costs one step per field and per metric, and a chunk holds 10,000 rows: 100,000 group fields
held the loop 29 s and kept 1.2 GB (QA)."""


def parse_metrics(raw: Any, group_by: list[str], hidden: frozenset[str]) -> list[Metric]:
    if raw is None:
        return []
    if type(raw) is not list:
        raise BadRequest("metrics must be a list", {"arg": "metrics"})
    if len(raw) > MAX_METRICS:
        raise LimitExceeded(
            f"metrics: at most {MAX_METRICS} items", {"arg": "metrics", "max": MAX_METRICS}
        )
    names = set(group_by)
    metrics = []
    for item in raw:
        if type(item) is not dict or not item.keys() <= {"op", "field", "as"}:
            raise BadRequest("metrics: each is {op, field?, as}", {"arg": "metrics"})
        op, field, name = item.get("op"), item.get("field"), item.get("as")
        if type(op) is not str or op not in METRIC_OPS:
            raise BadRequest(f"metrics: unknown op {quoted(op)}", {"arg": "metrics"})
        if field is None:
            if op != "count":
                raise BadRequest(f"metrics: {op} needs a field", {"arg": "metrics"})
        else:
            check_field(field, "metrics")
            check_visible(field, hidden, False)
        if type(name) is not str or not name or name in names:
            raise BadRequest("metrics: 'as' must be a new, non-empty name", {"arg": "metrics"})
        names.add(name)
        metrics.append(Metric(op, field, name))
    return metrics


class _Sum:
    __slots__ = ("exact", "floating", "has_decimal", "has_float", "n", "scaled")

    def __init__(self) -> None:
        self.exact: int | Decimal = 0
        self.floating = 0.0  # times ``_SCALE`` once ``scaled``
        self.has_decimal = self.has_float = self.scaled = False
        self.n = 0

    def add(self, value: Any) -> None:
        """Runs under ``_SUM_CONTEXT`` (see ``aggregate``), so Decimal sums stay exact."""
        t = type(value)
        if t is int:
            self.exact += value
        elif t is Decimal:
            self.exact += value
            self.has_decimal = True
        elif t is float:
            self.add_floats([value])
            return
        else:
            return
        self.n += 1

    def add_floats(self, values: list[float]) -> None:
        """Add floats left to right. A sum that overflows to ``inf`` (``1e308 + 1e308``) would
        lose the average, and a sum that comes back into range: from there on the values are
        added scaled by ``_SCALE`` (exact: a power of two), the earlier sum with them."""
        if not values:
            return
        self.has_float = True
        self.n += len(values)
        if self.scaled:
            self.floating = reduce(operator.add, map(_SCALE.__mul__, values), self.floating)
            return
        total = reduce(operator.add, values, self.floating)
        if (
            not math.isfinite(total)
            and math.isfinite(self.floating)
            and not any(v in _INFINITIES for v in values)
        ):
            self.scaled = True
            total = reduce(operator.add, map(_SCALE.__mul__, values), self.floating * _SCALE)
        self.floating = total

    def total(self) -> int | float | Decimal:
        """The sum as the wire can carry it (a big integer sum becomes an exact Decimal)."""
        total = self._exact_total()
        if type(total) is int and not _INT64_MIN <= total <= _INT64_MAX:
            return Decimal(total)  # exact whatever the context: no rounding of an int
        return total

    def _float_total(self) -> float | Decimal:
        """The sum of the floats: a Decimal past the float range."""
        if not self.scaled:
            return self.floating
        total = self.floating * _UNSCALE
        if math.isfinite(total) or not math.isfinite(self.floating):
            return total
        return _FLOAT_DIGITS.multiply(Decimal(self.floating), _DECIMAL_UNSCALE).normalize()

    def _exact_total(self) -> int | float | Decimal:
        floating = self._float_total() if self.has_float else 0.0
        if type(floating) is Decimal and not self.has_decimal:  # ints and floats: a float sum
            return _FLOAT_DIGITS.add(Decimal(self.exact), floating).normalize()
        if self.has_decimal:
            exact = Decimal(self.exact)
            if self.has_float:
                part = floating if type(floating) is Decimal else Decimal(repr(floating))
                return _SUM_CONTEXT.add(exact, part)
            return exact
        if self.has_float:
            return int(self.exact) + floating
        return self.exact

    def average(self) -> float | Decimal | None:
        if not self.n:
            return None
        if self.scaled and not self.has_decimal:
            # Divided while scaled: the average of finite values is always in range.
            return (int(self.exact) * _SCALE + self.floating) / self.n * _UNSCALE
        total = self._exact_total()  # an int average stays a float, however big the sum
        if type(total) is Decimal:
            return _AVG_CONTEXT.divide(total, Decimal(self.n))
        return total / self.n


class _Extreme:
    __slots__ = ("key", "largest", "value")

    def __init__(self, largest: bool) -> None:
        self.largest = largest
        self.key: Any = None
        self.value: Any = None

    def add(self, value: Any) -> None:
        if value is None:
            return
        key = sort_key(value)
        if self.key is None or (key > self.key if self.largest else key < self.key):
            self.key, self.value = key, value


def aggregate(
    records: Iterable[dict[str, Any]], group_by: list[str], metrics: list[Metric]
) -> list[dict[str, Any]]:
    """One output map per group: the group fields (by name) then the metrics (by ``as``)."""
    rows = records if type(records) is list else list(records)
    one_step = (len(rows) + 1) * max(1, len(metrics))  # every group in one slice
    return run_steps(aggregate_steps([rows], group_by, metrics, one_step))


def aggregate_steps(
    chunks: Iterable[list[dict[str, Any]]],
    group_by: list[str],
    metrics: list[Metric],
    rows_per_step: int,
    pace: Pace | None = None,
) -> Generator[None, None, list[dict[str, Any]]]:
    """``aggregate`` as a generator that yields between bounded amounts of work.

    The store runs it a step per loop turn over 1M rows (``builds.ChunkedRead``), so other
    clients are not stalled. Rows are bucketed by their group key column by column: the
    per-row work stays in C (``map``, ``sum``, ``min``) wherever values are all of one family;
    a group of mixed values falls back to the per-value accumulators, with the same results.
    ``pace``: the one that sizes ``chunks`` (told how long each took to bucket).
    """
    getters = [compile_getter(f) for f in group_by]
    buckets: defaultdict[Any, list[dict[str, Any]]] = defaultdict(list)
    for chunk in chunks:
        for key, row in zip(_group_keys(chunk, getters), chunk, strict=True):
            buckets[key].append(row)
        if pace is not None:
            pace.measure()
        yield
    if not group_by and not buckets:
        buckets[()] = []
    metric_getters = [compile_getter(m.field) if m.field else None for m in metrics]
    # Metrics are fed a slice of a group at a time, at most about ``rows_per_step`` values in
    # all (fewer rows the more metrics), sized by time as the rows were read (``Pace``: min and
    # max key each value, and a 500,000-item list takes ~0.1 s); a step ends when its time is
    # up, after as many small groups as fit, or within a big one (no group_by: the table).
    feeding = Pace(max(1, rows_per_step // max(1, len(metrics))))
    out = []
    # Each group's list is dropped once its row is made, not all at the end: freed together,
    # 300,000 groups held the loop 43-47 ms (QA). The key list goes the same way.
    keys = list(buckets)
    for i, key in enumerate(keys):
        members = buckets.pop(key)
        keys[i] = None
        first = members[0] if members else {}
        row = {field: get(first) for field, get in zip(group_by, getters, strict=True)}
        accs = [_Metric(m.op, g) for m, g in zip(metrics, metric_getters, strict=True)]
        for start, end in feeding.slices(max(len(members), 1)):
            part = members if start == 0 and end >= len(members) else members[start:end]
            # not across a yield: the decimal context is the whole loop's while set
            with decimal.localcontext(_SUM_CONTEXT):
                for acc in accs:
                    acc.feed(part)
            feeding.measure()
            if feeding.due():
                yield
                feeding.restart()
        with decimal.localcontext(_SUM_CONTEXT):
            for metric, acc in zip(metrics, accs, strict=True):
                row[metric.name] = _finite(acc.result(), metric)
        out.append(row)
    return out


def _finite(value: Any, metric: Metric) -> Any:
    if type(value) is Decimal and not value.is_finite():
        raise BadRequest(
            f"metrics: the {metric.op} of {metric.field} is out of range",
            {"arg": "metrics", "field": metric.field},
        )
    return value


def _group_keys(chunk: list[dict[str, Any]], getters: list[Any]) -> Iterable[Any]:
    """Each row's group key under the store's equality (values that are their own
    ``index_key`` are used as they are: no call per row)."""
    if not getters:
        return [()] * len(chunk)
    columns = []
    for get in getters:
        column = list(map(get, chunk))
        if not set(map(type, column)) <= _PLAIN_KEYS:
            column = list(map(index_key, column))
        columns.append(column)
    return columns[0] if len(columns) == 1 else zip(*columns, strict=True)


class _Metric:
    """One metric over one group, fed the group's rows a slice at a time (under
    ``_SUM_CONTEXT``). Each slice is reduced in C where its values are all of one family
    (``map``, ``sum``, ``min``/``max``), else value by value, with the same results."""

    __slots__ = ("count", "extreme", "getter", "op", "total")

    def __init__(self, op: str, getter: Any) -> None:
        self.op = op
        self.getter = getter
        self.count = 0
        self.total = _Sum()
        self.extreme = _Extreme(op == "max")

    def feed(self, members: list[dict[str, Any]]) -> None:
        getter, op = self.getter, self.op
        if getter is None:  # count of rows
            self.count += len(members)
            return
        values = list(map(getter, members))
        if op == "count":
            self.count += len(values) - values.count(None)
            return
        types = set(map(type, values))
        present = values if _NONE not in types else [v for v in values if v is not None]
        if op in ("sum", "avg"):
            acc = self.total
            if types <= _EXACT:
                # From the running total, left to right: a Decimal sum is rounded (60 digits)
                # the same wherever the slices fall (QA: sizing them by time changed it).
                acc.exact = sum(present, acc.exact)
                acc.has_decimal = acc.has_decimal or Decimal in types
                acc.n += len(present)
            elif types <= _FLOATS:
                acc.add_floats(present)  # reduce, not ``sum``: compensated since 3.12
            else:
                for value in present:
                    acc.add(value)
            return
        kinds = types - {_NONE}
        if not kinds:
            return
        if any(kinds <= family for family in _ORDERED):
            self.extreme.add(max(present) if op == "max" else min(present))
            return
        for value in present:
            self.extreme.add(value)

    def result(self) -> Any:
        if self.getter is None or self.op == "count":
            return self.count
        if self.op == "sum":
            return self.total.total()
        if self.op == "avg":
            return self.total.average()
        return self.extreme.value
