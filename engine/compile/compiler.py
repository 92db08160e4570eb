"""Compiles a validated bundle into Python functions, once, so per record only generated code runs.

The compiler checks everything a rule file can get wrong beyond its structure (JMESPath that
does not parse, paths that start nowhere, templates outside the sandboxed grammar, unknown
transforms, tables and connectors, duplicate rule names, bad routing) and reports every
problem with its position. When the bundle is sound it generates one module with three
functions, ``identity``, ``user`` and ``event``, whose bodies are straight-line subscripts,
comparisons and dict building, much as a person would write them by hand.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moerules.engine.cohorts import cohort_problems
from moerules.engine.compile.bounds import MAX_TEMPLATE_OUTPUT
from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.expressions import ExpressionError, ValueCompiler, parse, root_fields
from moerules.engine.compile.projection import ReadSet, jmespath_reads, template_reads
from moerules.engine.compile.templates import (
    TemplateCheck,
    TemplateError,
    environment,
    renderer,
    simple_variable,
    template_text,
)
from moerules.engine.compile.transforms import (
    CASTS,
    TransformSpecError,
    call_source,
    cast_source,
    check_transform,
    emit_transform,
    scalar_text,
    wrong_shape,
)
from moerules.engine.connector import (
    USER,
    Sink,
    Source,
    connector_names,
    kind_problem,
    load_connector,
)
from moerules.engine.errors import Position, Problem, RecordError, RuleError
from moerules.engine.rules.loading import LDict, position_of
from moerules.engine.rules.model import Bundle, EventRule, FieldSpec, Spread
from moerules.engine.rules.overlay import resolve_env
from moerules.engine.rules.settings import bind_settings
from moerules.engine.rules.validation import did_you_mean, validate_document

__all__ = [
    "ROUTE_BLANK",
    "ROUTE_MISSING",
    "ROUTE_UNKNOWN",
    "CompiledBundle",
    "compile_bundle",
]

Loc = tuple[str | int, ...]
SCOPE = {"batch": "batch", "event": "event"}
ROUTE_MISSING, ROUTE_BLANK, ROUTE_UNKNOWN, ROUTE_NONE = -1, -2, -3, -4
_CAST_FAST = {"string": "str", "int": "int", "float": "float", "bool": "bool"}


@dataclass
class CompiledBundle:
    """A bundle ready to run: its model, connectors and generated functions."""

    model: Bundle
    source: Source
    sink: Sink
    identity: Callable[..., tuple[str | None, str | None]] | None
    identity_per_batch: bool
    user: Callable[..., dict[str, Any] | None] | None
    event: Callable[..., tuple[Any, ...]]
    rule_names: list[str]
    drop_reasons: list[str | None]
    emits: list[str]
    projects: list[tuple[str, str]]  # (name, code)
    source_code: str
    reads: ReadSet = field(default_factory=ReadSet)  # what the rules read of a record
    projected: bool = True  # decode only what the rules read, where the source allows it
    missing_env: list[str] = field(default_factory=list)
    secrets: frozenset[str] = frozenset()
    traced: bool = False
    # the user section's counted drops: entries per drop, and each drop's reason
    user_drops: Callable[..., tuple[int, ...]] | None = None
    user_drop_reasons: list[str] = field(default_factory=list)


class _Compiler:
    def __init__(self, raw: LDict, bundle: Bundle, trace: bool,
                 env: Mapping[str, str] | None = None) -> None:
        self.env_vars = os.environ if env is None else env
        self.raw = raw
        self.bundle = bundle
        self.trace = trace
        self.problems: list[Problem] = []
        self.cg = Codegen()
        self.cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
        self.cg.namespace["_RecordError"] = RecordError
        self.values = ValueCompiler(self.cg)
        self.reads = ReadSet()
        self.tables = {
            name: (
                {(k.casefold() if t.ignore_case else k): v for k, v in t.values.items()},
                t.default, t.ignore_case,
            )
            for name, t in bundle.tables.items()
        }
        self.env = environment({n: t[0] for n, t in self.tables.items()})
        self.templates = TemplateCheck(self.env, self.tables)

    # -- problems ----------------------------------------------------------------------
    def error(self, loc: Loc, message: str, *, key: bool = False) -> None:
        pos = position_of(self.raw, loc, key=key) or Position(self.raw.pos.path)
        self.problems.append(Problem(pos, message))

    def expr(self, text: str, loc: Loc, roots: frozenset[str] | None) -> dict[str, Any] | None:
        try:
            ast = parse(text)
        except ExpressionError as exc:
            self.error(loc, str(exc))
            return None
        if roots is not None:  # rooted at the scope: what it reads, the decoder must build
            for path in jmespath_reads(ast):
                self.reads.add(path)
            for name in sorted(root_fields(ast) - roots):
                hint = did_you_mean(name, roots)
                self.error(loc, f"path {text!r} starts at {name!r}{hint}; paths here start "
                                f"with {' or '.join(repr(r + '.') for r in sorted(roots))}")
                return None
        return ast

    def rule_at(self, loc: Loc) -> str | None:
        """The name dead letters give the rule at ``loc`` (``user`` for the user section)."""
        if len(loc) > 1 and loc[0] == "events" and isinstance(loc[1], int):
            return self.bundle.events[loc[1]].name
        return "user" if loc[:1] == ("user",) else None

    # -- values -------------------------------------------------------------------------
    def tr(self, line: str) -> None:
        if self.trace:  # a traced bundle also runs untraced, in explain's dry run
            self.cg.emit(f"if _tr is not None: _tr.append({line})")

    def field(self, spec: FieldSpec, loc: Loc, cache: PathCache, what: str,
              roots: frozenset[str] | None, *, alias: bool = False) -> str | None:
        """Emit code computing one field into a fresh local; return the local's name.

        With ``alias`` (the caller only reads the result) a plain path with nothing to apply
        returns the path's own local instead of a copy.
        """
        cg = self.cg
        out = cg.name("f")
        sources = [k for k in ("from", "value", "template", "each") if k in _set(spec)]
        if len(sources) > 1:
            self.error(loc, f"{what}: give only one of `from`, `value`, `template` or `each`")
            return None
        if spec.each is not None:
            return self.each(spec, loc, cache, what, roots, out)
        if spec.from_ is not None:
            ast = self.expr(spec.from_, (*loc, "from") if "from" in _keys(self.raw, loc) else loc,
                            roots)
            if ast is None:
                return None
            src = self.values.value(spec.from_, ast, cache)
            if alias and not spec.transform and spec.as_ is None and "default" not in _set(spec):
                out = src
            else:
                cg.emit(f"{out} = {src}")
            origin = spec.from_
        elif spec.template is not None:
            if not self.template(spec.template, (*loc, "template"), cache, out, roots, what):
                return None
            origin = spec.template
        elif "value" in _set(spec):
            cg.emit(f"{out} = {cg.literal(spec.value)}")
            origin = "constant"
        elif spec.attributes is not None:
            obj = self.object(spec, loc, cache, what, roots)
            cg.emit(f"{out} = {obj}")
            origin = "object"
        else:
            self.error(loc, f"{what}: say where the value comes from: `from`, `value` or "
                            "`template`")
            return None
        if spec.on_error == "omit":
            # An optional field that will not convert is left out; the record still goes.
            with cg.block("try:"):
                self.transforms(spec, loc, out, what)
            with cg.block("except _RecordError:"):
                cg.emit(f"{out} = None")
        else:
            self.transforms(spec, loc, out, what)
        self.tr(f"('field', {cg.literal(what)}, {cg.literal(origin)}, "
                f"{cg.literal(_steps(spec))}, {out})")
        return out

    def transforms(self, spec: FieldSpec | Spread, loc: Loc, var: str, what: str) -> None:
        steps: list[tuple[str, Any]] = []
        if isinstance(spec, FieldSpec) and spec.as_ is not None:
            cast = CASTS.get(spec.as_)
            if cast is None:
                self.error((*loc, "as"), f"unknown cast {spec.as_!r}{did_you_mean(spec.as_, CASTS)}"
                                         f"; use one of {', '.join(sorted(set(CASTS.values())))}")
                return
        for i, step in enumerate(spec.transform):
            try:
                steps.append(check_transform(step, self.tables))
            except TransformSpecError as exc:
                name = step if isinstance(step, str) else next(iter(step), "") if isinstance(
                    step, dict) else ""
                from moerules.engine.compile.transforms import TRANSFORMS
                hint = did_you_mean(str(name), TRANSFORMS) if "unknown transform" in str(
                    exc) else ""
                if "unknown table" in str(exc):
                    hint = did_you_mean(str(step[name]) if isinstance(step, dict) else "",
                                        self.tables)
                self.error((*loc, "transform", i) if _keys(self.raw, loc) else loc,
                           f"{exc}{hint}")
        for name, argument in steps:
            emit_transform(self.cg, var, name, argument, what, self.tables)
        if isinstance(spec, FieldSpec):
            if spec.as_ is not None:
                emit_transform(self.cg, var, CASTS[spec.as_], None, what, self.tables)
            if "default" in _set(spec):
                emit_transform(self.cg, var, "default", spec.default, what, self.tables)

    def template(self, source: str, loc: Loc, cache: PathCache, out: str,
                 roots: frozenset[str] | None, what: str) -> bool:
        names = frozenset(roots) if roots is not None else frozenset({"item"})
        try:
            compiled = self.templates.compile(source, names | {"tables"})
        except TemplateError as exc:
            self.error(loc, str(exc))
            return False
        if "{" not in source:
            self.cg.emit(f"{out} = {self.cg.literal(source)}")
            return True
        if roots is not None:
            for read in template_reads(self.env.parse(source), roots):
                self.reads.add(read)
        path = simple_variable(self.env, source)
        text = self.cg.const(template_text, "t_text")
        if path is not None and (roots is None or path[0] in roots):
            local = self.values.path(path if roots is not None else path[1:] or path, cache)
            self.cg.emit(f"{out} = '' if {local} is None else {local} if type({local}) is str and "
                         f"len({local}) <= {MAX_TEMPLATE_OUTPUT} else "
                         f"{text}({local}, {self.cg.literal(what)})")
            return True
        args = ", ".join(f"{k}={v}" for k, v in cache.roots.items() if k != "@")
        if roots is None:
            args = f"item={cache.roots['@']}"
        render = self.cg.name("render")
        self.cg.namespace[render] = renderer(compiled, what, self.rule_at(loc))
        self.cg.emit(f"{out} = {render}({args})")
        return True

    def each(self, spec: FieldSpec, loc: Loc, cache: PathCache, what: str,
             roots: frozenset[str] | None, out: str, store: str | None = None) -> str | None:
        """A list of objects, one per item; with ``store`` (``obj[key]``), stored there when
        the items are a list (rather than left null, then tested)."""
        cg = self.cg
        assert spec.each is not None
        ast = self.expr(spec.each, (*loc, "each"), roots)
        if spec.attributes is None:
            self.error(loc, f"{what}: `each` needs `attributes` to map every item")
            return None
        if ast is None:
            return None
        items = self.values.value(spec.each, ast, cache)
        item = cg.name("item")
        if store is None:
            cg.emit(f"{out} = None")
        shape = cg.const(wrong_shape, "wrong_shape")
        with cg.block(f"if type({items}) is list:"):
            cg.emit(f"{out} = []")
            with cg.block(f"for {item} in {items}:"):
                inner = PathCache({"@": item})
                known = self.values.known_dicts
                if self.values.fast:  # items are objects; any other item is AttributeError
                    self.values.known_dicts = known | {item}
                # An item that is not an object is the wrong shape: never an empty object
                check = (f"if type({item}) is not dict: raise {shape}("
                         f"{cg.literal(what + '[]')}, 'an object', {item})")
                mark = len(cg.lines)
                try:
                    obj = self.object(spec, loc, inner, f"{what}[]", None)
                finally:
                    self.values.known_dicts = known
                if not (self.values.fast and cg.lines[mark].lstrip().split(" = ", 1)[-1]
                        .startswith(f"{item}.get(")):
                    # (the fast code's first read, ``item.get``, already fails for any
                    # other item and sends the record to the safe code, which checks)
                    cg.insert(mark, check)
                cg.emit(f"{out}.append({obj})")
            if store is not None:
                cg.emit(f"{store} = {out}")
        with cg.block(f"elif {items} is not None:"):
            cg.emit(f"raise {shape}({cg.literal(what)}, 'a list', {items})")
        self.tr(f"('field', {cg.literal(what)}, {cg.literal('each ' + spec.each)}, [], {out})")
        return out

    def object(self, spec: FieldSpec, loc: Loc, cache: PathCache, what: str,
               roots: frozenset[str] | None) -> str:
        """An object built from ``spec.spread`` then ``spec.attributes``."""
        if not spec.spread:
            return self.attributes(spec.attributes or {}, (*loc, "attributes"), cache, what,
                                   roots)
        obj = self.cg.name("obj")
        self.spreads(spec.spread, (*loc, "spread"), cache, obj, roots)
        return self.attributes(spec.attributes or {}, (*loc, "attributes"), cache, what, roots,
                               obj)

    def attributes(self, specs: Mapping[str, FieldSpec], loc: Loc, cache: PathCache, what: str,
                   roots: frozenset[str] | None, target: str | None = None) -> str:
        """Emit code building the object ``specs`` describe (into ``target`` when given).

        A fresh object starts as one dict display of its leading values that are never null
        (sized once, rather than grown one key at a time); from the first value that may be
        null on, each is set only when it is not null, which costs less than setting it and
        deleting it again. Values are computed in the same order either way.
        """
        cg = self.cg
        display = target is None and not self.trace and len(specs) > 1
        obj = target or cg.name("obj")
        if target is None and not display:
            cg.emit(f"{obj} = {{}}")
        leading: list[tuple[str, str]] = []  # (key source, value source), never null

        def put(key: str, value: str, guard: str) -> None:
            """Set ``key`` to ``value`` (only when ``guard``, a local, is not null): into the
            leading display while nothing before it may be null, else into the object."""
            nonlocal display
            if display and not guard:
                leading.append((key, value))
                return
            start()
            if guard:
                cg.emit(f"if {guard} is not None: {obj}[{key}] = {value}")
            else:
                cg.emit(f"{obj}[{key}] = {value}")

        def start() -> None:  # the object exists from here on; later values are set into it
            nonlocal display
            if display:
                cg.emit(f"{obj} = {{{', '.join(f'{k}: {v}' for k, v in leading)}}}")
                display = False

        for name, spec in specs.items():
            label = f"{what}.{name}" if what else name
            key = cg.literal(name)
            inline = self._inline_field(spec, (*loc, name), cache, label, roots)
            if inline is not None:
                guard, value = inline
                if value:  # else an error, reported
                    put(key, value, guard)
                continue
            if (spec.each is not None and not self.trace
                    and not _set(spec) & {"from", "value", "template"}):
                start()
                self.each(spec, (*loc, name), cache, label, roots, cg.name("f"), f"{obj}[{key}]")
                continue
            made = self.field(spec, (*loc, name), cache, label, roots, alias=True)
            if made is None:
                continue
            # the default is applied last, so the value is never null
            nullable = not (spec.each is None and spec.default is not None
                            and "default" in _set(spec) and spec.on_error != "omit")
            put(key, made, made if nullable else "")
        start()
        return obj

    def _inline_field(self, spec: FieldSpec, loc: Loc, cache: PathCache, what: str,
                      roots: frozenset[str] | None) -> tuple[str, str] | None:
        """``{from: p, as: T}``, ``{from: p, default: d}`` or ``{from: p, transform: epoch_*}``
        as one expression, no copy: (the local that must not be null for the value to be set,
        or "" when the value is set whatever; the value's source), or None for any other field
        (and in a traced bundle), which ``field`` then emits. ("", "") after an error.

        The shapes written the way a person would: ``v if type(v) is float else <convert>``
        when ``v`` is not null, ``v if v else <d if v is null or "">``, ``v // 1000`` for an int.
        """
        given = _set(spec)
        if (self.trace or spec.from_ is None or spec.on_error == "omit"
                or given & {"value", "template", "each"} or spec.attributes is not None):
            return None
        step = spec.transform[0] if len(spec.transform) == 1 else None
        epoch = step if step in ("epoch_ms_to_s", "epoch_s_to_ms") else None
        case = step if step in ("lower", "upper", "title") else None  # never makes "" or null
        if spec.transform and epoch is None and case is None:
            return None
        cast = CASTS.get(spec.as_) if spec.as_ is not None else None
        plain = "default" not in given and (spec.as_ is None) != (epoch is None)
        cast_only = cast is not None and plain and case is None
        epoch_only = epoch is not None and plain
        has_default = "default" in given and spec.default is not None
        default_only = spec.as_ is None and epoch is None and has_default
        if not (cast_only or epoch_only or default_only):
            return None
        ast = self.expr(spec.from_, (*loc, "from") if "from" in _keys(self.raw, loc) else loc,
                        roots)
        if ast is None:
            return "", ""
        v = self.values.value(spec.from_, ast, cache)
        if cast is not None:
            keep, convert = cast_source(self.cg, v, cast, what, fast=self.values.fast)
            return v, f"{v} if type({v}) is {keep} else {convert}"
        if epoch is not None:
            inline, call = call_source(self.cg, v, epoch, what)
            return v, f"{inline} if type({v}) is int else {call}"
        default = self.cg.literal(spec.default)
        value = f"{v}.{case}() if type({v}) is str and {v}" if case else f"{v} if {v}"
        return "", f"{value} else ({default} if {v} is None or {v} == '' else {v})"

    def spreads(self, spreads: list[Spread], loc: Loc, cache: PathCache, obj: str,
                roots: frozenset[str] | None) -> None:
        """Emit ``obj = {}`` and the spreads into it; a first plain spread copies instead."""
        created = False
        for i, spread in enumerate(spreads):
            if not created:
                created = True
                if self._copy_spread(spread, (*loc, i), cache, obj, roots):
                    continue
                self.cg.emit(f"{obj} = {{}}")
            self.spread(spread, (*loc, i), cache, obj, roots)
        if not created:
            self.cg.emit(f"{obj} = {{}}")

    def _copy_spread(self, spread: Spread, loc: Loc, cache: PathCache, obj: str,
                     roots: frozenset[str] | None) -> bool:
        """A spread that copies entries as they are, into an object not made yet: copy the
        source whole (in C), then delete the null and excluded entries, rather than copy the
        entries one by one. Fast mode only (the source's view may be a list: AttributeError on
        ``.items``). True when it emitted ``obj``."""
        if (not self.values.fast or self.trace or spread.key is not None
                or spread.rename is not None or spread.renamed_only or spread.prefix
                or spread.suffix or spread.transform or spread.value is not None):
            return False
        cg = self.cg
        source = self.expr(spread.from_, (*loc, "from"), roots)
        if source is None:
            cg.emit(f"{obj} = {{}}")
            return True
        view = self.values.dict_view(self.values.value(spread.from_, source, cache), cache)
        k, v = cg.name("k"), cg.name("v")
        drop = [f"{v} is None"]
        excluded = self._excluded(spread, k)
        if excluded:
            drop.append(excluded)
        if spread.only is not None:
            drop.append(f"{k} not in {cg.const(frozenset(spread.only), 'set')}")
        cg.emit(f"{obj} = {view}.copy()")
        with cg.block(f"for {k}, {v} in {view}.items():"):
            cg.emit(f"if {' or '.join(drop)}: del {obj}[{k}]")
        return True

    def spread(self, spread: Spread, loc: Loc, cache: PathCache, obj: str,
               roots: frozenset[str] | None) -> None:
        cg = self.cg
        rename: dict[str, str] | None = None
        if isinstance(spread.rename, str):
            if spread.rename not in self.tables:
                self.error((*loc, "rename"), f"unknown table {spread.rename!r}"
                                             f"{did_you_mean(spread.rename, self.tables)}")
                return
            rename = {str(k): str(v) for k, v in self.tables[spread.rename][0].items()}
        elif spread.rename is not None:
            rename = dict(spread.rename)
        if rename is not None and spread.ignore_case:
            rename = {k.casefold(): v for k, v in rename.items()}
        if spread.renamed_only and rename is None:
            self.error(loc, "`renamed_only` needs a `rename` table")
            return
        source = self.expr(spread.from_, (*loc, "from"), roots)
        if source is None:
            return
        value_ast = self.expr(spread.value, (*loc, "value"), None) if spread.value else None
        src = self.values.value(spread.from_, source, cache)
        table = cg.const(rename, "rename") if rename is not None else None
        fold = ".casefold()" if spread.ignore_case else ""
        if spread.key is not None:  # one pair whose name is data
            key_ast = self.expr(spread.key, (*loc, "key"), roots)
            if key_ast is None:
                return
            key = self.values.value(spread.key, key_ast, cache)
            guard = f"type({key}) is str and {key} and {src} is not None"
            excluded = self._excluded(spread, key)
            if excluded:
                guard += f" and not ({excluded})"
            with cg.block(f"if {guard}:"):
                self._spread_entry(spread, loc, key, src, table, fold, obj, None)
            return
        k, v = cg.name("k"), cg.name("v")
        checked = src
        with contextlib.ExitStack() as loop:
            if self.values.fast:  # an empty view when null; not a dict: AttributeError
                src = self.values.dict_view(src, cache)
            else:
                loop.enter_context(cg.block(f"if type({src}) is dict:"))
            loop.enter_context(cg.block(f"for {k}, {v} in {src}.items():"))
            excluded = self._excluded(spread, k)
            if excluded:
                cg.emit(f"if {excluded}: continue")
            if spread.only is not None:
                cg.emit(f"if {k} not in {cg.const(frozenset(spread.only), 'set')}: continue")
            self._spread_entry(spread, loc, k, v, table, fold, obj, value_ast)
        if not self.values.fast:
            # a list, text or a number where the entries should be: the wrong shape, never
            # nothing copied (an empty one, as null, has nothing to copy; so the fast code,
            # which reads it as empty, agrees)
            with cg.block(f"elif {checked}:"):
                cg.emit(f"raise {cg.const(wrong_shape, 'wrong_shape')}("
                        f"{cg.literal('spread ' + spread.from_)}, 'an object', {checked})")

    def _excluded(self, spread: Spread, key: str) -> str:
        """Source of a test that ``key`` is excluded: exact names, or prefixes written ``moe_*``."""
        exact = [e for e in spread.exclude if not e.endswith("*")]
        prefixes = tuple(e[:-1] for e in spread.exclude if e.endswith("*"))
        tests = []
        if exact:
            tests.append(f"{key} in {self.cg.const(frozenset(exact), 'set')}")
        if prefixes:
            tests.append(f"{key}.startswith({self.cg.const(prefixes, 'prefixes')})")
        return " or ".join(tests)

    def _spread_entry(self, spread: Spread, loc: Loc, k: str, v: str, table: str | None,
                      fold: str, obj: str, value_ast: dict[str, Any] | None) -> None:
        cg = self.cg
        name = cg.name("n")
        with contextlib.ExitStack() as renamed:
            if table is None:
                name = k  # the key as it is: no copy
            elif spread.renamed_only:
                cg.emit(f"{name} = {table}.get({k}{fold})")
                renamed.enter_context(cg.block(f"if {name} is not None:"))
            else:
                cg.emit(f"{name} = {table}.get({k}{fold}, {k})")
            self._spread_value(spread, loc, name, v, obj, value_ast)

    def _spread_value(self, spread: Spread, loc: Loc, name: str, v: str, obj: str,
                      value_ast: dict[str, Any] | None) -> None:
        cg = self.cg
        if spread.prefix or spread.suffix:
            parts = [cg.literal(spread.prefix) if spread.prefix else "", name,
                     cg.literal(spread.suffix) if spread.suffix else ""]
            named = cg.name("n")
            cg.emit(f"{named} = {' + '.join(p for p in parts if p)}")
            name = named
        val = cg.name("sv")
        if value_ast is not None and spread.value is not None:
            inner = PathCache({"@": v})
            cg.emit(f"{val} = {self.values.value(spread.value, value_ast, inner)}")
        elif spread.transform:
            cg.emit(f"{val} = {v}")
        else:
            val = v  # the value as it is: no copy
        self.transforms(spread, loc, val, f"spread {spread.from_}")
        cg.emit(f"if {val} is not None: {obj}[{name}] = {val}")
        self.tr(f"('field', {name}, {cg.literal('spread ' + spread.from_)}, [], {val})")

    # -- sections -----------------------------------------------------------------------
    def function(self, name: str, known_dicts: frozenset[str], body: Callable[[], None]) -> None:
        """Emit ``def name(batch, event)`` whose statements ``body`` emits, twice over.

        ``_name_safe`` reads every field with a guarded subscript, whatever the record holds.
        ``name`` is written the way hand-written code is: fields read with
        ``(parent or EMPTY).get(key)``, strings cast with ``float()``/``int()``. Should a record
        hold a string, number or list where the rules read an object (AttributeError: no
        ``.get``), or a string that will not cast (ValueError), it returns what ``_name_safe``
        returns (or raises) instead. The generated code has no side effects, so redoing a
        record is safe, and the safe version is the reference: both give the same result.
        ``known_dicts`` are the parameters the caller guarantees are dicts. A traced bundle
        gets the safe version only.
        """
        cg = self.cg
        if self.trace:
            with cg.block(f"def {name}(batch, event, _tr=None):"):
                body()
            return
        safe = f"_{name}_safe"
        with cg.block(f"def {safe}(batch, event):"):
            body()
        reported = len(self.problems)
        self.values.fast, self.values.known_dicts = True, known_dicts
        try:
            with cg.block(f"def {name}(batch, event):"):
                with cg.block("try:"):
                    body()
                with cg.block("except (AttributeError, ValueError):"):
                    cg.emit(f"return {safe}(batch, event)")
        finally:
            self.values.fast, self.values.known_dicts = False, frozenset()
            del self.problems[reported:]  # the same problems again

    def gen_identity(self) -> tuple[bool, list[str]]:
        ident = self.bundle.identity
        cg = self.cg
        if ident is None:
            return True, []
        names = list(ident.candidates)
        order = ident.precedence if ident.precedence is not None else names
        for i, name in enumerate(order):
            if name not in ident.candidates:
                self.error(("identity", "precedence", i),
                           f"unknown identity candidate {name!r}{did_you_mean(name, names)}; "
                           f"candidates: {', '.join(names)}")
        reject = cg.const(frozenset(v.strip().casefold() for v in ident.reject), "reject")
        scalar = cg.const(scalar_text, "t_scalar")
        uses_event: list[bool] = []

        def body() -> None:
            cache = PathCache(dict(SCOPE))
            for name in order:
                spec = ident.candidates.get(name)
                if spec is None:
                    continue
                loc: Loc = ("identity", "candidates", name)
                if spec.from_ is not None:
                    with contextlib.suppress(ExpressionError):  # reported by self.field
                        uses_event.append("event" in root_fields(parse(spec.from_)))
                local = self.field(spec, loc, cache, f"identity {name}", frozenset(SCOPE))
                if local is None:
                    continue
                cg.emit(f"if {local} is not None and type({local}) is not str: "
                        f"{local} = {scalar}({local}, {cg.literal('identity ' + name)})")
                ok = (f"{local} is not None and {local}.strip() != '' and "
                      f"{local}.strip().casefold() not in {reject}")
                self.tr(f"('identity', {cg.literal(name)}, {local}, {ok})")
                with cg.block(f"if {ok}:"):
                    cg.emit(f"return {local}.strip(), {cg.literal(name)}")
            cg.emit("return None, None")

        self.function("identity", frozenset({"batch"}), body)  # Source.decode gives a dict
        return not any(uses_event), list(order)

    def gen_user(self) -> None:
        user = self.bundle.user
        if user is None:
            return
        cg = self.cg
        roots = frozenset(SCOPE)

        def body() -> None:
            cache = PathCache(dict(SCOPE))
            if user.when is not None:
                ast = self.expr(user.when, ("user", "when"), roots)
                if ast is not None:
                    cond = self.values.condition(user.when, ast, cache)
                    with cg.block(f"if not {cond}:"):
                        cg.emit("return None")
            obj = cg.name("attrs")
            self.spreads(user.spread, ("user", "spread"), cache, obj, roots)
            self.attributes(user.attributes, ("user", "attributes"), cache, "", roots, obj)
            cg.emit(f"return {obj}")

        self.function("user", frozenset({"batch"}), body)

    def gen_user_drops(self) -> list[str]:
        """``user_drops(batch, event)``: how many entries each of ``user.drop``'s lists holds
        (a value that is not a list holds none). Counted whatever ``user.when`` says: the
        changes exist, and are not sent, either way."""
        user = self.bundle.user
        if user is None or not user.drop:
            return []
        cg = self.cg
        counts: list[str] = []
        with cg.block("def user_drops(batch, event):"):
            cache = PathCache(dict(SCOPE))
            for i, drop in enumerate(user.drop):
                loc: Loc = ("user", "drop", i)
                if not drop.reason.strip():
                    self.error((*loc, "reason"), "drop reason is blank")
                ast = self.expr(drop.each, (*loc, "each"), frozenset(SCOPE))
                if ast is None:
                    continue
                items = self.values.value(drop.each, ast, cache)
                n = cg.name("n")
                cg.emit(f"{n} = len({items}) if type({items}) is list else 0")
                counts.append(n)
            cg.emit(f"return ({''.join(c + ', ' for c in counts)})")
        return [d.reason for d in user.drop]

    def gen_routing(self, attrs: str, cache: PathCache) -> tuple[str, str]:
        routing = self.bundle.routing
        cg = self.cg
        route = cg.name("route")
        if routing is None or not routing.projects:
            # No projects declared: not a portfolio workspace, so nothing to route or count.
            cg.emit(f"{route} = {ROUTE_NONE}")
            return route, "None"
        ast = self.expr(routing.from_, ("routing", "from"), frozenset(SCOPE))
        if ast is None:
            cg.emit(f"{route} = {ROUTE_NONE}")
            return route, "None"
        value = self.values.value(routing.from_, ast, cache)
        index = cg.const({p.name: i for i, p in enumerate(routing.projects)}, "projects")
        attr = cg.literal(routing.attribute)
        # Look the value up first: names are non-blank strings (check_routing), so only a string
        # can match (and then equals the name), and only a miss needs classifying.
        with cg.block("try:"):
            cg.emit(f"{route} = {index}.get({value}, {ROUTE_UNKNOWN})")
        with cg.block("except TypeError:"):  # an object or a list: unhashable
            cg.emit(f"{route} = {ROUTE_UNKNOWN}")
        with cg.block(f"if {route} >= 0:"):
            cg.emit(f"{attrs}[{attr}] = {value}")
        with cg.block("else:"):
            # Portfolio-level events must not claim a project they were not routed to.
            cg.emit(f"{attrs}.pop({attr}, None)")
            with cg.block(f"if {value} is None:"):
                cg.emit(f"{route} = {ROUTE_MISSING}")
            with cg.block(f"elif type({value}) is str and not {value}.strip():"):
                cg.emit(f"{route} = {ROUTE_BLANK}")
        self.tr(f"('route', {cg.literal(routing.from_)}, {value}, {route})")
        return route, value

    def gen_events(self, sink: Sink | type[Sink]) -> None:
        cg = self.cg
        roots = frozenset(SCOPE)

        def body() -> None:
            seen: dict[str, int] = {}
            top = PathCache(dict(SCOPE))
            for i, rule in enumerate(self.bundle.events):
                loc: Loc = ("events", i)
                if rule.name in seen:
                    self.error((*loc, "name"), f"duplicate rule name {rule.name!r} "
                                               f"(rule {seen[rule.name] + 1} has it too)")
                seen.setdefault(rule.name, i)
                cond = "True"
                branch = top.child()
                if rule.when is not None:
                    ast = self.expr(rule.when, (*loc, "when"), roots)
                    if ast is not None:
                        cond = self.values.condition(rule.when, ast, top)
                        self.values.assume_truthy(ast, branch)
                if self.trace:
                    matched = cg.name("m")
                    cg.emit(f"{matched} = bool({cond})")
                    self.tr(f"('rule', {cg.literal(rule.name)}, {cg.literal(rule.when)}, "
                            f"{matched})")
                    cond = matched
                with cg.block(f"if {cond}:"):
                    self.gen_rule(rule, i, loc, branch, sink)
            cg.emit("return -1, None, None, None, None, None")

        # The pipeline calls event() only with a dict event (explain, traced, with any value).
        self.function("event", frozenset({"batch", "event"}), body)

    def gen_rule(self, rule: EventRule, i: int, loc: Loc, cache: PathCache,
                 sink: Sink | type[Sink]) -> None:
        cg = self.cg
        roots = frozenset(SCOPE)
        if rule.drop is not None:
            extra = [k for k in ("event_name", "attributes", "spread", "fields") if getattr(
                rule, k)]
            if extra:
                self.error((*loc, extra[0]), f"rule {rule.name!r} drops records; "
                                             f"`{extra[0]}` would never be used")
            cg.emit(f"return {i}, None, None, None, None, None")
            return
        name = "None"
        if rule.emit == "event":
            if rule.event_name is None:
                self.error(loc, f"rule {rule.name!r} needs `event_name` (or `drop:` a reason)")
            else:
                name = self.field(rule.event_name, (*loc, "event_name"), cache, "event name",
                                  roots, alias=True) or "None"
                if rule.event_name.template is None and name != "None":  # a template makes text
                    cg.emit(f"if {name} is not None and type({name}) is not str: "
                            f"{name} = {cg.const(scalar_text, 't_scalar')}({name}, 'event name')")
        elif rule.event_name is not None:
            self.error((*loc, "event_name"), f"rule {rule.name!r} emits a user update; "
                                             "`event_name` would never be used")
        attrs = cg.name("attrs")
        self.spreads(rule.spread, (*loc, "spread"), cache, attrs, roots)
        self.attributes(rule.attributes, (*loc, "attributes"), cache, "", roots, attrs)
        fields = "None"
        if rule.fields:
            for key in rule.fields:
                if key not in sink.event_fields:
                    self.error((*loc, "fields", key), f"destination {sink.name!r} has no event "
                               f"field {key!r}{did_you_mean(key, sink.event_fields)}; it takes: "
                               f"{', '.join(sink.event_fields)}", key=True)
            fields = self.attributes(rule.fields, (*loc, "fields"), cache, "", roots)
        route, value = str(ROUTE_NONE), "None"
        if rule.emit == "event":
            route, value = self.gen_routing(attrs, cache)
        cg.emit(f"return {i}, {name}, {attrs}, {fields}, {route}, {value}")

    def compile(self) -> CompiledBundle:
        bundle = self.bundle
        source_cls = self.connector(bundle.source.connector, "source", Source)
        sink_cls = self.connector(bundle.destination.connector, "destination", Sink)
        secrets: set[str] = set()
        missing: list[str] = []
        source = sink = None
        # settings are checked against each connector's model at their file positions
        if source_cls is not None:
            bound = bind_settings(self.raw, "source", source_cls, self.env_vars)
            self.problems += bound.problems
            missing += bound.missing
            source = bound.connector
        if sink_cls is not None:
            bound = bind_settings(self.raw, "destination", sink_cls, self.env_vars)
            self.problems += bound.problems
            missing += bound.missing
            secrets |= bound.secrets
            sink = bound.connector
        checked = sink if sink is not None else sink_cls  # rules are checked by its class too
        projects = self.check_routing(checked)
        for name, table in bundle.tables.items():
            if not table.values:
                self.error(("tables", name), f"table {name!r} is empty")
        per_batch, _ = self.gen_identity()
        self.gen_user()
        drop_reasons = self.gen_user_drops()
        if checked is not None:
            self.gen_events(checked)
            self.check_kinds(checked)
        for loc, message in cohort_problems(bundle, source, sink):  # engine/cohorts.py
            self.error(loc, message, key=len(loc) == 1)
        if self.problems or source is None or sink is None:
            raise RuleError(self.problems)
        namespace = self.cg.build(f"<bundle {bundle.bundle}>")
        routing_missing = [m for _, code in projects for m in _env_names(code)
                           if m not in self.env_vars]
        return CompiledBundle(
            model=bundle, source=source, sink=sink,
            identity=namespace.get("identity"), identity_per_batch=per_batch,
            user=namespace.get("user"), event=namespace["event"],
            rule_names=[r.name for r in bundle.events],
            drop_reasons=[r.drop for r in bundle.events],
            emits=[r.emit for r in bundle.events],
            projects=projects, source_code=self.cg.source(), reads=self.reads,
            missing_env=sorted(set(missing + routing_missing)), secrets=frozenset(secrets),
            traced=self.trace, user_drops=namespace.get("user_drops"),
            user_drop_reasons=drop_reasons,
        )

    def check_kinds(self, sink: Sink | type[Sink]) -> None:
        """Every kind of item the bundle emits is one its destination accepts."""
        if self.bundle.user is not None and (problem := kind_problem(sink, USER)):
            self.error(("user",), problem, key=True)
        for i, rule in enumerate(self.bundle.events):
            if rule.drop is None and (problem := kind_problem(sink, rule.emit)):
                self.error(("events", i, "emit") if "emit" in _set(rule) else ("events", i),
                           problem, key="emit" in _set(rule))

    def connector(self, name: str, role: str, kind: type[Any]) -> Any:
        cls = load_connector(name)
        if cls is None or not issubclass(cls, kind):
            choices = [n for n in connector_names()
                       if (c := load_connector(n)) is not None and issubclass(c, kind)]
            self.error((role, "connector"), f"unknown {role} connector {name!r}"
                       f"{did_you_mean(name, choices)}; available: {', '.join(choices)}")
            return None
        return cls

    def check_routing(self, sink: Sink | type[Sink] | None) -> list[tuple[str, str]]:
        routing = self.bundle.routing
        if routing is None:
            return []
        if sink is not None and not sink.supports_routing:
            self.error(("routing",), f"destination {sink.name!r} does not support portfolio "
                                     "routing", key=True)
        names: dict[str, int] = {}
        codes: dict[str, int] = {}
        out = []
        for i, project in enumerate(routing.projects):
            loc: Loc = ("routing", "projects", i)
            if not project.name.strip():
                self.error((*loc, "name"), "project name is blank")
            if project.name != project.name.strip():
                self.error((*loc, "name"), f"project name {project.name!r} has surrounding "
                           "spaces; matching is exact, so no event would ever match it")
            if project.name in names:
                self.error((*loc, "name"), f"project {project.name!r} is declared twice "
                           f"(also project {names[project.name] + 1})")
            if not project.code.strip():
                self.error((*loc, "code"), "project code is blank")
            if project.code in codes:
                self.error((*loc, "code"), f"project code {project.code!r} is used twice "
                           f"(also project {codes[project.code] + 1})")
            names.setdefault(project.name, i)
            codes.setdefault(project.code, i)
            code, _ = resolve_env({"code": project.code}, self.env_vars)
            out.append((project.name, str(code["code"])))
        return out


def _env_names(text: str) -> list[str]:
    return re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)


def _set(spec: Any) -> set[str]:
    out = set()
    for name in spec.model_fields_set:
        info = type(spec).model_fields[name]
        out.add(info.alias or name)
    return out


def _keys(raw: LDict, loc: Loc) -> set[str]:
    node: Any = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(node) if isinstance(node, dict) else set()


def _steps(spec: FieldSpec) -> list[str]:
    steps = [s if isinstance(s, str) else f"{k}: {v}" for s in spec.transform
             for k, v in ([(s, None)] if isinstance(s, str) else list(s.items()))]
    steps = [s for s in steps if s is not None]
    if spec.as_:
        steps.append(f"as {spec.as_}")
    if "default" in _set(spec):
        steps.append(f"default {spec.default!r}")
    return steps


def compile_bundle(raw: LDict, *, trace: bool = False,
                   env: Mapping[str, str] | None = None) -> CompiledBundle:
    """Validate and compile a merged bundle document; raise RuleError with every problem.

    ``env`` supplies ``${VAR}`` values (default: the process environment).
    """
    model, problems = validate_document(raw, Bundle, raw.pos.path)
    if model is None:
        raise RuleError(problems)
    compiler = _Compiler(raw, model, trace, env)
    try:
        compiled = compiler.compile()
    except RuleError as exc:
        raise RuleError(problems + exc.problems) from None
    except Exception:
        if problems:  # a model built around reported problems may not compile: report those
            raise RuleError(problems) from None
        raise
    if problems:
        raise RuleError(problems)
    return compiled
