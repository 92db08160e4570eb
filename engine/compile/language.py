"""The languages inside a bundle, set up once per bundle: its tables, its template environment,
and every expression and template it holds, parsed and vetted once.

The checks (``checks``) ask for each expression and template and report what is wrong with it;
the code emission (``fields``, ``spreads``, ``sections``) asks again for what it compiles and
gets the same vetted result, from the cache, without a second parse.
"""

from __future__ import annotations

from typing import Any

from moerules.engine.compile.expressions import parse
from moerules.engine.compile.projection import template_reads
from moerules.engine.compile.template_checks import TemplateCheck
from moerules.engine.compile.templates import environment, simple_variable
from moerules.engine.compile.transforms import LookupTable
from moerules.engine.rules.model import Bundle

__all__ = ["SCOPE", "RuleLanguage"]

SCOPE = frozenset({"batch", "event"})
"""The roots a rule's paths start at (inside ``each``, paths are relative to the item)."""


class RuleLanguage:
    """A bundle's tables, template environment and vetted expressions and templates."""

    def __init__(self, bundle: Bundle) -> None:
        self.tables: dict[str, LookupTable] = {
            name: LookupTable(
                {(k.casefold() if t.ignore_case else k): v for k, v in t.values.items()},
                t.default,
                t.ignore_case,
            )
            for name, t in bundle.tables.items()
        }
        self.env = environment({n: t.values for n, t in self.tables.items()})
        self._templates = TemplateCheck(self.env, self.tables)
        self._compiled: dict[tuple[str, frozenset[str]], Any] = {}

    def expression(self, text: str) -> dict[str, Any]:
        """The parsed tree of JMESPath ``text`` (ExpressionError when it is not sound)."""
        return parse(text)

    def template(self, source: str, roots: frozenset[str] | None) -> Any:
        """``source`` compiled for rendering, with the variables of ``roots`` (``item``
        inside ``each``) and ``tables`` (TemplateError when it is not sound)."""
        names = (roots if roots is not None else frozenset({"item"})) | {"tables"}
        key = (source, names)
        if key not in self._compiled:
            self._compiled[key] = self._templates.compile(source, names)
        return self._compiled[key]

    def template_path(self, source: str) -> tuple[str, ...] | None:
        """``{{ event.data.event_name }}`` as the path it reads; None for anything richer."""
        return simple_variable(self.env, source)

    def template_reads(self, source: str, roots: frozenset[str]) -> list[tuple[str | int, ...]]:
        """The paths from ``roots`` that template ``source`` reads."""
        if "{" not in source:
            return []
        return template_reads(self.env.parse(source), roots)
