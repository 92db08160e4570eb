"""Code for a bundle's sections: the functions of its module.

``identity(batch, event)`` returns the ``ChosenIdentity``; ``user(batch, event)`` the record's
user attributes (or None); ``user_drops(batch, event)`` how many user changes each counted drop
holds; ``event(batch, event)`` the ``MappedEvent``: which rule matched and what it made,
routing included. Emission only: the rules were checked whole before (``checks``).
"""

from __future__ import annotations

from collections.abc import Callable

from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.conversions import scalar_text
from moerules.engine.compile.emission import CodeContext
from moerules.engine.compile.fields import FieldCode
from moerules.engine.compile.language import RuleLanguage
from moerules.engine.compile.mapped import (
    NO_RULE,
    ROUTE_BLANK,
    ROUTE_MISSING,
    ROUTE_NONE,
    ROUTE_UNKNOWN,
    ChosenIdentity,
    MappedEvent,
)
from moerules.engine.errors import RecordError
from moerules.engine.rules.model import Bundle, EventRule

__all__ = ["BundleCode", "emit_bundle"]

SCOPE = {"batch": "batch", "event": "event"}  # the roots, as the functions' parameters


def emit_bundle(bundle: Bundle, language: RuleLanguage, *, trace: bool = False) -> Codegen:
    """The module of ``bundle``'s functions (with trace points for ``explain``)."""
    return BundleCode(bundle, language, trace).emit()


class BundleCode:
    """Emits the functions of one bundle."""

    def __init__(self, bundle: Bundle, language: RuleLanguage, trace: bool) -> None:
        self.bundle = bundle
        self.cg = Codegen()
        self.cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
        self.cg.namespace["_RecordError"] = RecordError
        self.ctx = CodeContext(self.cg, language, trace)
        self.fields = FieldCode(self.ctx)

    def emit(self) -> Codegen:
        self.identity()
        self.user()
        self.user_drops()
        self.events()
        return self.cg

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
        cg, values = self.cg, self.ctx.values
        if self.ctx.trace:
            with cg.block(f"def {name}(batch, event, _tr=None):"):
                body()
            return
        safe = f"_{name}_safe"
        with cg.block(f"def {safe}(batch, event):"):
            body()
        values.fast, values.known_dicts = True, known_dicts
        try:
            with cg.block(f"def {name}(batch, event):"):
                with cg.block("try:"):
                    body()
                with cg.block("except (AttributeError, ValueError):"):
                    cg.emit(f"return {safe}(batch, event)")
        finally:
            values.fast, values.known_dicts = False, frozenset()

    def identity(self) -> None:
        ident = self.bundle.identity
        if ident is None:
            return
        cg, ctx = self.cg, self.ctx
        order = ident.precedence if ident.precedence is not None else list(ident.candidates)
        reject = cg.const(frozenset(v.strip().casefold() for v in ident.reject), "reject")
        scalar = cg.const(scalar_text, "t_scalar")
        chosen = cg.const(ChosenIdentity, "chosen")
        nobody = cg.const(ChosenIdentity(), "no_identity")

        def body() -> None:
            cache = PathCache(dict(SCOPE))
            for name in order:
                spec = ident.candidates[name]
                local = self.fields.field(spec, cache, f"identity {name}", frozenset(SCOPE))
                cg.emit(
                    f"if {local} is not None and type({local}) is not str: "
                    f"{local} = {scalar}({local}, {cg.literal('identity ' + name)})"
                )
                ok = (
                    f"{local} is not None and {local}.strip() != '' and "
                    f"{local}.strip().casefold() not in {reject}"
                )
                ctx.tr(f"('identity', {cg.literal(name)}, {local}, {ok})")
                with cg.block(f"if {ok}:"):
                    cg.emit(f"return {chosen}({local}.strip(), {cg.literal(name)})")
            cg.emit(f"return {nobody}")

        self.function("identity", frozenset({"batch"}), body)  # Source.decode gives a dict

    def user(self) -> None:
        user = self.bundle.user
        if user is None:
            return
        cg, ctx = self.cg, self.ctx
        roots = frozenset(SCOPE)

        def body() -> None:
            ctx.rule = "user"
            cache = PathCache(dict(SCOPE))
            if user.when is not None:
                cond = ctx.values.condition(user.when, ctx.expression(user.when), cache)
                with cg.block(f"if not {cond}:"):
                    cg.emit("return None")
            obj = cg.name("attrs")
            self.fields.spreads.spreads(user.spread, cache, obj, roots)
            self.fields.attributes(user.attributes, cache, "", roots, obj)
            cg.emit(f"return {obj}")
            ctx.rule = None

        self.function("user", frozenset({"batch"}), body)

    def user_drops(self) -> None:
        """``user_drops(batch, event)``: how many entries each of ``user.drop``'s lists holds
        (a value that is not a list holds none). Counted whatever ``user.when`` says: the
        changes exist, and are not sent, either way."""
        user = self.bundle.user
        if user is None or not user.drop:
            return
        cg, ctx = self.cg, self.ctx
        counts: list[str] = []
        with cg.block("def user_drops(batch, event):"):
            cache = PathCache(dict(SCOPE))
            for drop in user.drop:
                items = ctx.values.value(drop.each, ctx.expression(drop.each), cache)
                n = cg.name("n")
                cg.emit(f"{n} = len({items}) if type({items}) is list else 0")
                counts.append(n)
            cg.emit(f"return ({''.join(c + ', ' for c in counts)})")

    def events(self) -> None:
        cg, ctx = self.cg, self.ctx

        def body() -> None:
            top = PathCache(dict(SCOPE))
            for i, rule in enumerate(self.bundle.events):
                cond = "True"
                branch = top.child()
                if rule.when is not None:
                    ast = ctx.expression(rule.when)
                    cond = ctx.values.condition(rule.when, ast, top)
                    ctx.values.assume_truthy(ast, branch)
                if ctx.trace:
                    matched = cg.name("m")
                    cg.emit(f"{matched} = bool({cond})")
                    ctx.tr(f"('rule', {cg.literal(rule.name)}, {cg.literal(rule.when)}, {matched})")
                    cond = matched
                ctx.rule = rule.name  # (what its dead letters name)
                with cg.block(f"if {cond}:"):
                    self.rule(rule, i, branch)
                ctx.rule = None
            cg.emit(f"return {cg.const(MappedEvent(NO_RULE), 'no_rule')}")

        # The pipeline calls event() only with a dict event (explain, traced, with any value).
        self.function("event", frozenset({"batch", "event"}), body)

    def rule(self, rule: EventRule, i: int, cache: PathCache) -> None:
        cg = self.cg
        if rule.drop is not None:
            cg.emit(f"return {cg.const(MappedEvent(i), 'dropped')}")
            return
        roots = frozenset(SCOPE)
        name = "None"
        if rule.emit == "event" and rule.event_name is not None:
            name = self.fields.field(rule.event_name, cache, "event name", roots, alias=True)
            if rule.event_name.template is None:  # (a template makes text)
                cg.emit(
                    f"if {name} is not None and type({name}) is not str: "
                    f"{name} = {cg.const(scalar_text, 't_scalar')}({name}, 'event name')"
                )
        attrs = cg.name("attrs")
        self.fields.spreads.spreads(rule.spread, cache, attrs, roots)
        self.fields.attributes(rule.attributes, cache, "", roots, attrs)
        fields = "None"
        if rule.fields:
            fields = self.fields.attributes(rule.fields, cache, "", roots)
        route, value = str(ROUTE_NONE), "None"
        if rule.emit == "event":
            route, value = self.routing(attrs, cache)
        mapped = cg.const(MappedEvent, "mapped")
        cg.emit(f"return {mapped}({i}, {name}, {attrs}, {fields}, {route}, {value})")

    def routing(self, attrs: str, cache: PathCache) -> tuple[str, str]:
        """Code setting a local to the event's route: the index of the project it names, or
        why it stays at portfolio level; and the project attribute set (or removed)."""
        routing = self.bundle.routing
        cg, ctx = self.cg, self.ctx
        route = cg.name("route")
        if routing is None or not routing.projects:
            # No projects declared: not a portfolio workspace, so nothing to route or count.
            cg.emit(f"{route} = {ROUTE_NONE}")
            return route, "None"
        value = ctx.values.value(routing.from_, ctx.expression(routing.from_), cache)
        index = cg.const({p.name: i for i, p in enumerate(routing.projects)}, "projects")
        attr = cg.literal(routing.attribute)
        # Look the value up first: names are non-blank strings (checked), so only a string can
        # match (and then equals the name), and only a miss needs classifying.
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
        ctx.tr(f"('route', {cg.literal(routing.from_)}, {value}, {route})")
        return route, value
