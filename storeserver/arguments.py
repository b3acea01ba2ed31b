"""Validation of command arguments: every ill-shaped argument becomes ``BadRequest``.

Checks use exact types (``type(x) is int``), so ``True`` is not an integer and a list is
never taken for a map.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

from storeserver.errors import BadRequest, LimitExceeded

Args = dict[str, Any]

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
QUOTED_CHARS = 100

# reprlib looks at a few items of a container and cuts long strings, so quoting a client's
# 3-million-item "table" costs as little as quoting a short one.
_quoter = reprlib.Repr()
_quoter.maxstring = _quoter.maxother = QUOTED_CHARS


def quoted(value: Any) -> str:
    """A client's value for an error message: its repr, cut to about ``QUOTED_CHARS``."""
    return _quoter.repr(value)


def check_keys(args: Args, allowed: frozenset[str]) -> None:
    if not args.keys() <= allowed:
        unknown = min(str(k) for k in args.keys() - allowed)[:QUOTED_CHARS]
        raise BadRequest(f"unknown argument {quoted(unknown)}", {"arg": unknown})


def table_name(args: Args, key: str = "table") -> str:
    name = args.get(key)
    if type(name) is not str or TABLE_NAME.fullmatch(name) is None:
        raise BadRequest(
            f"{key} must match ^[A-Za-z_][A-Za-z0-9_]{{0,63}}$", {"arg": key, "table": quoted(name)}
        )
    return name


def required_str(args: Args, key: str) -> str:
    value = args.get(key)
    if type(value) is not str or not value:
        raise BadRequest(f"{key} must be a non-empty string", {"arg": key})
    return value


def required_dict(args: Args, key: str) -> dict[str, Any]:
    value = args.get(key)
    if type(value) is not dict:
        raise BadRequest(f"{key} must be a map", {"arg": key})
    return value


def optional_bool(args: Args, key: str) -> bool:
    value = args.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"{key} must be a boolean", {"arg": key})
    return value


def optional_list(args: Args, key: str, maximum: int | None = None) -> list[Any]:
    """A list argument (``[]`` when absent); ``LIMIT_EXCEEDED`` past ``maximum`` items."""
    value = args.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise BadRequest(f"{key} must be a list", {"arg": key})
    if maximum is not None and len(value) > maximum:
        raise LimitExceeded(f"{key}: at most {maximum} items", {"arg": key, "max": maximum})
    return value


def optional_version(args: Args) -> int | None:
    value = args.get("expected_version")
    if value is not None and type(value) is not int:
        raise BadRequest("expected_version must be an integer", {"arg": "expected_version"})
    return value


MAX_OFFSET = 2**62
"""Past any table's rows, and within what ``itertools.islice`` takes with a limit added (an
offset of 2**63 - 100 was an INTERNAL error; QA)."""


def offset(args: Args) -> int:
    value = args.get("offset", 0)
    if type(value) is not int or value < 0:
        raise BadRequest("offset must be an integer >= 0", {"arg": "offset"})
    if value > MAX_OFFSET:
        raise LimitExceeded(
            f"offset must be at most {MAX_OFFSET}", {"arg": "offset", "max": MAX_OFFSET}
        )
    return value


def limit(args: Args, default: int, maximum: int, key: str = "limit") -> int:
    """A count argument from 1 to ``maximum`` (``default``, capped, when absent)."""
    value = args.get(key)
    if value is None:
        return min(default, maximum)
    if type(value) is not int or value < 1:
        raise BadRequest(f"{key} must be an integer >= 1", {"arg": key})
    if value > maximum:
        raise LimitExceeded(f"{key} must be at most {maximum}", {"arg": key, "max": maximum})
    return value


def positive_number(args: Args, key: str, required: bool = True) -> float | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if value is None or type(value) not in (int, float) or not 0 < value < float("inf"):
        raise BadRequest(f"{key} must be a positive number of seconds", {"arg": key})
    return float(value)
