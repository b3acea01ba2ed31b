"""Long definitions (an index build, a schema check) whose table is written between their
steps: the rows written meanwhile cost their own writes, not one last step (QA: 198,924 moved
ids sorted in the last step of a hash index build after 5 patches, 0.42 s; 50,000 rows
checked again in the last step of a schema check, 2.2 s). Bounded here by calls and counts,
not by time."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver import builds, definitions, schemas
from storeserver.engine import Engine
from storeserver.indexes import HashIndex
from tests.support.calls import count_calls

ROWS = 2000


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(definitions, "CHUNK", 10)  # a job past 10 rows, not 10,000
    engine = Engine(journal=False)
    for n in range(ROWS):
        engine.execute(
            "insert", {"table": "t", "record": {"id": f"r{n:05d}", "g": f"g{n % 5}", "n": n}}
        )
    return engine


def test_a_hash_build_places_only_the_rows_written_meanwhile(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = engine.execute("create_index", {"table": "t", "field": "g"})
    assert isinstance(build, builds.IndexBuild)
    engine.advance(build)  # the first row
    for n in range(ROWS - 5, ROWS):  # the newest row of each value, its value kept
        engine.execute("patch", {"table": "t", "id": f"r{n:05d}", "changes": {"note": 1}})
    engine.execute("patch", {"table": "t", "id": "r00003", "changes": {"g": "g0"}})
    engine.execute("insert", {"table": "t", "record": {"id": "new", "g": "g1"}})
    placed: list[int] = []
    normalize = HashIndex.normalize

    def counting(index: HashIndex) -> None:
        placed.append(sum(len(ids) for ids in index.moved.values()))
        normalize(index)

    monkeypatch.setattr(HashIndex, "normalize", counting)
    while not engine.advance(build)[0]:
        pass
    assert placed == [7]  # the rows written, not every older row the scan met after them
    table = engine._catalog.tables["t"]
    index = table.hashes["g"]
    for key in ("g0", "g1", "g2", "g3", "g4"):
        scan = [rid for rid, row in table.rows.items() if row["g"] == key]
        assert list(index.ids(key)) == scan  # every id, in creation order


def test_rows_written_during_a_schema_check_are_checked_as_written(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_calls(monkeypatch, schemas.TableSchema, "errors")
    schema: dict[str, Any] = {"properties": {"n": {"maximum": ROWS}}}
    job = engine.execute("set_schema", {"table": "t", "schema": schema, "force": True})
    assert isinstance(job, builds.SchemaCheck)
    engine.advance(job)
    before = checks.calls
    for n in range(1500):  # past the maximum: each checked as it is written
        engine.execute("patch", {"table": "t", "id": f"r{n:05d}", "changes": {"n": ROWS + 1 + n}})
    assert checks.calls - before == 1500
    done, report, per_step = False, None, []
    while not done:
        position, before = job.pos, checks.calls
        done, report = engine.advance(job)
        per_step.append((checks.calls - before, job.pos - position))
    assert all(calls == rows for calls, rows in per_step)  # the step's own rows, no more
    assert report is not None and report["violating"] == 1500
