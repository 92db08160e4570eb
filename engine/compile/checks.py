"""The checks: everything a bundle can get wrong beyond its structure, found in one pass over
its rules, each problem reported once at its ``file:line:col``.

JMESPath that does not parse or starts nowhere, templates outside the sandboxed grammar or
beyond their bounds, unknown transforms, casts and tables, duplicate rule names, keys a rule
would never use, fields and kinds of item the destination does not take, bad routing
declarations. A bundle is checked whole before any code is emitted (as Segment's mapping-kit
validates a mapping before it runs); the code emission (``sections``) then meets only sound
rules. The checks also record what the rules read of a record (``reads``, for projection) and
whether the identity depends on the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moerules.engine.compile.expressions import ExpressionError, root_fields
from moerules.engine.compile.language import SCOPE, RuleLanguage
from moerules.engine.compile.projection import ReadSet, jmespath_reads
from moerules.engine.compile.template_checks import TemplateError
from moerules.engine.compile.transforms import CASTS, TransformSpecError, check_transform
from moerules.engine.connector import USER, Sink, kind_problem
from moerules.engine.errors import Position, Problem
from moerules.engine.rules.loading import LDict, position_of
from moerules.engine.rules.model import Bundle, EventRule, FieldSpec, Spread
from moerules.engine.rules.validation import did_you_mean

__all__ = ["RuleChecks", "given_keys"]

Loc = tuple[str | int, ...]
Destination = Sink | type[Sink]


def given_keys(spec: Any) -> set[str]:
    """The keys a rule file gave for ``spec`` (by their YAML names: ``from``, ``as``)."""
    fields = type(spec).model_fields
    return {fields[name].alias or name for name in spec.model_fields_set}


class RuleChecks:
    """One pass over a bundle's rules: ``problems``, ``reads`` and ``identity_per_batch``."""

    def __init__(
        self, raw: LDict, bundle: Bundle, language: RuleLanguage, destination: Destination | None
    ) -> None:
        self.raw = raw
        self.bundle = bundle
        self.language = language
        self.destination = destination
        self.problems: list[Problem] = []
        self.reads = ReadSet()
        self.identity_per_batch = True

    def run(self) -> RuleChecks:
        self.identity()
        self.user()
        self.events()
        self.routing()
        for name, table in self.bundle.tables.items():
            if not table.values:
                self.error(("tables", name), f"table {name!r} is empty")
        return self

    # -- problems and the languages ----------------------------------------------------
    def error(self, loc: Loc, message: str, *, key: bool = False) -> None:
        pos = position_of(self.raw, loc, key=key) or Position(self.raw.pos.path)
        self.problems.append(Problem(pos, message))

    def expression(
        self, text: str, loc: Loc, roots: frozenset[str] | None, *, read: bool = True
    ) -> dict[str, Any] | None:
        """The tree of ``text``, or None after reporting why it is not sound. Rooted at the
        scope (``roots``), what it reads is recorded (``read``): the decoder must build it."""
        try:
            ast = self.language.expression(text)
        except ExpressionError as exc:
            self.error(loc, str(exc))
            return None
        if roots is None:
            return ast
        if read:
            for path in jmespath_reads(ast):
                self.reads.add(path)
        for name in sorted(root_fields(ast) - roots):
            self.error(
                loc,
                f"path {text!r} starts at {name!r}{did_you_mean(name, roots)}; paths "
                f"here start with {' or '.join(repr(r + '.') for r in sorted(roots))}",
            )
            return None
        return ast

    def template(
        self, source: str, loc: Loc, roots: frozenset[str] | None, *, read: bool = True
    ) -> None:
        try:
            self.language.template(source, roots)
        except TemplateError as exc:
            self.error(loc, str(exc))
            return
        if roots is not None and read:
            for path in self.language.template_reads(source, roots):
                self.reads.add(path)

    # -- fields --------------------------------------------------------------------------
    def field(
        self,
        spec: FieldSpec,
        loc: Loc,
        what: str,
        roots: frozenset[str] | None,
        *,
        read: bool = True,
    ) -> None:
        given = given_keys(spec)
        sources = [k for k in ("from", "value", "template", "each") if k in given]
        if len(sources) > 1:
            self.error(loc, f"{what}: give only one of `from`, `value`, `template` or `each`")
            return
        if spec.each is not None:
            self.each(spec, loc, what, roots, read=read)
            return
        if spec.from_ is not None:
            at = (*loc, "from") if "from" in _keys(self.raw, loc) else loc
            self.expression(spec.from_, at, roots, read=read)
        elif spec.template is not None:
            self.template(spec.template, (*loc, "template"), roots, read=read)
        elif spec.attributes is not None:
            self.object(spec, loc, what, roots, read=read)
        elif "value" not in given:
            self.error(
                loc, f"{what}: say where the value comes from: `from`, `value` or `template`"
            )
            return
        self.transforms(spec, loc)

    def each(
        self,
        spec: FieldSpec,
        loc: Loc,
        what: str,
        roots: frozenset[str] | None,
        *,
        read: bool = True,
    ) -> None:
        assert spec.each is not None
        self.expression(spec.each, (*loc, "each"), roots, read=read)
        if spec.attributes is None:
            self.error(loc, f"{what}: `each` needs `attributes` to map every item")
            return
        unused = [k for k in ("transform", "as", "default") if k in given_keys(spec)]
        if unused:
            self.error(
                (*loc, unused[0]),
                f"{what}: `each` makes a list of objects; `{unused[0]}` would never be used",
                key=True,
            )
        self.object(spec, loc, f"{what}[]", None, read=read)

    def object(
        self,
        spec: FieldSpec,
        loc: Loc,
        what: str,
        roots: frozenset[str] | None,
        *,
        read: bool = True,
    ) -> None:
        self.spreads(spec.spread, (*loc, "spread"), roots, read=read)
        self.attributes(spec.attributes or {}, (*loc, "attributes"), what, roots, read=read)

    def attributes(
        self,
        specs: Mapping[str, FieldSpec],
        loc: Loc,
        what: str,
        roots: frozenset[str] | None,
        *,
        read: bool = True,
    ) -> None:
        for name, spec in specs.items():
            self.field(spec, (*loc, name), f"{what}.{name}" if what else name, roots, read=read)

    def transforms(self, spec: FieldSpec | Spread, loc: Loc) -> None:
        if isinstance(spec, FieldSpec) and spec.as_ is not None and spec.as_ not in CASTS:
            self.error(
                (*loc, "as"),
                f"unknown cast {spec.as_!r}{did_you_mean(spec.as_, CASTS)}"
                f"; use one of {', '.join(sorted(set(CASTS.values())))}",
            )
        for i, step in enumerate(spec.transform):
            try:
                check_transform(step, self.language.tables)
            except TransformSpecError as exc:
                self.error((*loc, "transform", i) if _keys(self.raw, loc) else loc, str(exc))

    def spreads(
        self, spreads: list[Spread], loc: Loc, roots: frozenset[str] | None, *, read: bool = True
    ) -> None:
        for i, spread in enumerate(spreads):
            self.spread(spread, (*loc, i), roots, read=read)

    def spread(
        self, spread: Spread, loc: Loc, roots: frozenset[str] | None, *, read: bool = True
    ) -> None:
        tables = self.language.tables
        if isinstance(spread.rename, str) and spread.rename not in tables:
            self.error(
                (*loc, "rename"),
                f"unknown table {spread.rename!r}{did_you_mean(spread.rename, tables)}",
            )
        if spread.renamed_only and spread.rename is None:
            self.error(loc, "`renamed_only` needs a `rename` table")
        self.expression(spread.from_, (*loc, "from"), roots, read=read)
        if spread.value is not None:
            self.expression(spread.value, (*loc, "value"), None)
        if spread.key is not None:
            self.expression(spread.key, (*loc, "key"), roots, read=read)
        self.transforms(spread, loc)

    # -- sections ------------------------------------------------------------------------
    def identity(self) -> None:
        ident = self.bundle.identity
        if ident is None:
            return
        names = list(ident.candidates)
        order = ident.precedence if ident.precedence is not None else names
        for i, name in enumerate(order):
            if name not in ident.candidates:
                self.error(
                    ("identity", "precedence", i),
                    f"unknown identity candidate {name!r}{did_you_mean(name, names)}; "
                    f"candidates: {', '.join(names)}",
                )
        for name, spec in ident.candidates.items():
            used = name in order  # an unused candidate is checked, but never read
            self.field(spec, ("identity", "candidates", name), f"identity {name}", SCOPE, read=used)
            if used and "event" in self._roots(spec):
                self.identity_per_batch = False

    def _roots(self, spec: FieldSpec) -> set[str]:
        """The roots a candidate's value is read from."""
        try:
            if spec.from_ is not None:
                return root_fields(self.language.expression(spec.from_))
            if spec.template is not None:
                return {
                    path[0]
                    for path in self.language.template_reads(spec.template, SCOPE)
                    if path and isinstance(path[0], str)
                }
        except (ExpressionError, TemplateError):  # reported by field
            pass
        return set()

    def user(self) -> None:
        user = self.bundle.user
        if user is None:
            return
        if user.when is not None:
            self.expression(user.when, ("user", "when"), SCOPE)
        self.spreads(user.spread, ("user", "spread"), SCOPE)
        self.attributes(user.attributes, ("user", "attributes"), "", SCOPE)
        for i, drop in enumerate(user.drop):
            loc: Loc = ("user", "drop", i)
            if not drop.reason.strip():
                self.error((*loc, "reason"), "drop reason is blank")
            self.expression(drop.each, (*loc, "each"), SCOPE)
        if self.destination is not None and (problem := kind_problem(self.destination, USER)):
            self.error(("user",), problem, key=True)

    def events(self) -> None:
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.bundle.events):
            loc: Loc = ("events", i)
            if rule.name in seen:
                self.error(
                    (*loc, "name"),
                    f"duplicate rule name {rule.name!r} (rule {seen[rule.name] + 1} has it too)",
                )
            seen.setdefault(rule.name, i)
            if rule.when is not None:
                self.expression(rule.when, (*loc, "when"), SCOPE)
            self.rule(rule, loc)

    def rule(self, rule: EventRule, loc: Loc) -> None:
        if rule.drop is not None:
            extra = [
                k for k in ("event_name", "attributes", "spread", "fields") if getattr(rule, k)
            ]
            if extra:
                self.error(
                    (*loc, extra[0]),
                    f"rule {rule.name!r} drops records; `{extra[0]}` would never be used",
                )
            return
        if rule.emit == "event":
            if rule.event_name is None:
                self.error(loc, f"rule {rule.name!r} needs `event_name` (or `drop:` a reason)")
            else:
                self.field(rule.event_name, (*loc, "event_name"), "event name", SCOPE)
        elif rule.event_name is not None:
            self.error(
                (*loc, "event_name"),
                f"rule {rule.name!r} emits a user update; `event_name` would never be used",
            )
        self.spreads(rule.spread, (*loc, "spread"), SCOPE)
        self.attributes(rule.attributes, (*loc, "attributes"), "", SCOPE)
        destination = self.destination
        if rule.fields and destination is not None:
            for key in rule.fields:
                if key not in destination.event_fields:
                    self.error(
                        (*loc, "fields", key),
                        f"destination {destination.name!r} has no "
                        f"event field {key!r}{did_you_mean(key, destination.event_fields)}"
                        f"; it takes: {', '.join(destination.event_fields)}",
                        key=True,
                    )
        self.attributes(rule.fields, (*loc, "fields"), "", SCOPE)
        if destination is not None and (problem := kind_problem(destination, rule.emit)):
            emit = "emit" in given_keys(rule)
            self.error((*loc, "emit") if emit else loc, problem, key=emit)

    def routing(self) -> None:
        routing = self.bundle.routing
        if routing is None:
            return
        if self.destination is not None and not self.destination.supports_routing:
            self.error(
                ("routing",),
                f"destination {self.destination.name!r} does not support portfolio routing",
                key=True,
            )
        # read only when events are routed: some project is declared, some rule emits events
        routed = bool(routing.projects) and any(
            rule.drop is None and rule.emit == "event" for rule in self.bundle.events
        )
        self.expression(routing.from_, ("routing", "from"), SCOPE, read=routed)
        names: dict[str, int] = {}
        codes: dict[str, int] = {}
        for i, project in enumerate(routing.projects):
            loc: Loc = ("routing", "projects", i)
            if not project.name.strip():
                self.error((*loc, "name"), "project name is blank")
            if project.name != project.name.strip():
                self.error(
                    (*loc, "name"),
                    f"project name {project.name!r} has surrounding "
                    "spaces; matching is exact, so no event would ever match it",
                )
            if project.name in names:
                self.error(
                    (*loc, "name"),
                    f"project {project.name!r} is declared twice "
                    f"(also project {names[project.name] + 1})",
                )
            if not project.code.strip():
                self.error((*loc, "code"), "project code is blank")
            if project.code in codes:
                self.error(
                    (*loc, "code"),
                    f"project code {project.code!r} is used twice "
                    f"(also project {codes[project.code] + 1})",
                )
            names.setdefault(project.name, i)
            codes.setdefault(project.code, i)


def _keys(raw: LDict, loc: Loc) -> set[str]:
    """The keys written at ``loc`` (none for a field written short, as a bare path)."""
    node: Any = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(node) if isinstance(node, dict) else set()
