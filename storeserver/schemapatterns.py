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


class _Re2Search:
    """Stands in for the ``re`` module inside ``jsonschema._utils``, whose only use of it is
    ``re.search`` with ``patternProperties`` patterns, for ``additionalProperties`` and
    ``unevaluatedProperties``: Python's backtracking ``re`` would run ``^(a+)+$`` against a
    long key for minutes on the store's one thread. (A test checks it stays in place.)"""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return compile_pattern(pattern).search(string)


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
