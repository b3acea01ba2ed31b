"""What a free-form record may hold: the checks every write to a generic table passes.

``check_generic`` (a record's id and values) and ``check_values`` (the same value rules for
a body that is not a record) turn what JSON allows but the store cannot hold into a 422 before
anything is sent to the store. They are separate from ``api.services.records`` because every
writer of free-form values uses them (records, bulk, transactions, writes by filter, CSV rows,
table schemas) and they need nothing of the typed tables or the store.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi.exceptions import RequestValidationError

from api.filters import Loc, text_problem
from storeserver import records as store_records

Record = dict[str, Any]
MAX_DEPTH = 32
# Client-chosen ids must be usable as one URL path segment.
RECORD_ID = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
# /data/{table}/schema, /indexes and /count are the table's own: a record with such an id
# could never be read (GET answers the sub-resource), so none is created. The store refuses
# them too, for the ids it resolves from a batch's $ref.
RESERVED_IDS = store_records.RESERVED_IDS
_INT64 = range(-(2**63), 2**63)
DATA: Loc = ("body", "data")


def check_generic(data: Record, loc: Loc = DATA, allow_refs: bool = False) -> None:
    """What JSON allows but the store cannot hold or give back (huge ints, non-finite numbers,
    deep nesting): 422 instead of a failure in the codec, an export or a JSON answer.

    Every write of free-form values (records, bulk, upserts, transactions, writes by filter,
    CSV rows) passes here; filter values have the same rules (``filters.json_value_problem``).
    """
    problems: list[dict[str, Any]] = []
    record_id = data.get("id")
    valid_id = (
        isinstance(record_id, str)
        and RECORD_ID.fullmatch(record_id)
        and record_id not in (".", "..")
    )
    if record_id is not None and not valid_id and not (allow_refs and is_ref(record_id)):
        message = "id must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ : @ - (not . or ..)"
        problems.append(_problem((*loc, "id"), message))
    elif isinstance(record_id, str) and record_id in RESERVED_IDS:
        message = f"id {record_id!r} is reserved: /data/{{table}}/{record_id} is the table's"
        problems.append(_problem((*loc, "id"), message))
    # The store takes no map or list at MAX_DEPTH, empty ones included (``records._copy``).
    _walk(data, loc, 0, MAX_DEPTH, problems, MAX_DEPTH)
    if problems:
        raise RequestValidationError(problems)


def path_names_it(data: Record) -> Record:
    """A PUT or PATCH body (or a transaction's replace or patch) without its ``id``: the path
    (the op's ``id``) names the record, and the body's is ignored whatever it holds (QA: a
    number, or a reserved name such as ``count`` that a record read back whole may carry,
    made the write a 422)."""
    return {k: v for k, v in data.items() if k != "id"} if "id" in data else data


def check_values(value: Any, loc: Loc, max_depth: int) -> None:
    """``check_generic``'s value rules (64-bit integers, finite numbers, at most ``max_depth``
    levels) for a body that is not a record, such as a JSON Schema."""
    problems: list[dict[str, Any]] = []
    _walk(value, loc, 0, max_depth, problems, max_depth + 1)
    if problems:
        raise RequestValidationError(problems)


def is_ref(value: Any) -> bool:
    """A transaction reference: ``{"$ref": "<earlier op index>.<dotted path>"}``."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("$ref"), str)


def _walk(
    value: Any,
    loc: tuple[Any, ...],
    depth: int,
    max_depth: int,
    problems: list[dict[str, Any]],
    container_depth: int,
) -> None:
    """``container_depth``: the depth from which a map or list is refused, whatever it holds
    (an empty one at the store's limit was let through, then refused by the store as a 400)."""
    if depth > max_depth or (depth >= container_depth and isinstance(value, (dict, list))):
        problems.append(_problem(loc, f"nesting deeper than {max_depth} levels"))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and value not in _INT64:
        problems.append(_problem(loc, "integer outside the 64-bit range"))
    elif isinstance(value, float) and not math.isfinite(value):
        # Python's json reads 1e999, Infinity and NaN; JSON answers cannot carry them back.
        problems.append(_problem(loc, "numbers must be finite"))
    elif isinstance(value, str):
        if problem := text_problem(value):
            problems.append(_problem(loc, problem))
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := text_problem(key):
                problems.append(_problem((*loc, key), problem))
            _walk(item, (*loc, key), depth + 1, max_depth, problems, container_depth)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*loc, index), depth + 1, max_depth, problems, container_depth)


def _problem(loc: tuple[Any, ...], message: str) -> dict[str, Any]:
    return {"loc": loc, "msg": message, "type": "value_error"}
