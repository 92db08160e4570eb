"""What the code emission for one bundle shares: the module being written (``Codegen``), the
value compiler, the bundle's languages, the trace switch, and how transform steps apply.
"""

from __future__ import annotations

from typing import Any

from moerules.engine.compile.checks import given_keys
from moerules.engine.compile.codegen import Codegen
from moerules.engine.compile.language import RuleLanguage
from moerules.engine.compile.transforms import CASTS, Site, check_transform
from moerules.engine.compile.values import ValueCompiler
from moerules.engine.rules.model import FieldSpec, Spread

__all__ = ["CodeContext", "apply_steps"]


class CodeContext:
    """What every part of the emission shares: the module being written, the value compiler,
    the bundle's languages, and whether trace points are emitted (``explain``)."""

    def __init__(self, cg: Codegen, language: RuleLanguage, trace: bool) -> None:
        self.cg = cg
        self.values = ValueCompiler(cg)
        self.language = language
        self.trace = trace
        self.rule: str | None = None  # the rule being emitted, as dead letters name it

    def tr(self, line: str) -> None:
        """A trace point: ``line`` appended to the trace when one is being taken."""
        if self.trace:  # a traced bundle also runs untraced, in explain's dry run
            self.cg.emit(f"if _tr is not None: _tr.append({line})")

    def expression(self, text: str) -> dict[str, Any]:
        return self.language.expression(text)


def apply_steps(ctx: CodeContext, spec: FieldSpec | Spread, var: str, what: str) -> None:
    """Apply ``spec``'s transforms to local ``var``, then its cast and default (a field's)."""
    site = Site(ctx.cg, var, what, ctx.language.tables)
    for step in spec.transform:
        transform, argument = check_transform(step, ctx.language.tables)
        transform.emit(site, argument)
    if isinstance(spec, FieldSpec):
        if spec.as_ is not None:
            check_transform(CASTS[spec.as_], ctx.language.tables)[0].emit(site, None)
        if "default" in given_keys(spec):
            transform, argument = check_transform({"default": spec.default}, ctx.language.tables)
            transform.emit(site, argument)
