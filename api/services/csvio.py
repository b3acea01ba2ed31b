"""The CSV cell encoding: every store value ↔ one cell of text, reversibly (pure, no I/O).

A record is one CSV row; each top-level field is one column. A cell reads as follows
(docs: README "CSV import and export"):

======================  =====================================================================
cell text               value
======================  =====================================================================
(empty)                 field absent from the record
``null``                ``None``
``true`` / ``false``    booleans
``-12``, ``0``          ``int`` (digits, optional minus, no leading zero; 64-bit)
``12.50``, ``-3.``      ``Decimal``, exact (digits, a point, optional digits; no exponent)
``1.5e0``, ``-2E-7``    ``float`` (a number with an exponent is binary floating point);
                        ``1e999`` / ``-1e999`` (past the float range) are the infinities
``"..."``               a JSON string: how strings that would read as something else are
                        written (``"12"``, ``""`` the empty string, ``"null"``, ``"[x]"``)
``[...]`` / ``{...}``   a JSON list / map; inside it the same number rules hold
``'=…`` ``'+…`` ``'-…``  a string starting with ``= + - @`` TAB or CR, escaped against CSV
``'@…``                 (formula) injection: the one leading ``'`` is removed on import
anything else           the text itself, as a string
======================  =====================================================================

The encoder writes a string bare only when the decoder reads that exact text back as the same
string, so every value survives export → import. Negative numbers are numbers: they are not
escaped. Only a ``Decimal`` with a positive exponent changes form (``1E+2`` comes back as
``100``: the same number). Column names in the header line get the same injection guard
(``encode_name`` / ``decode_name``).

Decoding is only the encoding: which values a table accepts is the importer's business (the
rules of ``POST /data``, which refuse the infinities). Encoding never fails, so one odd value
cannot cut an export off: a value with no cell form (NaN, which the store refuses, or a type
its protocol does not produce) is written as its text, a string.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, Final

ABSENT: Final = object()
"""What an empty cell decodes to: the field is left out of the record."""

INJECTION_START = frozenset("=+-@\t\r")
ESCAPE = "'"
# One pattern, three groups: an int, an exact decimal (a point, no exponent), a float.
_NUMBER = re.compile(
    r"(-?(?:0|[1-9][0-9]*))|(-?[0-9]+\.[0-9]*)|(-?[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+)"
)
_WORDS: dict[str, Any] = {"null": None, "true": True, "false": False}
_INT64 = range(-(2**63), 2**63)
_INT64_DIGITS = 19


class CellError(ValueError):
    """A cell that is not a valid encoding (bad JSON, integer out of range, ...)."""


# -- decoding -----------------------------------------------------------------------------


def decode_cell(text: str) -> Any:
    """The value a cell holds (``ABSENT`` for an empty cell)."""
    if not text:
        return ABSENT
    first = text[0]
    if first == ESCAPE and len(text) > 1 and text[1] in INJECTION_START:
        return text[1:]
    if first in '"[{':  # a JSON string, list or map
        return _loads(text)
    if text in _WORDS:
        return _WORDS[text]
    if first == "-" or "0" <= first <= "9":
        number = _NUMBER.fullmatch(text)
        if number is not None:
            kind = number.lastindex
            return _int(text) if kind == 1 else Decimal(text) if kind == 2 else float(text)
    return text


def decode_text(text: str) -> Any:
    """A cell of a column declared as text: the string itself unless it is JSON-quoted or
    injection-escaped (so ``123`` is the string "123"); empty is still absent."""
    if not text:
        return ABSENT
    if text[0] == '"' or (text[0] == ESCAPE and len(text) > 1 and text[1] in INJECTION_START):
        return decode_cell(text)
    return text


def _int(text: str) -> int:
    # A 64-bit integer has at most 19 digits: longer text is not converted at all (int() refuses
    # more than 4300 digits with a plain ValueError, and is quadratic below that).
    if len(text.lstrip("-")) <= _INT64_DIGITS:
        value = int(text)
        if value in _INT64:
            return value
    raise CellError("integer outside the 64-bit range")


def _json_number(text: str) -> Decimal | float:
    # float("1e999") is infinity, as in Python's json: decoded as such, refused by the importer.
    return float(text) if "e" in text or "E" in text else Decimal(text)


def _json_int(text: str) -> int:
    # Inside a JSON cell a number is refused later, by the record's own checks, so that the
    # error names its path (``m.x``), as POST /data does: past 19 digits, any int outside the
    # 64-bit range stands in for it (converting it would cost time for nothing).
    if len(text.lstrip("-")) <= _INT64_DIGITS:
        return int(text)
    return -(2**63) - 1 if text[0] == "-" else 2**63


def _json_constant(name: str) -> float:
    # NaN, Infinity, -Infinity: refused later with their path, as 1e999 (infinity) is.
    return float(name)


def _loads(text: str) -> Any:
    try:
        return json.loads(
            text, parse_int=_json_int, parse_float=_json_number, parse_constant=_json_constant
        )
    except RecursionError:
        raise CellError("JSON nested too deeply") from None
    except CellError:
        raise
    except json.JSONDecodeError as exc:
        raise CellError(f"invalid JSON: {exc.msg}") from None
    except ValueError as exc:  # any other number json could not read
        raise CellError(f"invalid JSON: {exc}") from None


# -- column names ---------------------------------------------------------------------------
#
# Spreadsheets evaluate header cells too, so a column name gets the same guard as a string cell.
# A name is raw text, never JSON-quoted, so a name that already starts with quotes before an
# injection character gets one more (``=x`` ↔ ``'=x``, ``'=x`` ↔ ``''=x``): one ``'`` is
# removed on import, and every name reads back as itself.


def encode_name(name: str) -> str:
    """A column name as written in the header line."""
    return ESCAPE + name if name.lstrip(ESCAPE)[:1] in INJECTION_START else name


def decode_name(text: str) -> str:
    """The column name a header cell holds (the mirror of ``encode_name``)."""
    if text[:1] == ESCAPE and text.lstrip(ESCAPE)[:1] in INJECTION_START:
        return text[1:]
    return text


# -- encoding -----------------------------------------------------------------------------


def encode_cell(value: Any) -> str:
    """The cell text for a value (``ABSENT`` → empty cell); never fails (see the header)."""
    encode = _ENCODERS.get(type(value))
    if encode is not None:
        return encode(value)
    if value is ABSENT:
        return ""
    return encode_str(str(value))


def encode_str(text: str) -> str:
    if not text:
        return '""'
    first = text[0]
    if first in INJECTION_START:
        return ESCAPE + text
    # Bare only if it reads back as itself: the mirror of decode_cell's tests.
    if (
        first in '"[{'
        or ("0" <= first <= "9" and _NUMBER.fullmatch(text))
        or (first == ESCAPE and len(text) > 1 and text[1] in INJECTION_START)
        or text in _WORDS
    ):
        return encode_basestring(text)
    return text


def _decimal(value: Decimal) -> str:
    if not value.is_finite():  # the store's protocol refuses these: no cell form
        return encode_str(str(value))
    text = format(value, "f")
    return text if "." in text else text + "."


def _float_text(value: float) -> str:
    if math.isinf(value):
        return "-1e999" if value < 0 else "1e999"
    if math.isnan(value):  # refused by the store: no cell form
        return encode_str(str(value))
    text = repr(value)
    return text if "e" in text else text + "e0"


def _json(value: Any) -> str:
    """JSON for a list or map, numbers written by the cell rules (exact decimals)."""
    parts: list[str] = []
    _json_into(value, parts)
    return "".join(parts)


def _json_into(value: Any, out: list[str]) -> None:
    t = type(value)
    if t is str:
        out.append(encode_basestring(value))
    elif value is None or t is bool or t is int:
        out.append(json.dumps(value))
    elif t is Decimal and value.is_finite():
        text = _decimal(value)
        out.append(text + "0" if text.endswith(".") else text)  # JSON wants a digit after "."
    elif t is float and not math.isnan(value):
        out.append(_float_text(value))
    elif t is list or t is tuple:
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _json_into(item, out)
        out.append("]")
    elif t is dict:
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(encode_basestring(str(key)))
            out.append(":")
            _json_into(item, out)
        out.append("}")
    else:  # no cell form (see the header): its text, as a string
        out.append(encode_basestring(str(value)))


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: encode_str,
    int: str,
    Decimal: _decimal,
    float: _float_text,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _: "null",
    list: _json,
    dict: _json,
}
