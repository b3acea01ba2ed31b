"""JSON bytes for every response body: orjson, Decimal as a string, and never a failure on text.

Request text is checked for lone surrogates (``\\ud800`` decodes to one), but an error or a
report may still quote what was wrong with it, such as a bad field name: orjson refuses to
encode such a string, and the error would become a 500. Those strings are written with the
surrogate as the escape the client sent (``\\ud800``), so the answer says what was wrong.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson


def _encode_extra(value: object) -> str:
    # Decimals (money) travel as strings so no client parses them into binary floats.
    if isinstance(value, Decimal):
        text = str(value)
        # str() writes "5.0E+49" for an average of big amounts, or a value imported as "1e2";
        # plain digits read as money everywhere. Past ~100 digits (no price is that long) the
        # exponent stays: a written-out "1E+999999" would be a megabyte.
        if "E" in text and value.is_finite() and -100 < value.adjusted() < 100:
            return format(value, "f")
        return text
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _escaped(value: Any) -> Any:
    """``value`` with every string (and map key) that is not valid Unicode escaped."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def dumps(body: object) -> bytes:
    """JSON bytes; Decimal becomes a string. The escaping pass runs only when orjson refuses
    the body (the common case pays nothing for it)."""
    try:
        return orjson.dumps(body, default=_encode_extra)
    except orjson.JSONEncodeError:
        return orjson.dumps(_escaped(body), default=_encode_extra)
