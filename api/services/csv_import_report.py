"""The report of a CSV import (``ImportReport``): rows read, imported and failed, the row
errors, and where an interrupted import stopped.

Kept apart from the import itself because every part of it fills or reads the report: the
driver (``csv_import``), the chunk writer (``csv_import_batches``), the error answers
(``csv_import_errors``), and the import job, which holds it to report progress and the
result (``api.jobs.imports``).
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.services.csv_rows import RowError

MAX_ERRORS = 100
MAX_ERROR_TEXT = 1000
"""Characters of an error's ``field`` and ``message`` kept (longer ones end in ``…``): a column
name has no bound of its own, and 100 errors naming a 100,000-character column made a 10 MB
report, too large for the record an import job keeps its result in (QA: the job could not
record its end and was declared lost to a crash it never had)."""


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ERROR_TEXT:
        return text
    return text[: MAX_ERROR_TEXT - 1] + "…"


@dataclass
class ImportReport:
    table: str
    atomic: bool
    rows: int = 0
    imported: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_omitted: int = 0
    stopped_at_row: int | None = None  # a malformed line ended the reading there
    # Not in the answer: what an interrupted import tells (``interrupted``). Rows are written
    # in file order, so every row up to ``last_row_written`` was written or failed.
    last_row_written: int = 0
    unconfirmed: tuple[int, int] | None = None  # first and last row of a batch in doubt

    def add(self, errors: list[RowError]) -> None:
        """Keep the ``MAX_ERRORS`` errors of the first rows, in row order (a row's own in
        the order given). Errors arrive out of row order: the next chunk is read, and its
        invalid rows reported, while the store still writes the one before (QA: the list held
        later rows' errors and counted an earlier row's among the omitted)."""
        kept = self.errors
        for error in errors:
            if len(kept) >= MAX_ERRORS and error.row >= kept[-1]["row"]:
                self.errors_omitted += 1
                continue
            entry = {"row": error.row, "field": _cut(error.field), "message": _cut(error.message)}
            insort(kept, entry, key=itemgetter("row"))
            if len(kept) > MAX_ERRORS:
                kept.pop()
                self.errors_omitted += 1

    def stop(self, error: RowError) -> None:
        """The reading ended at a malformed line: a failed row, and the end of the file read."""
        self.rows += 1
        self.failed += 1
        self.stopped_at_row = error.row
        self.add([error])

    def as_dict(self) -> dict[str, Any]:
        answer = {
            "table": self.table,
            "atomic": self.atomic,
            "rows": self.rows,
            "imported": self.imported,
            "failed": self.failed,
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
        }
        if self.stopped_at_row is not None:  # only then: a job's stored result has no nulls
            answer["stopped_at_row"] = self.stopped_at_row
        return answer
