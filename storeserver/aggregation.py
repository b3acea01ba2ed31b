"""Group-by aggregation: count, sum, avg, min, max.

- ``count`` without a field counts rows; with one, rows where it is not ``None``.
- ``sum``/``avg`` read numbers only (int, float, Decimal; booleans and the rest are skipped).
  Ints and Decimals are summed exactly, floats as floats. The result is a Decimal if any
  Decimal was seen (a float part is added as ``Decimal(repr(f))``), else a float if any float
  was seen, else an int. ``sum`` of nothing is ``0``; ``avg`` of nothing is ``None``. The
  average of Decimals is a Decimal division at 28 significant digits; of ints/floats a float.
- ``min``/``max`` use the store's mixed-type order over non-``None`` values.
- Groups appear in the order of their first row; without ``group_by`` there is one group,
  even over no rows.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from storeserver.errors import BadRequest
from storeserver.query import check_field, check_visible, compile_getter, index_key, sort_key

METRIC_OPS = frozenset({"count", "sum", "avg", "min", "max"})

# Exact enough for sums of money; traps off so no input can make arithmetic raise.
_SUM_CONTEXT = decimal.Context(prec=60, traps=[])
_AVG_CONTEXT = decimal.Context(prec=28, traps=[])


class Metric(NamedTuple):
    op: str
    field: str | None
    name: str


def parse_metrics(raw: Any, group_by: list[str], hidden: frozenset[str]) -> list[Metric]:
    if raw is None:
        return []
    if type(raw) is not list:
        raise BadRequest("metrics must be a list", {"arg": "metrics"})
    names = set(group_by)
    metrics = []
    for item in raw:
        if type(item) is not dict or not item.keys() <= {"op", "field", "as"}:
            raise BadRequest("metrics: each is {op, field?, as}", {"arg": "metrics"})
        op, field, name = item.get("op"), item.get("field"), item.get("as")
        if type(op) is not str or op not in METRIC_OPS:
            raise BadRequest(f"metrics: unknown op {op!r}", {"arg": "metrics"})
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
    __slots__ = ("exact", "floating", "has_decimal", "has_float", "n")

    def __init__(self) -> None:
        self.exact: int | Decimal = 0
        self.floating = 0.0
        self.has_decimal = self.has_float = False
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
            self.floating += value
            self.has_float = True
        else:
            return
        self.n += 1

    def total(self) -> int | float | Decimal:
        if self.has_decimal:
            exact = Decimal(self.exact)
            if self.has_float:
                return _SUM_CONTEXT.add(exact, Decimal(repr(self.floating)))
            return exact
        if self.has_float:
            return int(self.exact) + self.floating
        return self.exact

    def average(self) -> float | Decimal | None:
        if not self.n:
            return None
        total = self.total()
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


class _Count:
    """Counts non-``None`` values (rows, when fed by ``_row_marker``)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, value: Any) -> None:
        if value is not None:
            self.n += 1


def _row_marker(record: dict[str, Any]) -> bool:
    return True


def _accumulator(op: str) -> Any:
    if op == "count":
        return _Count()
    if op in ("sum", "avg"):
        return _Sum()
    return _Extreme(op == "max")


def _result(op: str, acc: Any) -> Any:
    if op == "count":
        return acc.n
    if op == "sum":
        return acc.total()
    if op == "avg":
        return acc.average()
    return acc.value


def aggregate(
    records: Iterable[dict[str, Any]], group_by: list[str], metrics: list[Metric]
) -> list[dict[str, Any]]:
    """One output map per group: the group fields (by name) then the metrics (by ``as``)."""
    group_getters = [compile_getter(f) for f in group_by]
    metric_getters = [compile_getter(m.field) if m.field else _row_marker for m in metrics]
    # group key -> (group field values, accumulators, their bound add methods)
    groups: dict[Any, tuple[list[Any], list[Any], list[Any]]] = {}

    def new_group(values: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        accs = [_accumulator(m.op) for m in metrics]
        return values, accs, [acc.add for acc in accs]

    single = group_getters[0] if len(group_getters) == 1 else None
    with decimal.localcontext(_SUM_CONTEXT):
        for record in records:
            if single is not None:  # the common case, without a tuple per row
                value = single(record)
                key = index_key(value)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = new_group([value])
            else:
                values = [g(record) for g in group_getters]
                key = tuple(map(index_key, values))
                group = groups.get(key)
                if group is None:
                    group = groups[key] = new_group(values)
            for add, get in zip(group[2], metric_getters, strict=False):
                add(get(record))
    if not group_by and not groups:
        groups[()] = new_group([])
    out = []
    for values, accs, _ in groups.values():
        row = dict(zip(group_by, values, strict=True))
        for metric, acc in zip(metrics, accs, strict=True):
            row[metric.name] = _result(metric.op, acc)
        out.append(row)
    return out
