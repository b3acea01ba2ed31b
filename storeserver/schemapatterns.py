"""RE2 for JSON Schema patterns: one compiled cache, in place of Python's ``re`` wherever
jsonschema would use it, and the check of a schema's own patterns.

A record's ``pattern``, ``patternProperties`` and ``additionalProperties`` (``schemakeywords``),
jsonschema's matching of ``patternProperties`` for ``unevaluatedProperties`` (``_Re2Search``,
installed when this module is imported) and the ``format: regex`` check of a schema's patterns
when it is set (``SCHEMA_FORMATS``, for ``schemas.TableSchema.parse``, charged to
``SCHEMA_PATTERN_SIZE`` within ``charged_compiles``) all go through ``compile_pattern``, whose
programs and cache are bounded in size. Kept apart because the record keywords and the schema
checks both use it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import jsonschema._utils
import re2
from jsonschema import Draft202012Validator, FormatChecker

PATTERN_MEMORY = 4 << 20
"""RE2's ``max_mem`` for one pattern: it bounds the compiled program (and the lazy DFA's
cache), so a pattern that compiles bigger is refused rather than compiled. RE2's default,
8 MiB, took ``\\p{L}{300}`` (358,804 instructions: ~0.15 s and ~30 MB to compile, QA); at 4 MiB
the largest program is ~240,000 instructions (``^\\p{L}{1,200}$``, ~80 ms), a name pattern such
as ``^[\\p{L}\\p{M}\\p{N} ._-]{1,120}$`` (173,521) still compiles, and a pattern refused
costs ~20 ms, what compiling up to the limit takes."""

SCHEMA_PATTERN_SIZE = 1_000_000
"""RE2 instructions the distinct patterns of one schema may compile to in all: each pattern is
bounded by ``PATTERN_MEMORY``, but a schema holds thousands (QA: 24 patterns of ~130 ms each
held the store 2.7 s). Compiling runs at ~0.3-0.4 µs an instruction, so ~0.4 s at most; five
name patterns as above fit. A pattern such as ``^\\p{L}+$`` is 1,199, ``^[a-z]+$`` 4."""

CACHE_SIZE = 2_000_000
CACHE_ENTRIES = 1024
"""The compiled patterns kept, by RE2 instructions (~16 bytes each once compiled: ~32 MB) and
by count, least recently used dropped first: a schema's patterns stay compiled for its
writes, but those of schemas removed or refused do not stay for good."""

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the client's mistake, not a log line
_RE2_OPTIONS.max_mem = PATTERN_MEMORY

_CACHE: OrderedDict[str, Any] = OrderedDict()


class _Cached:
    size = 0  # the instructions of the patterns in ``_CACHE``


CACHED = _Cached()


class PatternTooLarge(re2.error):
    """A pattern, or a schema's patterns together, past ``PATTERN_MEMORY`` or
    ``SCHEMA_PATTERN_SIZE``."""


def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (``re2.error`` if it cannot be): matching is linear time."""
    regex = _CACHE.get(pattern)
    if regex is not None:
        _CACHE.move_to_end(pattern)
        return regex
    try:
        # Not ``re2.compile``: it keeps the last 128 programs in a cache of its own, which
        # would hold them whatever this one drops.
        regex = re2._Regexp(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        if "pattern too large" in str(exc):
            raise PatternTooLarge(
                f"it compiles to more than RE2's {PATTERN_MEMORY:,}-byte limit for one pattern;"
                " a counted repeat of a large class such as \\p{L}{1,200} is: use + and"
                " maxLength"
            ) from None
        raise
    _CACHE[pattern] = regex
    CACHED.size += regex.programsize
    while len(_CACHE) > CACHE_ENTRIES or (CACHED.size > CACHE_SIZE and len(_CACHE) > 1):
        CACHED.size -= _CACHE.popitem(last=False)[1].programsize
    return regex


class _Compiling:
    left: int | None = None
    seen: set[str] = set()


COMPILING = _Compiling()
"""What the schema being checked may still compile (``SCHEMA_PATTERN_SIZE``), and the patterns
already charged: set by ``charged_compiles``, ``None`` outside it."""


@contextlib.contextmanager
def charged_compiles() -> Iterator[None]:
    """Charge each distinct pattern the schema checks (``SCHEMA_FORMATS``) meet to
    ``SCHEMA_PATTERN_SIZE``, whether it is compiled now or was already: a schema is taken or
    refused whatever the cache holds."""
    COMPILING.left, COMPILING.seen = SCHEMA_PATTERN_SIZE, set()
    try:
        yield
    finally:
        COMPILING.left, COMPILING.seen = None, set()


PATTERN_WORK = 50_000_000
"""Characters x RE2 program instructions the pattern checks of one record may take, each
search charged ``SEARCH_COST`` more. RE2 is linear in the string, but its factor is the
program's size when its fast (DFA) mode gives up: ``.{0,1000}.{0,1000}x`` compiles to 18,005
instructions, and one 300 KB string held the store 12 s (QA). Measured here: at most ~10 ns
per character-instruction (``(a|b)*a(a|b){20}`` over 1 MB: 0.7 s), so this is at most about
half a second per record, and far less where the DFA holds. A simple pattern (``^[a-z]+$``:
4 instructions) checks any string the store takes; ``\\p{L}`` (1,199) about 40,000
characters."""

SEARCH_COST = 250
"""What one search costs whatever its string and pattern, in ``PATTERN_WORK``'s units (~10 ns):
a search takes ~2 µs from Python (measured: 1,000 patterns x 1,000 one-character keys, 1.9 s),
and ``patternProperties`` searches every key with every pattern (QA: 1,200 x 1,200 held the
store 2.7 s, charged only 4 units each). So at most 200,000 searches a record."""


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
        WORK.left -= SEARCH_COST + len(string) * regex.programsize
        if WORK.left < 0:
            raise PatternsTooCostly
    return regex.search(string)


class _Re2Search:
    """Stands in for the ``re`` module inside ``jsonschema._utils``, whose only use of it is
    ``re.search`` with ``patternProperties`` patterns, for ``unevaluatedProperties`` (and for
    ``additionalProperties``, which ``schemakeywords`` replaces: jsonschema joins the patterns
    with ``|`` there): Python's backtracking ``re`` would run ``^(a+)+$`` against a long key
    for minutes on the store's one thread. (A test checks it stays in place.)"""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return search(compile_pattern(pattern), string)


jsonschema._utils.re = _Re2Search


def _is_re2_pattern(instance: object) -> bool:
    if isinstance(instance, str):
        regex = compile_pattern(instance)
        if COMPILING.left is not None and instance not in COMPILING.seen:
            COMPILING.seen.add(instance)
            COMPILING.left -= regex.programsize
            if COMPILING.left < 0:
                raise PatternTooLarge(
                    f"the schema's patterns together compile to more than"
                    f" {SCHEMA_PATTERN_SIZE:,} RE2 instructions"
                )
    return True


# Checking a schema checks its patterns (the meta-schema's ``format: regex``) with RE2, the
# engine that will run them; the other formats as jsonschema does.
SCHEMA_FORMATS = FormatChecker(formats=())
SCHEMA_FORMATS.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
SCHEMA_FORMATS.checks("regex", raises=re2.error)(_is_re2_pattern)
