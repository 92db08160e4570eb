"""Code for spreads: many attributes copied at once from an object, renamed through a table,
filtered, prefixed, each value transformed; or one pair whose name is data.

Emission only (the rules were checked before). In fast code a source that is null reads as
an empty object, and one that is not an object fails (no ``.items``), which hands the record
to the safe code; the safe code dead-letters it as the wrong shape.
"""

from __future__ import annotations

import contextlib
from typing import Any

from moerules.engine.compile.codegen import PathCache
from moerules.engine.compile.conversions import wrong_shape
from moerules.engine.compile.emission import CodeContext, apply_steps
from moerules.engine.rules.model import Spread

__all__ = ["SpreadCode"]


class SpreadCode:
    """Emits spreads into an object."""

    def __init__(self, ctx: CodeContext) -> None:
        self.ctx = ctx

    def spreads(
        self, spreads: list[Spread], cache: PathCache, obj: str, roots: frozenset[str] | None
    ) -> None:
        """Emit ``obj = {}`` and the spreads into it; a first plain spread copies instead."""
        created = False
        for spread in spreads:
            if not created:
                created = True
                if self.copy(spread, cache, obj):
                    continue
                self.ctx.cg.emit(f"{obj} = {{}}")
            self.spread(spread, cache, obj)
        if not created:
            self.ctx.cg.emit(f"{obj} = {{}}")

    def copy(self, spread: Spread, cache: PathCache, obj: str) -> bool:
        """A spread that copies entries as they are, into an object not made yet: copy the
        source whole (in C), then delete the null and excluded entries, rather than copy the
        entries one by one. Fast mode only (the source's view may be a list: AttributeError on
        ``.items``). True when it emitted ``obj``."""
        ctx, cg, values = self.ctx, self.ctx.cg, self.ctx.values
        if (
            not values.fast
            or ctx.trace
            or spread.key is not None
            or spread.rename is not None
            or spread.renamed_only
            or spread.prefix
            or spread.suffix
            or spread.transform
            or spread.value is not None
        ):
            return False
        source = ctx.expression(spread.from_)
        view = values.dict_view(values.value(spread.from_, source, cache), cache)
        k, v = cg.name("k"), cg.name("v")
        drop = [f"{v} is None"]
        excluded = self.excluded(spread, k)
        if excluded:
            drop.append(excluded)
        if spread.only is not None:
            drop.append(f"{k} not in {cg.const(frozenset(spread.only), 'set')}")
        cg.emit(f"{obj} = {view}.copy()")
        with cg.block(f"for {k}, {v} in {view}.items():"):
            cg.emit(f"if {' or '.join(drop)}: del {obj}[{k}]")
        return True

    def spread(self, spread: Spread, cache: PathCache, obj: str) -> None:
        ctx, cg, values = self.ctx, self.ctx.cg, self.ctx.values
        rename: dict[str, str] | None = None
        if isinstance(spread.rename, str):
            rename = {str(k): str(v) for k, v in ctx.language.tables[spread.rename].values.items()}
        elif spread.rename is not None:
            rename = dict(spread.rename)
        if rename is not None and spread.ignore_case:
            rename = {k.casefold(): v for k, v in rename.items()}
        value_ast = ctx.expression(spread.value) if spread.value else None
        src = values.value(spread.from_, ctx.expression(spread.from_), cache)
        table = cg.const(rename, "rename") if rename is not None else None
        fold = ".casefold()" if spread.ignore_case else ""
        if spread.key is not None:  # one pair whose name is data
            key = values.value(spread.key, ctx.expression(spread.key), cache)
            guard = f"type({key}) is str and {key} and {src} is not None"
            excluded = self.excluded(spread, key)
            if excluded:
                guard += f" and not ({excluded})"
            with cg.block(f"if {guard}:"):
                self.entry(spread, key, src, table, fold, obj, None)
            return
        k, v = cg.name("k"), cg.name("v")
        checked = src
        with contextlib.ExitStack() as loop:
            if values.fast:  # an empty view when null; not a dict: AttributeError
                src = values.dict_view(src, cache)
            else:
                loop.enter_context(cg.block(f"if type({src}) is dict:"))
            loop.enter_context(cg.block(f"for {k}, {v} in {src}.items():"))
            excluded = self.excluded(spread, k)
            if excluded:
                cg.emit(f"if {excluded}: continue")
            if spread.only is not None:
                cg.emit(f"if {k} not in {cg.const(frozenset(spread.only), 'set')}: continue")
            self.entry(spread, k, v, table, fold, obj, value_ast)
        if not values.fast:
            # a list, text or a number where the entries should be: the wrong shape, never
            # nothing copied (an empty one, as null, has nothing to copy; so the fast code,
            # which reads it as empty, agrees)
            with cg.block(f"elif {checked}:"):
                cg.emit(
                    f"raise {cg.const(wrong_shape, 'wrong_shape')}("
                    f"{cg.literal('spread ' + spread.from_)}, 'an object', {checked})"
                )

    def excluded(self, spread: Spread, key: str) -> str:
        """Source of a test that ``key`` is excluded: exact names, or prefixes written ``moe_*``."""
        exact = [e for e in spread.exclude if not e.endswith("*")]
        prefixes = tuple(e[:-1] for e in spread.exclude if e.endswith("*"))
        tests = []
        if exact:
            tests.append(f"{key} in {self.ctx.cg.const(frozenset(exact), 'set')}")
        if prefixes:
            tests.append(f"{key}.startswith({self.ctx.cg.const(prefixes, 'prefixes')})")
        return " or ".join(tests)

    def entry(
        self,
        spread: Spread,
        k: str,
        v: str,
        table: str | None,
        fold: str,
        obj: str,
        value_ast: dict[str, Any] | None,
    ) -> None:
        """One entry (key ``k``, value ``v``): renamed, then its value made and set."""
        cg = self.ctx.cg
        name = cg.name("n")
        with contextlib.ExitStack() as renamed:
            if table is None:
                name = k  # the key as it is: no copy
            elif spread.renamed_only:
                cg.emit(f"{name} = {table}.get({k}{fold})")
                renamed.enter_context(cg.block(f"if {name} is not None:"))
            else:
                cg.emit(f"{name} = {table}.get({k}{fold}, {k})")
            self.value(spread, name, v, obj, value_ast)

    def value(
        self, spread: Spread, name: str, v: str, obj: str, value_ast: dict[str, Any] | None
    ) -> None:
        ctx, cg = self.ctx, self.ctx.cg
        if spread.prefix or spread.suffix:
            parts = [
                cg.literal(spread.prefix) if spread.prefix else "",
                name,
                cg.literal(spread.suffix) if spread.suffix else "",
            ]
            named = cg.name("n")
            cg.emit(f"{named} = {' + '.join(p for p in parts if p)}")
            name = named
        val = cg.name("sv")
        if value_ast is not None and spread.value is not None:
            inner = PathCache({"@": v})
            cg.emit(f"{val} = {ctx.values.value(spread.value, value_ast, inner)}")
        elif spread.transform:
            cg.emit(f"{val} = {v}")
        else:
            val = v  # the value as it is: no copy
        apply_steps(ctx, spread, val, f"spread {spread.from_}")
        cg.emit(f"if {val} is not None: {obj}[{name}] = {val}")
        ctx.tr(f"('field', {name}, {cg.literal('spread ' + spread.from_)}, [], {val})")
