"""``where`` filters: trees of and/or/not over ``[field, op, value]`` leaves.

Shape (docs/STORE.md): a node is a leaf ``[field, op, value]``, ``{"and": [nodes]}``,
``{"or": [nodes]}`` or ``{"not": node}``. A top-level list is the AND of its nodes, so the
original flat form ``[[f, op, v], ...]`` keeps its meaning. ``{"and": []}`` is true and
``{"or": []}`` is false.

Limits keep parsing and evaluation bounded however hostile the input: a depth of at most
``MAX_DEPTH`` nodes on any path from the root and at most ``MAX_NODES`` nodes in all (a
top-level list counts as an ``and`` node), ``in`` lists of at most ``max_in`` values. The
parser checks depth before descending, so a deeply nested input never reaches Python's
recursion limit. Every error names the bad node by its ``path`` from the root (map keys and
list indexes, e.g. ``["or", 1, "and", 0]``) in ``details``, next to ``"arg": "where"``.

``parse_where`` returns the root's conjuncts, nested ANDs flattened; ``plan`` picks the rows
to read: the leaves among them go to ``Table.candidates`` (an indexed ``eq``/``in`` there reads
only the index's ids); failing that, a root OR whose every child is such a leaf reads the union
of their ids (in creation order). The rest is compiled into one predicate. Leaves under a NOT,
or under an OR with any other child, never use an index: they cannot narrow the rows alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storeserver.errors import BadRequest, LimitExceeded, StoreError
from storeserver.query import (
    OPERATORS,
    Condition,
    Predicate,
    check_field,
    check_visible,
    compile_condition,
)
from storeserver.records import check_value, operands_budget
from storeserver.tables import UNION_MAX

if TYPE_CHECKING:
    from storeserver.tables import Table

MAX_DEPTH = 8
MAX_NODES = 100

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = Condition | And | Or | Not


def _details(path: Path, **extra: Any) -> dict[str, Any]:
    return {"arg": "where", "path": list(path), **extra}


class _Parser:
    __slots__ = ("budget", "hidden", "include_hidden", "max_in", "nodes")

    def __init__(self, hidden: frozenset[str], include_hidden: bool, max_in: int) -> None:
        self.hidden = hidden
        self.include_hidden = include_hidden
        self.max_in = max_in
        self.nodes = 0
        self.budget = operands_budget()

    def node(self, raw: Any, path: Path, depth: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LimitExceeded(
                f"where: more than {MAX_NODES} nodes", _details(path, max=MAX_NODES)
            )
        if depth > MAX_DEPTH:
            raise LimitExceeded(
                f"where: nested deeper than {MAX_DEPTH}", _details(path, max=MAX_DEPTH)
            )
        t = type(raw)
        if t is list or t is tuple:
            return self.leaf(raw, path)
        if t is not dict or len(raw) != 1:
            raise BadRequest(
                "where: a node is [field, op, value], {and: [...]}, {or: [...]} or {not: node}",
                _details(path),
            )
        ((key, value),) = raw.items()
        if key == "not":
            return Not(self.node(value, (*path, "not"), depth + 1))
        if key != "and" and key != "or":
            raise BadRequest(f"where: unknown node {str(key)[:40]!r}", _details(path))
        if type(value) is not list:
            raise BadRequest(f"where: {key} takes a list of nodes", _details(path))
        children = tuple(
            self.node(child, (*path, key, i), depth + 1) for i, child in enumerate(value)
        )
        return And(children) if key == "and" else Or(children)

    def leaf(self, raw: list[Any] | tuple[Any, ...], path: Path) -> Condition:
        if len(raw) != 3:
            raise BadRequest("where: each condition is [field, op, value]", _details(path))
        field, op, value = raw
        try:
            check_field(field, "where")
            check_visible(field, self.hidden, self.include_hidden)
            if type(op) is not str or op not in OPERATORS:
                raise BadRequest(f"where: unknown operator {str(op)[:40]!r}", {"field": field})
            if op == "in":
                if type(value) is not list:
                    raise BadRequest("where: 'in' takes a list", {"field": field})
                if len(value) > self.max_in:
                    raise LimitExceeded(
                        f"where: 'in' list longer than {self.max_in}", {"max": self.max_in}
                    )
            elif op == "startswith" and type(value) is not str:
                raise BadRequest("where: 'startswith' takes a string", {"field": field})
            elif op == "exists" and type(value) is not bool:
                raise BadRequest("where: 'exists' takes true or false", {"field": field})
            check_value(value, self.budget)
        except StoreError as exc:
            exc.details = {**exc.details, **_details(path)}
            raise
        return Condition(field, op, value)


def _conjuncts(node: Node) -> list[Node]:
    """The nodes ANDed at the top of ``node`` (nested ANDs flattened)."""
    if type(node) is not And:
        return [node]
    out: list[Node] = []
    for child in node.children:
        out.extend(_conjuncts(child))
    return out


def parse_where(raw: Any, hidden: frozenset[str], include_hidden: bool, max_in: int) -> list[Node]:
    """Validate a ``where`` argument into the nodes ANDed at its root (``[]`` for none).

    The old flat form gives a list of ``Condition`` leaves.
    """
    if raw is None:
        return []
    parser = _Parser(hidden, include_hidden, max_in)
    if type(raw) is list:
        parser.nodes = 1  # the list is the root ``and`` node
        out: list[Node] = []
        for i, item in enumerate(raw):
            node = parser.node(item, (i,), 2)
            if type(node) is Condition:  # the old flat form: no wrapper to build or flatten
                out.append(node)
            else:
                out.extend(_conjuncts(node))
        return out
    if type(raw) is dict:
        return _conjuncts(parser.node(raw, (), 1))
    raise BadRequest("where must be a list of conditions or a filter tree", _details(()))


def weight(nodes: list[Node]) -> int:
    """The nodes of a parsed ``where`` (the cost of testing one row, roughly)."""
    total = 0
    for node in nodes:
        if type(node) is Condition:
            total += 1
        elif type(node) is Not:
            total += 1 + weight([node.child])
        else:
            total += 1 + weight(list(node.children))  # type: ignore[union-attr]
    return total


def fields_of(nodes: list[Node]) -> list[str]:
    """The field names a parsed ``where`` tests, sorted, each once: what the audit log keeps
    of a filter (its values may be personal data)."""
    names: set[str] = set()
    stack = [*nodes]
    while stack:
        node = stack.pop()
        if type(node) is Condition:
            names.add(node.field)
        elif type(node) is Not:
            stack.append(node.child)
        else:
            stack.extend(node.children)  # type: ignore[union-attr]
    return sorted(names)


def leaves_of(nodes: list[Node]) -> list[Condition]:
    """The leaves among root conjuncts: the conditions an index may serve."""
    return [n for n in nodes if type(n) is Condition]


def plan(
    table: Table, nodes: list[Node], *, ordered: bool = True
) -> tuple[Iterable[str] | None, Predicate | None]:
    """The ids to read (``None``: every row, in creation order) and the test the records
    read must still pass (``None``: none; the ids already meet every node).

    ``ordered=False`` (``count``): the ids may come in any order. Ids from several index
    buckets (an ``in``, an ``or`` of leaves) must otherwise be sorted into creation order in
    one go, so past ``tables.UNION_MAX`` of them the table is read instead (in chunks)."""
    ids, exact = _indexed(table, nodes, ordered)
    predicate = compile_predicate([n for n in nodes if n is not exact], table.casefold_fields)
    return ids, predicate


def _indexed(
    table: Table, nodes: list[Node], ordered: bool
) -> tuple[Iterable[str] | None, Node | None]:
    leaves = leaves_of(nodes)
    if leaves:
        ids, exact = table.candidates(leaves, ordered=ordered)
        if ids is not None:
            return ids, exact
    for node in nodes:
        if type(node) is Or and node.children:
            union = _union(table, node.children, ordered)
            if union is not None:
                return union, node
    return None, None


def _union(table: Table, children: tuple[Node, ...], ordered: bool) -> list[str] | None:
    """The ids meeting any of ``children`` (in creation order if ``ordered``), if each is a
    leaf an index serves exactly and there are at most ``UNION_MAX`` of them; else ``None``."""
    total = 0
    for leaf in children:
        size = table.estimate(leaf) if type(leaf) is Condition else None
        if size is None:
            return None
        total += size
    rows = table.rows
    if total > UNION_MAX or total * 2 > len(rows):  # reading the table (in chunks) is cheaper
        return None
    seen: dict[str, None] = {}
    for leaf in children:
        ids, exact = table.candidates([leaf], ordered=False)  # type: ignore[list-item]
        if ids is None or exact is not leaf:
            return None
        seen.update(dict.fromkeys(ids))
    if not ordered:
        return list(seen)
    return sorted(seen, key=lambda i: rows[i]["created_at"])


def _compile(node: Node, casefold: frozenset[str]) -> Predicate:
    if type(node) is Condition:
        return compile_condition(node, casefold)
    if type(node) is Not:
        inner = _compile(node.child, casefold)
        return lambda r: not inner(r)
    assert type(node) is And or type(node) is Or
    tests = [_compile(child, casefold) for child in node.children]
    if len(tests) == 1:
        return tests[0]
    if type(node) is And:
        return _all(tests)
    return lambda r: any(t(r) for t in tests)


def _all(tests: list[Predicate]) -> Predicate:
    if not tests:
        return lambda r: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:  # the common case, without a generator per row
        first, second = tests
        return lambda r: first(r) and second(r)
    return lambda r: all(t(r) for t in tests)


def compile_predicate(
    nodes: list[Node], casefold: frozenset[str] = frozenset()
) -> Predicate | None:
    """One function testing all ``nodes`` (ANDed); ``None`` when there are none.

    ``casefold`` names the fields compared like a case-insensitive collation by ``eq``,
    ``ne`` and ``in`` (those with a casefold unique index); other operators stay exact.
    """
    if not nodes:
        return None
    return _all([_compile(n, casefold) for n in nodes])
