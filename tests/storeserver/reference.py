"""A reference for the store's value semantics, written from docs/STORE.md independently of
``storeserver.query``: the mixed-type order (None, bools, numbers, strings, lists, maps, others)
and equality that never crosses kinds. Used by the query unit tests and the stateful model."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def rank(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float, Decimal)):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, list):
        return 4
    if isinstance(v, dict):
        return 5
    return 6


def ref_eq(a: Any, b: Any) -> bool:
    if rank(a) != rank(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(ref_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(ref_eq(a[k], b[k]) for k in a)
    return bool(a == b)


def ref_cmp(a: Any, b: Any) -> int:
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 0:
        return 0
    if ra == 4:
        for x, y in zip(a, b, strict=False):
            c = ref_cmp(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ra == 5:
        ka, kb = sorted(a), sorted(b)
        for x, y in zip(ka, kb, strict=False):
            if x != y:
                return -1 if x < y else 1
            c = ref_cmp(a[x], b[y])
            if c:
                return c
        return (len(ka) > len(kb)) - (len(ka) < len(kb))
    return (a > b) - (a < b)
