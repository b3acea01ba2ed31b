"""``fields`` projection for ``find`` and ``scan``: ``id`` plus the named (dotted) fields.

A dotted name is rebuilt as nested maps (``["addr.city"]`` gives ``{"id", "addr": {"city"}}``);
a field the record lacks is left out (a present ``None`` is kept), as is a path through a
non-map. A name already covered by a shorter one (``addr`` and ``addr.city``) adds nothing.
Hidden fields may not be named without ``include_hidden`` (like filters and sorts), so a
projection needs no stripping afterwards, unless a field is hidden while a read that spans
loop turns goes on (a scan cursor, a chunked ``find``): those strip it then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storeserver.errors import BadRequest, LimitExceeded
from storeserver.query import check_field, check_visible

MAX_FIELDS = 51
"""The API's 50 (``api.filters.MAX_PROJECTION``) plus the ``version`` it adds for ETags."""

Record = dict[str, Any]
Projector = Callable[[Record], Record]

_MISSING = object()


def parse_fields(raw: Any, hidden: frozenset[str], include_hidden: bool) -> Projector | None:
    """A function projecting records onto ``raw`` (a list of names); ``None`` if not given."""
    if raw is None:
        return None
    if type(raw) is not list:
        raise BadRequest("fields must be a list of field names", {"arg": "fields"})
    if len(raw) > MAX_FIELDS:
        raise LimitExceeded(f"at most {MAX_FIELDS} fields", {"arg": "fields", "max": MAX_FIELDS})
    names = set()
    for name in raw:
        check_field(name, "fields")
        try:
            check_visible(name, hidden, include_hidden)
        except BadRequest as exc:
            exc.details = {**exc.details, "arg": "fields"}
            raise
        names.add(name)
    names.discard("id")  # always there
    paths = sorted(tuple(n.split(".")) for n in names)
    # sorted, a name's prefixes come before it: keep only names no kept name covers
    kept: list[tuple[str, ...]] = []
    for path in paths:
        if not any(path[: len(k)] == k for k in kept):
            kept.append(path)
    return _projector(kept)


def _read(record: Record, path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _projector(paths: list[tuple[str, ...]]) -> Projector:
    flat = [p[0] for p in paths if len(p) == 1]
    nested = [p for p in paths if len(p) > 1]

    def project(record: Record) -> Record:
        out = {"id": record["id"]}
        for name in flat:
            value = record.get(name, _MISSING)
            if value is not _MISSING:
                out[name] = value
        for path in nested:
            value = _read(record, path)
            if value is not _MISSING:
                target = out
                for part in path[:-1]:
                    target = target.setdefault(part, {})
                target[path[-1]] = value
        return out

    return project
