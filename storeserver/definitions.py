"""The table definition commands: ``create_table``, ``drop_table``, ``create_index``,
``drop_index``, ``list_indexes``, ``set_schema`` and ``list_tables``.

Kept apart from the engine as the record commands are (``reads``, ``writes``): they change the
catalog (``catalog.Catalog``, ``TableSpec``), not records, journal the definitions
(``("table", name, spec)``, ``("schema", name, document)``, ``("drop_index", name, field)``,
``("drop_table", name, highest version)``) and note them in the audit log. An index build or a
schema check over more than ``CHUNK`` rows is returned as a job (``builds.IndexBuild``,
``builds.SchemaCheck``) that the engine advances, then hands back here to ``finish``.

``drop_table`` refuses what would break something still relying on the table: an internal
table (``_`` names: the API's own), one that declares rows it must keep (``users``' last
admin), one another table's foreign key references, and one a long command is running on (an
index build, a schema check, a ``*_where`` selection: each would finish on rows no longer
there). Without ``force`` it also refuses a table holding rows. Scan cursors open over the
table are closed: reading one is ``NOT_FOUND``, as for an expired cursor. Long reads in
progress (``builds.ChunkedRead``) finish on the rows they started with.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from storeserver.arguments import Args, check_keys, optional_bool, table_name
from storeserver.builds import CHUNK, STEP_SECONDS, IndexBuild, Job, SchemaCheck
from storeserver.catalog import TableSpec, check_index_room
from storeserver.errors import BadRequest, Conflict
from storeserver.query import check_field
from storeserver.records import same_value
from storeserver.schemas import TableSchema

if TYPE_CHECKING:
    from storeserver.audit import AuditLog
    from storeserver.catalog import Catalog
    from storeserver.scans import ScanCursors
    from storeserver.tables import Table
    from storeserver.writes import RecordWriter

_CREATE_TABLE_ARGS = frozenset({"table", "indexes", "foreign_keys", "hidden", "keep"})
_CREATE_INDEX_ARGS = frozenset({"table", "field", "unique", "casefold"})
_INDEX_ARGS = frozenset({"table", "field"})
_TABLE_ARGS = frozenset({"table"})
_DROP_TABLE_ARGS = frozenset({"table", "force"})
_SET_SCHEMA_ARGS = frozenset({"table", "schema", "force"})


class TableDefinitions:
    def __init__(
        self, catalog: Catalog, writer: RecordWriter, audit: AuditLog, scans: ScanCursors
    ) -> None:
        self._catalog = catalog
        self._writer = writer
        self.audit = audit
        self._scans = scans
        self.spill = False
        """``set_schema`` and ``create_index`` over few rows go on as a job once they have
        run ``STEP_SECONDS`` (``Engine.spill_reads``: a server's)."""

    def create_table(self, args: Args) -> dict[str, bool]:
        check_keys(args, _CREATE_TABLE_ARGS)
        name = table_name(args)
        created, changed = self._catalog.define(name, TableSpec.parse(args))
        if changed:
            self._journal_table(name)
        return {"created": created}

    def drop_table(self, args: Args) -> dict[str, Any]:
        """Remove a table, its rows, indexes, schema and declarations (see the module doc)."""
        check_keys(args, _DROP_TABLE_ARGS)
        table = self._catalog.get(args)
        force = optional_bool(args, "force")
        self._check_droppable(table, force)
        name, rows = table.name, len(table.rows)
        highest = self._catalog.remove(name)
        self._scans.close_table(table)
        if self._writer.journal:
            self._writer.changes.append(("drop_table", name, highest))
        self.audit.add(name, "drop_table", None, (), rows)
        return {"dropped": True, "rows": rows}

    def _check_droppable(self, table: Table, force: bool) -> None:
        name = table.name
        if name.startswith("_"):
            raise Conflict(
                f"{name} is an internal table (its name starts with '_'): it cannot be dropped",
                {"reason": "internal", "table": name},
            )
        if table.keeps:
            field, value, at_least = table.keeps[0]
            raise Conflict(
                f"{name} must keep at least {at_least} row(s) with {field} = {value!r}:"
                " it cannot be dropped",
                {"reason": "keep_rows", "table": name, "field": field},
            )
        referencing = self._catalog.referencing(name)
        if referencing:
            named = ", ".join(f"{child}.{field}" for child, field in referencing)
            raise Conflict(
                f"{name} is referenced by the foreign key {named}: drop {referencing[0][0]} first",
                {
                    "reason": "referenced",
                    "table": name,
                    "dependant_table": referencing[0][0],
                    "field": referencing[0][1],
                    "referenced_by": [{"table": t, "field": f} for t, f in referencing],
                },
            )
        if table.watchers:
            commands = sorted(
                {getattr(w, "command", "") or "a long command" for w in table.watchers}
            )
            raise Conflict(
                f"{', '.join(commands)} is running on {name}: drop it once that ends",
                {"reason": "busy", "table": name, "commands": commands},
            )
        if table.rows and not force:
            raise Conflict(
                f"{name} holds {len(table.rows)} row(s): send force to drop them with it",
                {"reason": "not_empty", "table": name, "rows": len(table.rows)},
            )

    def create_index(self, args: Args) -> dict[str, bool] | Job:
        check_keys(args, _CREATE_INDEX_ARGS)
        table = self._catalog.get(args)
        spec = TableSpec.parse({"indexes": [{k: v for k, v in args.items() if k != "table"}]})
        field, unique, casefold = spec.indexes[0]
        new = table.index_is_new(field, unique, casefold)
        if new:
            check_index_room(table, 1, 0)
        if new and (len(table.rows) > CHUNK or (self.spill and table.rows)):
            job = IndexBuild(table, field, unique, casefold)
            job.context = self.audit.context
            # At once while it is quick; rows costly to key (huge lists) go on as a job, a
            # few per step, as set_schema's check does (QA: 20 rows of 300,000-item lists
            # held the store ~2 s in one step).
            if len(table.rows) > CHUNK or not self._at_once(job):
                return job
            return self.finish(job)
        _, changed = self._catalog.define(table.name, spec)
        if changed:
            self._journal_table(table.name)
            self.audit.add(table.name, "create_index", None, (field,), len(table.rows))
        return {"created": changed}

    def finish(self, job: IndexBuild | SchemaCheck) -> dict[str, Any]:
        """The result of a ``create_index`` or ``set_schema`` run as a job, once it is done."""
        if isinstance(job, IndexBuild):
            job.finish()
            name = job.table.name
            self._journal_table(name)
            self.audit.add(name, "create_index", None, (job.field,), len(job.table.rows))
            return {"created": True}
        return self._attach_schema(job)

    def drop_index(self, args: Args) -> dict[str, bool]:
        check_keys(args, _INDEX_ARGS)
        table = self._catalog.get(args)
        field = check_field(args.get("field"), "field")
        table.check_not_building(field)
        if field in table.foreign_keys:
            raise BadRequest(
                f"the foreign key on {field!r} needs its index",
                {"arg": "field", "field": field, "reason": "foreign_key", "table": table.name},
            )
        dropped = table.drop_index(field)
        if dropped:
            if self._writer.journal:
                self._writer.changes.append(("drop_index", table.name, field))
            self.audit.add(table.name, "drop_index", None, (field,), 0)
        return {"dropped": dropped}

    def list_indexes(self, args: Args) -> list[dict[str, Any]]:
        check_keys(args, _TABLE_ARGS)
        return self._catalog.get(args).index_specs()

    def set_schema(self, args: Args) -> dict[str, Any] | Job:
        check_keys(args, _SET_SCHEMA_ARGS)
        name = table_name(args)
        if "schema" not in args:
            raise BadRequest("schema is required (a JSON Schema map, or null)", {"arg": "schema"})
        force = optional_bool(args, "force")
        schema = None if args["schema"] is None else TableSchema.parse(args["schema"])
        table = self._catalog.tables.get(name)
        if schema is None:
            # No table: NOT_FOUND, as every other command on one (QA: removing the schema of
            # a misspelt table answered that none was attached, a success).
            table = self._catalog.get(args)
            if table.schema is not None:
                table.schema = None
                self._journal_schema(name, None)
                self.audit.add(name, "set_schema", None, (), 0)
            return {"attached": False, "checked": 0, "violating": 0, "violations": []}
        if table is None:
            self._catalog.check_room()
            table = self._catalog.add_empty(name)
            self._journal_table(name)
        check = SchemaCheck(table, schema, force)
        check.context = self.audit.context
        # At once while it is quick (a new, empty table cannot fail the check); a schema
        # costly to check (up to MAX_STEPS keywords a row) goes on a row or so per step.
        if len(table.rows) > CHUNK or not self._at_once(check):
            return check
        return self._attach_schema(check)

    def _at_once(self, job: IndexBuild | SchemaCheck) -> bool:
        """Run ``job`` here while it is quick: True once it is done; False once it has run
        ``STEP_SECONDS`` and the server lets it go on as a job (``spill``)."""
        deadline = time.perf_counter() + STEP_SECONDS
        while not job.step():
            if self.spill and time.perf_counter() >= deadline:
                return False
        return True

    def _attach_schema(self, check: SchemaCheck) -> dict[str, Any]:
        report = check.report()
        table = check.table
        if report["violating"] and not check.force:
            raise Conflict(
                f"{report['violating']} rows of {table.name} do not match the schema",
                {"reason": "schema_violations", "table": table.name, **report},
            )
        attached = table.schema
        if attached is None or not same_value(attached.document, check.schema.document):
            table.schema = check.schema
            self._journal_schema(table.name, check.schema.document)
            self.audit.add(table.name, "set_schema", None, (), report["checked"])
        # else the same schema again changes nothing: no log or audit entry, as for a write
        # that changes nothing (QA: each repeat added both), and the attached one stays (its
        # keys in their order: the log holds that one, review)
        return {"attached": True, **report}

    def _journal_schema(self, name: str, document: Any) -> None:
        if self._writer.journal:
            self._writer.changes.append(("schema", name, document))

    def _journal_table(self, name: str) -> None:
        if self._writer.journal:
            self._writer.changes.append(("table", name, self._catalog.spec_of(name)))

    def list_tables(self, args: Args) -> list[str]:
        check_keys(args, frozenset())
        return list(self._catalog.tables)
