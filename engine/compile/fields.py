"""Code for fields: one value (a path, a constant, a template, a list of objects or a nested
object) computed into a local, then transformed.

Emission only: the rules were checked whole before (``checks``), so nothing here reports a
problem. The code is written the way a person would write it by hand: a plain path is its own
local, a cast or a default is one conditional expression, an object starts as one dict display
of the values that are never null.
"""

from __future__ import annotations

from collections.abc import Mapping

from moerules.engine.compile.bounds import MAX_TEMPLATE_OUTPUT
from moerules.engine.compile.checks import given_keys
from moerules.engine.compile.codegen import PathCache
from moerules.engine.compile.conversions import wrong_shape
from moerules.engine.compile.emission import CodeContext, apply_steps
from moerules.engine.compile.spreads import SpreadCode
from moerules.engine.compile.templates import renderer, template_text
from moerules.engine.compile.transforms import CASTS, call_source, cast_source
from moerules.engine.rules.model import FieldSpec

__all__ = ["FieldCode"]


class FieldCode:
    """Emits fields and objects of fields."""

    def __init__(self, ctx: CodeContext) -> None:
        self.ctx = ctx
        self.spreads = SpreadCode(ctx)

    def field(
        self,
        spec: FieldSpec,
        cache: PathCache,
        what: str,
        roots: frozenset[str] | None,
        *,
        alias: bool = False,
    ) -> str:
        """Emit code computing one field into a fresh local; return the local's name.

        With ``alias`` (the caller only reads the result) a plain path with nothing to apply
        returns the path's own local instead of a copy.
        """
        ctx, cg = self.ctx, self.ctx.cg
        given = given_keys(spec)
        out = cg.name("f")
        if spec.each is not None:
            return self.each(spec, cache, what, roots, out)
        if spec.from_ is not None:
            src = ctx.values.value(spec.from_, ctx.expression(spec.from_), cache)
            if alias and not spec.transform and spec.as_ is None and "default" not in given:
                out = src
            else:
                cg.emit(f"{out} = {src}")
            origin = spec.from_
        elif spec.template is not None:
            self.template(spec.template, cache, out, roots, what)
            origin = spec.template
        elif "value" in given:
            cg.emit(f"{out} = {cg.literal(spec.value)}")
            origin = "constant"
        else:
            cg.emit(f"{out} = {self.object(spec, cache, what, roots)}")
            origin = "object"
        if spec.on_error == "omit":
            # An optional field that will not convert is left out; the record still goes.
            with cg.block("try:"):
                apply_steps(ctx, spec, out, what)
            with cg.block("except _RecordError:"):
                cg.emit(f"{out} = None")
        else:
            apply_steps(ctx, spec, out, what)
        if ctx.trace:
            ctx.tr(
                f"('field', {cg.literal(what)}, {cg.literal(origin)}, "
                f"{cg.literal(_steps(spec))}, {out})"
            )
        return out

    def template(
        self, source: str, cache: PathCache, out: str, roots: frozenset[str] | None, what: str
    ) -> None:
        ctx, cg = self.ctx, self.ctx.cg
        compiled = ctx.language.template(source, roots)
        if "{" not in source:
            cg.emit(f"{out} = {cg.literal(source)}")
            return
        path = ctx.language.template_path(source)
        text = cg.const(template_text, "t_text")
        if path is not None and (roots is None or path[0] in roots):
            # written exactly as Jinja would write it, without Jinja
            local = ctx.values.path(path if roots is not None else path[1:] or path, cache)
            cg.emit(
                f"{out} = '' if {local} is None else {local} if type({local}) is str and "
                f"len({local}) <= {MAX_TEMPLATE_OUTPUT} else "
                f"{text}({local}, {cg.literal(what)})"
            )
            return
        args = ", ".join(f"{k}={v}" for k, v in cache.roots.items() if k != "@")
        if roots is None:
            args = f"item={cache.roots['@']}"
        render = cg.name("render")
        cg.namespace[render] = renderer(source, compiled, what, ctx.rule)
        cg.emit(f"{out} = {render}({args})")

    def each(
        self,
        spec: FieldSpec,
        cache: PathCache,
        what: str,
        roots: frozenset[str] | None,
        out: str,
        store: str | None = None,
    ) -> str:
        """A list of objects, one per item; with ``store`` (``obj[key]``), stored there when
        the items are a list (rather than left null, then tested)."""
        ctx, cg, values = self.ctx, self.ctx.cg, self.ctx.values
        assert spec.each is not None
        items = values.value(spec.each, ctx.expression(spec.each), cache)
        item = cg.name("item")
        if store is None:
            cg.emit(f"{out} = None")
        shape = cg.const(wrong_shape, "wrong_shape")
        with cg.block(f"if type({items}) is list:"):
            cg.emit(f"{out} = []")
            with cg.block(f"for {item} in {items}:"):
                inner = PathCache({"@": item})
                known = values.known_dicts
                if values.fast:  # items are objects; any other item is AttributeError
                    values.known_dicts = known | {item}
                # An item that is not an object is the wrong shape: never an empty object
                check = (
                    f"if type({item}) is not dict: raise {shape}("
                    f"{cg.literal(what + '[]')}, 'an object', {item})"
                )
                mark = len(cg.lines)
                try:
                    obj = self.object(spec, inner, f"{what}[]", None)
                finally:
                    values.known_dicts = known
                if not (
                    values.fast
                    and cg.lines[mark].lstrip().split(" = ", 1)[-1].startswith(f"{item}.get(")
                ):
                    # (the fast code's first read, ``item.get``, already fails for any
                    # other item and sends the record to the safe code, which checks)
                    cg.insert(mark, check)
                cg.emit(f"{out}.append({obj})")
            if store is not None:
                cg.emit(f"{store} = {out}")
        with cg.block(f"elif {items} is not None:"):
            cg.emit(f"raise {shape}({cg.literal(what)}, 'a list', {items})")
        ctx.tr(f"('field', {cg.literal(what)}, {cg.literal('each ' + spec.each)}, [], {out})")
        return out

    def object(
        self, spec: FieldSpec, cache: PathCache, what: str, roots: frozenset[str] | None
    ) -> str:
        """An object built from ``spec.spread`` then ``spec.attributes``."""
        if not spec.spread:
            return self.attributes(spec.attributes or {}, cache, what, roots)
        obj = self.ctx.cg.name("obj")
        self.spreads.spreads(spec.spread, cache, obj, roots)
        return self.attributes(spec.attributes or {}, cache, what, roots, obj)

    def attributes(
        self,
        specs: Mapping[str, FieldSpec],
        cache: PathCache,
        what: str,
        roots: frozenset[str] | None,
        target: str | None = None,
    ) -> str:
        """Emit code building the object ``specs`` describe (into ``target`` when given).

        A fresh object starts as one dict display of its leading values that are never null
        (sized once, rather than grown one key at a time); from the first value that may be
        null on, each is set only when it is not null, which costs less than setting it and
        deleting it again. Values are computed in the same order either way.
        """
        ctx, cg = self.ctx, self.ctx.cg
        display = target is None and not ctx.trace and len(specs) > 1
        obj = target or cg.name("obj")
        if target is None and not display:
            cg.emit(f"{obj} = {{}}")
        leading: list[tuple[str, str]] = []  # (key source, value source), never null

        def put(key: str, value: str, guard: str) -> None:
            """Set ``key`` to ``value`` (only when ``guard``, a local, is not null): into the
            leading display while nothing before it may be null, else into the object."""
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
            inline = self.inline_field(spec, cache, label)
            if inline is not None:
                put(key, inline[1], inline[0])
                continue
            given = given_keys(spec)
            if (
                spec.each is not None
                and not ctx.trace
                and not given & {"from", "value", "template"}
            ):
                start()
                self.each(spec, cache, label, roots, cg.name("f"), f"{obj}[{key}]")
                continue
            made = self.field(spec, cache, label, roots, alias=True)
            # the default is applied last, so the value is never null
            nullable = not (
                spec.each is None
                and spec.default is not None
                and "default" in given
                and spec.on_error != "omit"
            )
            put(key, made, made if nullable else "")
        start()
        return obj

    def inline_field(self, spec: FieldSpec, cache: PathCache, what: str) -> tuple[str, str] | None:
        """``{from: p, as: T}``, ``{from: p, default: d}`` or ``{from: p, transform: epoch_*}``
        as one expression, no copy: (the local that must not be null for the value to be set,
        or "" when the value is set whatever; the value's source), or None for any other field
        (and in a traced bundle), which ``field`` then emits.

        The shapes written the way a person would: ``v if type(v) is float else <convert>``
        when ``v`` is not null, ``v if v else <d if v is null or "">``, ``v // 1000`` for an int.
        """
        ctx = self.ctx
        given = given_keys(spec)
        if (
            ctx.trace
            or spec.from_ is None
            or spec.on_error == "omit"
            or given & {"value", "template", "each"}
            or spec.attributes is not None
        ):
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
        v = ctx.values.value(spec.from_, ctx.expression(spec.from_), cache)
        if cast is not None:
            keep, convert = cast_source(ctx.cg, v, cast, what, fast=ctx.values.fast)
            return v, f"{v} if type({v}) is {keep} else {convert}"
        if epoch is not None:
            inline, call = call_source(ctx.cg, v, epoch, what)
            return v, f"{inline} if type({v}) is int else {call}"
        default = ctx.cg.literal(spec.default)
        value = f"{v}.{case}() if type({v}) is str and {v}" if case else f"{v} if {v}"
        return "", f"{value} else ({default} if {v} is None or {v} == '' else {v})"


def _steps(spec: FieldSpec) -> list[str]:
    """A field's transforms as a trace shows them."""
    steps = [
        s if isinstance(s, str) else f"{k}: {v}"
        for s in spec.transform
        for k, v in ([(s, None)] if isinstance(s, str) else list(s.items()))
    ]
    if spec.as_:
        steps.append(f"as {spec.as_}")
    if "default" in given_keys(spec):
        steps.append(f"default {spec.default!r}")
    return steps
