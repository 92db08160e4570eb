"""Schema-aware checks: warn about a rule path the source's records can never contain.

``event.data.product_action.totl_amount`` is valid JMESPath and reads ``null`` on every
record, so the compiler cannot call it an error; but the mParticle batch schema knows a product
action has no ``totl_amount``, so ``moerules validate`` warns, at the path's ``file:line:col``,
with a did-you-mean. Every expression, template and spread of a bundle is followed through the
source's record schema (``Source.record_schema``, see ``shapes.py``), relative paths inside
``each`` and spread ``value`` included. A source without a schema is not checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import nodes as jinja
from moerules.engine.authoring.shapes import ANY, Node, RecordShape
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.compile.expressions import ExpressionError, parse
from moerules.engine.compile.templates import attribute_chain
from moerules.engine.errors import Position, Problem
from moerules.engine.rules.loading import LDict, position_of
from moerules.engine.rules.model import FieldSpec, Spread
from moerules.engine.rules.validation import did_you_mean

__all__ = ["record_path_warnings", "record_shape"]

Loc = tuple[str | int, ...]


def record_shape(compiled: CompiledBundle) -> RecordShape | None:
    """The shape of the bundle's source records, when the source declares a schema."""
    source = type(compiled.source)
    schema = getattr(source, "record_schema", None)
    if not isinstance(schema, Mapping):
        return None
    return RecordShape(schema, source.events_key, title=getattr(source, "name", "record"))


def record_path_warnings(raw: LDict, compiled: CompiledBundle) -> list[Problem]:
    """A warning for every rule path no record of the bundle's source can contain."""
    shape = record_shape(compiled)
    if shape is None:
        return []
    checker = _Checker(raw, shape)
    checker.bundle(compiled)
    return sorted(
        checker.problems, key=lambda p: (p.position.path, p.position.line, p.position.col)
    )


@dataclass(frozen=True)
class _Scope:
    current: list[Node]  # what a relative JMESPath starts from
    names: Mapping[str, list[Node]]  # what a template's names are
    label: str = ""  # what a relative path starts from, in words ("" at the rule scope)


class _Checker:
    def __init__(self, raw: LDict, shape: RecordShape) -> None:
        self.raw = raw
        self.shape = shape
        self.problems: list[Problem] = []
        self._seen: set[tuple[Position, str]] = set()
        self._lines: dict[str, list[str]] = {}
        self.root = _Scope([shape.scope], {"batch": [shape.batch], "event": [shape.event]})
        self._label = ""

    # -- the bundle --------------------------------------------------------------------------
    def bundle(self, compiled: CompiledBundle) -> None:
        model = compiled.model
        if model.identity is not None:
            for name, spec in model.identity.candidates.items():
                self.field(spec, ("identity", "candidates", name), self.root)
        if model.user is not None:
            user = model.user
            if user.when:
                self.jmespath(user.when, ("user", "when"), self.root)
            for i, spread in enumerate(user.spread):
                self.spread(spread, ("user", "spread", i), self.root)
            for name, spec in user.attributes.items():
                self.field(spec, ("user", "attributes", name), self.root)
        for i, rule in enumerate(model.events):
            loc: Loc = ("events", i)
            if rule.when:
                self.jmespath(rule.when, (*loc, "when"), self.root)
            if rule.event_name is not None:
                self.field(rule.event_name, (*loc, "event_name"), self.root)
            for j, spread in enumerate(rule.spread):
                self.spread(spread, (*loc, "spread", j), self.root)
            for name, spec in rule.attributes.items():
                self.field(spec, (*loc, "attributes", name), self.root)
            for name, spec in rule.fields.items():
                self.field(spec, (*loc, "fields", name), self.root)
        if model.routing is not None and model.routing.projects:
            self.jmespath(model.routing.from_, ("routing", "from"), self.root)

    def field(self, spec: FieldSpec, loc: Loc, scope: _Scope) -> None:
        if spec.from_ is not None:
            self.jmespath(spec.from_, self._at(loc, "from"), scope)
        if spec.template is not None:
            self.template(spec.template, self._at(loc, "template"), scope)
        inner = scope
        if spec.each is not None:
            items = self.shape.items(self.jmespath(spec.each, (*loc, "each"), scope))
            inner = _Scope(items or [ANY], {"item": items or [ANY]}, f"an element of {spec.each}")
        for i, spread in enumerate(spec.spread):
            self.spread(spread, (*loc, "spread", i), inner)
        for name, sub in (spec.attributes or {}).items():
            self.field(sub, (*loc, "attributes", name), inner)

    def spread(self, spread: Spread, loc: Loc, scope: _Scope) -> None:
        source = self.jmespath(spread.from_, (*loc, "from"), scope)
        if spread.key is not None:
            self.jmespath(spread.key, (*loc, "key"), scope)
        if spread.value is not None:
            entries = source if spread.key is not None else self.shape.values(source)
            self.jmespath(
                spread.value,
                (*loc, "value"),
                _Scope(entries or [ANY], {}, f"an entry of {spread.from_}"),
            )

    def _at(self, loc: Loc, key: str) -> Loc:
        node: Any = self.raw
        for part in loc:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return loc
        return (*loc, key) if isinstance(node, dict) and key in node else loc

    # -- expressions -------------------------------------------------------------------------
    def jmespath(self, text: str, loc: Loc, scope: _Scope) -> list[Node]:
        """Follow an expression through the shape; warn where it leaves it."""
        try:
            ast = parse(text)
        except ExpressionError:
            return [ANY]  # an error the compiler reports
        self._label = scope.label
        return self._eval(ast, scope.current, text, loc, [])

    def _eval(
        self, ast: dict[str, Any], current: list[Node], text: str, loc: Loc, path: list[str] | None
    ) -> list[Node]:
        """What ``ast`` evaluates to, from ``current``. ``path`` collects the field names
        of a plain chain (for the message), or is None inside anything else."""
        kind = ast["type"]
        children = [c for c in ast.get("children", []) if isinstance(c, dict)]
        shape = self.shape
        if kind == "field":
            name = str(ast["value"])
            if not current or shape.unknown(current):
                return [ANY]
            found = shape.child(current, name)
            if not found:
                self.miss(text, loc, name, current, path)
                return [ANY]
            if path is not None:
                path.append(name)
            return found
        if kind == "subexpression":
            result = current
            for child in children:
                result = self._eval(child, result, text, loc, path)
            return result
        if kind in (
            "index_expression",
            "projection",
            "filter_projection",
            "value_projection",
            "flatten",
        ):
            left = self._eval(children[0], current, text, loc, path) if children else current
            elements = shape.values(left) if kind == "value_projection" else shape.items(left)
            if kind == "flatten":
                elements += shape.items(elements)
            if kind == "filter_projection" and len(children) > 2:
                self._eval(children[2], elements, text, loc, None)
            if kind == "index_expression":
                return elements or [ANY]
            if len(children) > 1:
                self._eval(children[1], elements or [ANY], text, loc, None)
            return [ANY]
        if kind == "pipe" and len(children) == 2:
            return self._eval(
                children[1], self._eval(children[0], current, text, loc, None), text, loc, None
            )
        if kind in ("current", "identity"):
            return current
        if kind in ("index", "slice", "literal", "raw_string"):
            return current if kind in ("index", "slice") else [ANY]
        if kind == "or_expression":
            out: list[Node] = []
            for child in children:
                out += self._eval(child, current, text, loc, [] if path is not None else None)
            return out
        for child in children:  # comparisons, and/not, functions, multi-selects
            self._eval(child, current, text, loc, [] if kind == "key_val_pair" else None)
        return [ANY]

    def template(self, text: str, loc: Loc, scope: _Scope) -> None:
        from jinja2 import Environment
        from jinja2.exceptions import TemplateError

        try:
            tree = Environment().parse(text)
        except TemplateError:
            return  # an error the compiler reports

        def visit(node: jinja.Node) -> None:
            if isinstance(node, jinja.Getattr | jinja.Getitem):
                base, names, computed = attribute_chain(node)
                for key in computed:
                    visit(key)
                if isinstance(base, jinja.Name) and base.name in scope.names and names:
                    current = scope.names[base.name]
                    path = [base.name]
                    for name in names:
                        if shape.unknown(current):
                            return
                        found = shape.child(current, name)
                        if not found:
                            self.miss(text, loc, name, current, path)
                            return
                        path.append(name)
                        current = found
                elif not isinstance(base, jinja.Name):
                    visit(base)
                return
            for child in node.iter_child_nodes():
                visit(child)

        shape = self.shape
        self._label = scope.label if "item" in scope.names else ""
        visit(tree)

    # -- reporting ---------------------------------------------------------------------------
    def miss(
        self, text: str, loc: Loc, name: str, parents: list[Node], path: list[str] | None
    ) -> None:
        shape = self.shape
        known = shape.names(parents)
        where = ".".join(path) if path else ""
        if where and self._label:
            subject = f"{where} of {self._label}"
        else:
            subject = where or self._label or "the value"
        if known:
            hint = did_you_mean(name, known)
            if not hint and len(known) <= 12:
                hint = f" (it has: {', '.join(known)})"
            reason = f"{subject} has no field {name!r}{hint}"
        else:
            reason = f"{subject} is {shape.describe(parents)}, not an object"
        full = f"{where}.{name}" if where else name
        message = f"no {shape.title} record has {full!r}: {reason}"
        position = self.position(loc, name)
        if (position, message) in self._seen:
            return
        self._seen.add((position, message))
        self.problems.append(Problem(position, message, severity="warning"))

    def position(self, loc: Loc, name: str) -> Position:
        """The position of ``name`` in the rule's value, when it is on the value's line."""
        pos = position_of(self.raw, loc) or self.raw.pos
        lines = self._lines.get(pos.path)
        if lines is None:
            lines = []
            with contextlib.suppress(OSError, UnicodeDecodeError):
                lines = Path(pos.path).read_text(encoding="utf-8").splitlines()
            self._lines[pos.path] = lines
        if 0 < pos.line <= len(lines):
            line = lines[pos.line - 1]
            for needle, skip in ((f".{name}", 1), (name, 0)):
                at = line.find(needle, pos.col - 1)
                if at >= 0:
                    return Position(pos.path, pos.line, at + skip + 1)
        return pos
