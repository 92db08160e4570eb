"""Projection: decode only the parts of each input record that a bundle's rules read.

Parsing the input is the largest single cost of a run, and most of an SDK batch (device
details, session bookkeeping, state snapshots) is never read by any rule. The compiler records
every path its expressions and templates read (``ReadSet``); from those, ``decoder`` builds a
``msgspec`` decoder whose types name only those fields, so the parser skips everything else
without building Python objects for it.

The projected decode is an optimisation, never a change of meaning for data of the expected
shape: a value read whole decodes exactly as the full decode would, and a record whose shape
the types do not describe (``data`` a string, an event that is not an object, bad JSON, bad
UTF-8 in a read value) fails the projected decode and goes through the source's own, full
decode instead. Two differences remain, both in the record's favour and documented: a field
no rule reads is not checked beyond JSON syntax (bad UTF-8 there no longer fails the line),
and an integer beyond 64 bits in a read field arrives exact rather than rounded to a float.
Dead letters always carry the full record: the pipeline decodes the line again in full (its
integers exact, as the rules saw them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Optional, TypedDict

from jinja2 import nodes
from moerules.engine.compile.expressions import simple_path
from moerules.engine.compile.templates import attribute_chain

__all__ = ["WHOLE", "ReadSet", "decoder", "full_decoder", "jmespath_reads", "template_reads"]

Path = tuple[str | int, ...]
WHOLE: dict[str, Any] = {}  # a node read whole (its identity marks it; never filled)

# AST kinds whose right side reads the left side's result, not the scope
_RELATIVE_RIGHT = {
    "subexpression",
    "index_expression",
    "projection",
    "value_projection",
    "filter_projection",
    "flatten",
    "pipe",
}
_NO_READ = {"literal", "raw_string", "expref"}  # an &expression reads elements given elsewhere


class ReadSet:
    """The paths, from the rule scope (``batch``, ``event``), whose values rules may read."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}  # name -> WHOLE or a dict of children
        self.everything = False

    def add(self, path: Iterable[str | int]) -> None:
        """``path``'s value is read, whole: everything under it must be decoded."""
        parts: list[str] = []
        for part in path:
            if not isinstance(part, str):  # a list element: the list is read whole
                break
            parts.append(part)
        if not parts:
            self.everything = True
            return
        node = self.tree
        for part in parts[:-1]:
            child = node.get(part)
            if child is WHOLE:
                return
            if child is None:
                child = node[part] = {}
            node = child
        node[parts[-1]] = WHOLE

    def root(self, name: str) -> dict[str, Any] | None:
        """The paths read under root ``name``: WHOLE, a tree, or None when never read."""
        if self.everything:
            return WHOLE
        return self.tree.get(name)


def jmespath_reads(ast: dict[str, Any]) -> list[Path]:
    """The scope paths a JMESPath expression may read, each read whole: a path's own value,
    and the value a projection, filter, flatten, index or pipe works on (an
    over-approximation, never an under-)."""
    out: list[Path] = []
    _reads(ast, (), out)
    return out


def _reads(ast: dict[str, Any], base: Path | None, out: list[Path]) -> Path | None:
    """Add what ``ast``, evaluated on the value at ``base`` (None: a computed value, not
    the scope's), reads to ``out``; return the path of its own result when it is one."""
    kind = ast["type"]
    children = [c for c in ast.get("children", []) if isinstance(c, dict)]
    if kind == "subexpression":  # a chain: each child works on the one before
        current = base
        for child in children:
            step = simple_path(child)
            if step is not None and current is not None:
                current = (*current, *step)
            else:
                current = _reads(child, current, out)
        if current is not None and current != base:
            out.append(current)
        return None
    path = simple_path(ast)
    if path is not None:
        if base is not None:
            out.append((*base, *path))
        return None
    if kind in ("current", "identity"):
        if base is not None:
            out.append(base)
        return None
    if kind in _NO_READ:
        return None
    if kind in _RELATIVE_RIGHT:
        # the left side's value is read whole; the rest works on that value
        if children:
            left = simple_path(children[0])
            if left is not None:
                if base is not None:
                    out.append((*base, *left))
            else:
                _reads(children[0], base, out)
        return None
    for child in children:  # functions, comparisons, and/or/not, multi-selects
        _reads(child, base, out)
    return None


def template_reads(tree: nodes.Template, roots: Iterable[str]) -> list[Path]:
    """The scope paths a template reads: ``event.data.x`` chains, or a root whole when the
    template uses it any other way."""
    roots = frozenset(roots)
    out: list[Path] = []

    def visit(node: nodes.Node) -> None:
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            base, names, computed = attribute_chain(node)
            for key in computed:
                visit(key)
            if not isinstance(base, nodes.Name):
                visit(base)
            elif base.name in roots:
                out.append((base.name, *names))
            return
        if isinstance(node, nodes.Name):
            if node.name in roots:
                out.append((node.name,))
            return
        for child in node.iter_child_nodes():
            visit(child)

    visit(tree)
    return out


def _typed_dict(node: dict[str, Any], counter: list[int]) -> Any:
    """A TypedDict naming ``node``'s keys, typed for what is read under each (a dynamic
    class: msgspec reads its fields)."""
    counter[0] += 1
    fields = {key: _type(child, counter) for key, child in node.items()}
    return TypedDict(f"Read{counter[0]}", fields, total=False)  # type: ignore[operator]


def _type(node: dict[str, Any] | _Events, counter: list[int]) -> Any:
    if isinstance(node, _Events):
        # an event that is null or not an object fails the projected decode: the full
        # decode judges it
        return Optional[list[_typed_dict(node.event, counter)]]  # type: ignore[misc]  # noqa: UP045
    if node is WHOLE:
        return Any
    return Optional[_typed_dict(node, counter)]  # noqa: UP045 (a runtime type for msgspec)


class _Events:
    """The records' events: a list, each element read as ``event``."""

    __slots__ = ("event",)

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event


def decoder(reads: ReadSet, events_key: str | None) -> Callable[[bytes], Any] | None:
    """A decoder for one input line that builds only what ``reads`` names, or None when the
    rules read the whole record (nothing to skip)."""
    batch = reads.root("batch")
    if batch is WHOLE:
        return None
    record: dict[str, Any] = dict(batch or {})
    if events_key is not None:
        event = reads.root("event")
        if record.get(events_key) is WHOLE or event is WHOLE:
            record[events_key] = WHOLE
        else:
            # events are read one by one (a path into batch.events reads null: not a path
            # that needs the list)
            record[events_key] = _Events(event or {})
    import msgspec

    decode: Callable[[bytes], Any] = msgspec.json.Decoder(_typed_dict(record, [0])).decode
    return decode


@functools.cache
def full_decoder() -> Callable[[bytes], Any]:
    """The whole record, decoded the way the projected decode reads values (an integer beyond
    64 bits exact): what a dead letter of a projected record shows is what the rules saw."""
    import msgspec

    decode: Callable[[bytes], Any] = msgspec.json.Decoder().decode
    return decode
