"""RE2 for JSON Schema patterns: one compiled cache, in place of Python's ``re`` wherever
jsonschema would use it, and the check of a schema's own patterns.

A record's ``pattern`` and ``patternProperties`` (``schemakeywords``), jsonschema's matching
of ``patternProperties`` for ``additionalProperties`` and ``unevaluatedProperties``
(``_Re2Search``, installed when this module is imported) and the ``format: regex`` check of a
schema's patterns when it is set (``SCHEMA_FORMATS``, for ``schemas.TableSchema.parse``) all
go through ``compile_pattern``. Kept apart because the record keywords and the schema checks
both use it.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema._utils
import re2
from jsonschema import Draft202012Validator, FormatChecker

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the client's mistake, not a log line


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (``re2.error`` if it cannot be): matching is linear time."""
    return re2.compile(pattern, _RE2_OPTIONS)


PATTERN_WORK = 50_000_000
"""Characters x RE2 program instructions the pattern checks of one record may take. RE2 is
linear in the string, but its factor is the program's size when its fast (DFA) mode gives
up: ``.{0,1000}.{0,1000}x`` compiles to 18,005 instructions, and one 300 KB string held the
store 12 s (QA). Measured here: at most ~10 ns per character-instruction (``(a|b)*a(a|b){20}``
over 1 MB: 0.7 s), so this is at most about half a second per record, and far less where
the DFA holds. A simple pattern (``^[a-z]+$``: 4 instructions) checks any string the store
takes; ``\\p{L}`` (1,199) about 40,000 characters."""


class PatternsTooCostly(Exception):
    """A record's pattern checks would pass ``PATTERN_WORK``."""


class _Work:
    left: int | None = None


WORK = _Work()
"""What the running record check may still spend on patterns: ``schemas`` sets it for each
record and clears it after, so a search outside a record's check (a schema's own, checked
against the meta-schema) is never charged with what the last record left."""


def search(regex: Any, string: str) -> Any:
    """``regex.search(string)``, charged to ``WORK`` first during a record's check:
    ``PatternsTooCostly`` instead of a search that could hold the store for seconds."""
    if WORK.left is not None:
        WORK.left -= len(string) * regex.programsize
        if WORK.left < 0:
            raise PatternsTooCostly
    return regex.search(string)


class _Re2Search:
    """Stands in for the ``re`` module inside ``jsonschema._utils``, whose only use of it is
    ``re.search`` with ``patternProperties`` patterns, for ``additionalProperties`` and
    ``unevaluatedProperties``: Python's backtracking ``re`` would run ``^(a+)+$`` against a
    long key for minutes on the store's one thread. (A test checks it stays in place.)"""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return search(compile_pattern(pattern), string)


jsonschema._utils.re = _Re2Search


def _is_re2_pattern(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


# Checking a schema checks its patterns (the meta-schema's ``format: regex``) with RE2, the
# engine that will run them; the other formats as jsonschema does.
SCHEMA_FORMATS = FormatChecker(formats=())
SCHEMA_FORMATS.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
SCHEMA_FORMATS.checks("regex", raises=re2.error)(_is_re2_pattern)
