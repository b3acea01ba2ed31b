"""The store's memory in use, read cheaply enough to check before every write.

Design note. ``STORE_MAX_MEMORY`` is compared with the memory the store's data holds, not with
raw RSS: freed memory mostly stays in the process, so after a spike (thousands of peers each
holding a 64 KiB buffer: RSS 178 → 434 MB) or after deleting rows, RSS stays high while the
data fits again, and writes were refused for as long as the process lived. So, once RSS
reaches the limit (at most once a ``trim_s``), the gauge

- asks glibc to give freed heap pages back to the OS (``malloc_trim(0)``: the spike's
  buffers, ~20 ms for 250 MB), and reads RSS again;
- subtracts what Python's small-object allocator holds free for reuse (freed blocks and
  empty pools, which deleted records leave scattered through its arenas and later records
  fill before RSS grows), up to a quarter of the limit: read from
  ``_PyObject_DebugMallocStats``, ~0.2 ms.

That is closer to Redis's ``used_memory`` (what the allocators hand out) than RSS is. Free
blocks of one size serve only objects of that size, so RSS can pass the limit while such space
is counted: by a quarter of the limit at most (QA: with a tenth, the memory a burst of long
reads left behind, ~60 MB over a 250 MB limit, kept writes refused after 60 % of the rows were
deleted). Where glibc or those statistics are missing, the gauge falls back to plain RSS.

The memory in use (RSS less all of that free space) is what long reads are held to
(``reads_over``): a read that takes it a quarter past the limit stops with ``MEMORY_LIMIT``
(QA: eight aggregates over 245,000 rows took RSS to 2.8 times the limit).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("storeserver.memory")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> int:
    """Resident set size of this process in bytes (from /proc, else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _symbol(library: Any, name: str) -> Any:
    try:
        return getattr(library, name)
    except AttributeError:  # not glibc (musl has no malloc_trim), or not CPython's allocator
        return None


try:
    _LIBC: Any = ctypes.CDLL(None)
except OSError:  # no C library to load symbols from (not a POSIX system)
    _LIBC = None
_MALLOC_TRIM = _symbol(_LIBC, "malloc_trim")
_OPEN_MEMSTREAM = _symbol(_LIBC, "open_memstream")
_MALLOC_STATS = _symbol(ctypes.pythonapi, "_PyObject_DebugMallocStats")
if _OPEN_MEMSTREAM is not None and _MALLOC_STATS is not None:
    _OPEN_MEMSTREAM.restype = ctypes.c_void_p
    _OPEN_MEMSTREAM.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    _LIBC.fclose.argtypes = [ctypes.c_void_p]
    _LIBC.free.argtypes = [ctypes.c_void_p]
    _MALLOC_STATS.argtypes = [ctypes.c_void_p]
# The lines of the statistics (as ``sys._debugmallocstats`` prints them) counting reusable
# space: "# bytes in available blocks = 80,946,256" and "36 unused pools * 16384 bytes = ...".
_FREE_LINE = re.compile(
    rb"^(?:# bytes in available blocks|\d+ unused pools \*.*?)\s*=\s*([\d,]+)$", re.M
)


def trim_heap() -> None:
    """Give glibc's free heap pages back to the OS (nothing where there is no glibc)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def read_reusable() -> int:
    """Bytes Python's small-object allocator holds free for reuse (0 where unknown)."""
    if _OPEN_MEMSTREAM is None or _MALLOC_STATS is None:
        return 0
    text = ctypes.c_char_p()
    size = ctypes.c_size_t()
    stream = _OPEN_MEMSTREAM(ctypes.byref(text), ctypes.byref(size))
    if not stream:
        return 0
    try:
        _MALLOC_STATS(stream)
    finally:
        _LIBC.fclose(stream)  # sets text and size
    try:
        report = ctypes.string_at(text, size.value)
    finally:
        _LIBC.free(text)
    return sum(int(number.replace(b",", b"")) for number in _FREE_LINE.findall(report))


class MemoryGauge:
    """Memory in use against a limit, re-read at most every ``refresh_s`` so writes stay
    cheap (see the module's note: RSS, less up to a quarter of the limit that Python holds free
    once RSS reaches the limit, after giving freed pages back at most every ``trim_s``).

    Like Redis's ``noeviction`` policy: past the limit, writes are refused and reads go on.
    A limit of 0 means none. The readers are parameters so tests can play a spike.
    """

    def __init__(
        self,
        limit_bytes: int,
        refresh_s: float = 0.1,
        trim_s: float = 1.0,
        rss_reader: Callable[[], int] = read_rss,
        trimmer: Callable[[], None] = trim_heap,
        reusable_reader: Callable[[], int] = read_reusable,
    ) -> None:
        self.limit = limit_bytes
        self._refresh_s = refresh_s
        self._trim_s = trim_s
        self._read_rss = rss_reader
        self._trim = trimmer
        self._read_reusable = reusable_reader
        self._rss = rss_reader()
        self._read_at = time.monotonic()
        self._used = self._rss
        self._live = self._rss  # RSS less all the free space Python holds (``reads_over``)
        self._measured_at = -float("inf")  # the first check measures
        self._trimmed_at = -float("inf")
        self._over = False  # at the last check

    def rss(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= self._refresh_s:
            self._rss = self._read_rss()
            self._read_at = now
        return self._rss

    def used(self) -> int:
        """The figure compared with the limit: RSS, less (up to a quarter of the limit) the
        free memory Python holds once RSS reaches the limit."""
        now = time.monotonic()
        if now - self._measured_at < self._refresh_s:
            return self._used
        self._measured_at = now
        rss = live = self.rss()
        if 0 < self.limit <= rss:
            if now - self._trimmed_at >= self._trim_s:
                self._trimmed_at = now
                self._trim()
                self._rss = rss = live = self._read_rss()
                self._read_at = now
            if rss >= self.limit:
                # Records of other sizes cannot use that space: counting all of it could let
                # RSS grow as far again. A quarter of the limit, at most, is the overshoot.
                reusable = self._read_reusable()
                live = rss - reusable
                rss -= min(reusable, self.limit // 4)
        self._used, self._live = rss, live
        return rss

    def reads_over(self) -> bool:
        """Whether the memory in use (RSS less all the free space Python holds) is a quarter
        past the limit: a long read then stops (``MEMORY_LIMIT``). Space freed since counts
        at once, so a read that stopped frees the way for the next."""
        if self.limit <= 0:
            return False
        self.used()
        return self._live >= self.limit + self.limit // 4

    def over_limit(self) -> bool:
        """Whether writes that add data are refused; the first refusal after any accepted
        check, and the first accepted check after refusals, are logged (once per crossing:
        an operator sees the state change, not one line per refused write)."""
        over = self.limit > 0 and self.used() >= self.limit
        if over != self._over:
            self._over = over
            if over:
                log.warning(
                    "memory_limit_reached", used=self._used, rss=self._rss, max_memory=self.limit
                )
            else:
                log.info(
                    "memory_limit_cleared", used=self._used, rss=self._rss, max_memory=self.limit
                )
        return over
