"""The shape of a table's rows for ``describe``: each top-level field and its value types.

A field's ``count`` is the number of sampled rows holding the key (``None`` included, as
type ``"null"``); ``types`` counts the rows per value kind. Fields come sorted by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "bool",
    int: "int",
    float: "float",
    Decimal: "decimal",
    str: "str",
    list: "list",
    dict: "map",
}


def describe_rows(
    records: Iterable[dict[str, Any]], hidden: frozenset[str]
) -> tuple[int, dict[str, dict[str, Any]]]:
    """``(rows examined, {field: {"count": n, "types": {type name: n}}})``; hidden fields
    are left out."""
    # field -> type -> rows; type objects are cheaper keys than their names in this hot loop
    by_type: dict[str, dict[type, int]] = {}
    examined = 0
    for record in records:
        examined += 1
        for name, value in record.items():
            counts = by_type.get(name)
            if counts is None:
                counts = by_type[name] = {}
            t = type(value)
            counts[t] = counts.get(t, 0) + 1
    fields = {}
    for name in sorted(by_type.keys() - hidden):
        types: dict[str, int] = {}
        for t, n in by_type[name].items():
            label = _TYPE_NAMES.get(t, "other")
            types[label] = types.get(label, 0) + n
        fields[name] = {"count": sum(types.values()), "types": types}
    return examined, fields
