"""A reference evaluator for ``where`` trees, written from docs/STORE.md independently of
``storeserver.filters`` and ``storeserver.query``: plain recursion, no compilation, no
indexes. Also the documented size measures (depth, node count) of a tree."""

from __future__ import annotations

from typing import Any

from tests.storeserver.reference import rank, ref_eq


def ref_read(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def ref_leaf(record: dict[str, Any], field: str, op: str, arg: Any) -> bool:
    x = ref_read(record, field)
    if op == "eq":
        return ref_eq(x, arg)
    if op == "ne":
        return not ref_eq(x, arg)
    if op == "in":
        return any(ref_eq(x, a) for a in arg)
    if op == "contains":
        if isinstance(x, str):
            return isinstance(arg, str) and arg in x
        return isinstance(x, list) and any(ref_eq(e, arg) for e in x)
    if op == "startswith":
        return isinstance(x, str) and x.startswith(arg)
    if op == "exists":
        return (x is not None) == arg
    if rank(x) != rank(arg) or rank(x) not in (1, 2, 3):
        return False
    return {"gt": x > arg, "gte": x >= arg, "lt": x < arg, "lte": x <= arg}[op]


def ref_where(record: dict[str, Any], where: Any) -> bool:
    """``where`` as sent: a top-level list is an AND of nodes."""
    if where is None:
        return True
    if isinstance(where, list) and (not where or not isinstance(where[0], str)):
        return all(ref_node(record, n) for n in where)
    return ref_node(record, where)


def ref_node(record: dict[str, Any], node: Any) -> bool:
    if isinstance(node, list):
        return ref_leaf(record, *node)
    ((key, value),) = node.items()
    if key == "and":
        return all(ref_node(record, n) for n in value)
    if key == "or":
        return any(ref_node(record, n) for n in value)
    return not ref_node(record, value)


def size(where: Any) -> tuple[int, int]:
    """``(depth, nodes)`` as documented: a top-level list counts as an ``and`` node."""
    if isinstance(where, list) and (not where or not isinstance(where[0], str)):
        where = {"and": where}
    return _size(where)


def _size(node: Any) -> tuple[int, int]:
    if isinstance(node, list):
        return 1, 1
    ((key, value),) = node.items()
    children = [value] if key == "not" else value
    depth, nodes = 0, 0
    for child in children:
        d, n = _size(child)
        depth, nodes = max(depth, d), nodes + n
    return depth + 1, nodes + 1
