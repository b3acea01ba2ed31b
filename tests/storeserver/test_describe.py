"""The ``describe`` command: a table's fields and value types over a sample of rows."""

from __future__ import annotations

from decimal import Decimal

import pytest

from storeserver.builds import Job
from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded, NotFound
from storeserver.reads import MAX_SAMPLE
from tests.storeserver.jobs import finish

META = {"id", "created_at", "updated_at", "version"}


@pytest.fixture
def engine() -> Engine:
    engine = Engine(journal=False)
    engine.execute(
        "create_table",
        {
            "table": "users",
            "indexes": [{"field": "email", "unique": True, "casefold": True}],
            "hidden": ["pw"],
        },
    )
    engine.execute(
        "create_table",
        {
            "table": "things",
            "indexes": [{"field": "kind"}],
            "foreign_keys": [{"field": "owner", "table": "users"}],
        },
    )
    engine.execute("insert", {"table": "users", "record": {"id": "u", "email": "a@x", "pw": "s"}})
    values = [
        None,
        True,
        3,
        2.5,
        Decimal("1.10"),
        "text",
        [1, "x"],
        {"nested": {"deep": 1}},
    ]
    for value in values:
        engine.execute(
            "insert", {"table": "things", "record": {"kind": "k", "owner": "u", "v": value}}
        )
    engine.execute("insert", {"table": "things", "record": {"kind": 7}})
    return engine


def test_describe_mixed_data(engine: Engine) -> None:
    result = engine.execute("describe", {"table": "things"})
    assert result["table"] == "things" and result["rows"] == 9 and result["sampled"] == 9
    assert result["indexes"] == [  # the foreign key's index is added by create_table
        {"field": "kind", "unique": False, "casefold": False},
        {"field": "owner", "unique": False, "casefold": False},
    ]
    assert result["foreign_keys"] == [{"field": "owner", "table": "users"}]
    assert result["schema"] is None
    fields = result["fields"]
    assert list(fields) == sorted(fields) and set(fields) == META | {"kind", "owner", "v"}
    assert fields["v"] == {
        "count": 8,
        "types": {
            "null": 1,
            "bool": 1,
            "int": 1,
            "float": 1,
            "decimal": 1,
            "str": 1,
            "list": 1,
            "map": 1,
        },
    }
    assert fields["kind"] == {"count": 9, "types": {"str": 8, "int": 1}}
    assert fields["id"] == {"count": 9, "types": {"str": 9}}
    assert fields["version"] == {"count": 9, "types": {"int": 9}}


def test_describe_samples_the_newest_rows(engine: Engine) -> None:
    result = engine.execute("describe", {"table": "things", "sample": 1})
    assert result["rows"] == 9 and result["sampled"] == 1
    assert set(result["fields"]) == META | {"kind"}  # the last row has no owner and no v
    assert result["fields"]["kind"] == {"count": 1, "types": {"int": 1}}


def test_describe_leaves_hidden_fields_out(engine: Engine) -> None:
    result = engine.execute("describe", {"table": "users"})
    assert set(result["fields"]) == META | {"email"}
    assert result["indexes"] == [{"field": "email", "unique": True, "casefold": True}]
    engine.execute("create_table", {"table": "empty"})
    empty = engine.execute("describe", {"table": "empty"})
    assert empty["rows"] == empty["sampled"] == 0 and empty["fields"] == {}


def test_describe_arguments(engine: Engine) -> None:
    for bad in ({"sample": 0}, {"sample": "5"}, {"sample": True}, {"bogus": 1}, {}):
        with pytest.raises(BadRequest):
            engine.execute("describe", {"table": "things", **bad} if bad else {})
    with pytest.raises(LimitExceeded) as info:
        engine.execute("describe", {"table": "things", "sample": MAX_SAMPLE + 1})
    assert info.value.details == {"arg": "sample", "max": MAX_SAMPLE}
    with pytest.raises(NotFound):
        engine.execute("describe", {"table": "ghosts"})
    assert "describe" not in Engine.WRITE_COMMANDS


def test_a_big_sample_is_read_in_chunks_as_of_the_start(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over ``CHUNK`` sampled rows describe is a job (100,000 rows at once held the store
    ~170 ms); its answer is the one read whole, whatever is written between its steps."""
    for i in range(10):
        engine.execute("insert", {"table": "things", "record": {"n": i, "kind": "k"}})
    whole = engine.execute("describe", {"table": "things"})
    assert not isinstance(whole, Job)
    monkeypatch.setattr("storeserver.reads.CHUNK", 3)
    job = engine.execute("describe", {"table": "things"})
    assert isinstance(job, Job)
    assert engine.advance(job) == (False, None)
    engine.execute("insert", {"table": "things", "record": {"late": True}})
    steps, result = finish(engine, job)
    assert steps >= 2
    assert result == whole
