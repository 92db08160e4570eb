"""Reading values and testing conditions: JMESPath compiled to Python source where possible.

Most rule expressions are field paths (``event.data.product_action.total_amount``) and simple
conditions (``event.event_type == 'commerce_event' && event.data.product_action``). Those are
translated into plain subscripts and comparisons with JMESPath's semantics (a missing field is
null; truthiness treats ``0`` as true and empty containers as false). Anything richer runs
through ``jmespath``'s compiled expression, which is still parsed once, at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.expressions import JMESPathSearch, jmespath_truthy, simple_path

__all__ = ["ValueCompiler"]

Path = tuple[str | int, ...]
_EMPTY: Mapping[str, Any] = MappingProxyType({})  # read-only: generated code shares it
_VIEW = "\0dict"  # PathCache key prefix of dict views (no path starts with a NUL)


class ValueCompiler:
    """Emits code that computes expressions into locals of the function being generated."""

    def __init__(self, cg: Codegen) -> None:
        self.cg = cg
        self.truthy = cg.const(jmespath_truthy, "truthy")
        self.empty = cg.const(_EMPTY, "EMPTY")
        # Fast mode: a field of an object is read with .get on ``parent or EMPTY``; a parent
        # that is neither empty nor an object (a string, number or list where the rule expects
        # an object) raises AttributeError, and the caller must then run the same function
        # compiled in safe mode (the default), which reads every field with a guarded
        # subscript. See sections.BundleCode.function.
        self.fast = False
        # locals the caller guarantees hold a dict (the pipeline checks records): no view
        self.known_dicts: frozenset[str] = frozenset()

    # -- paths ---------------------------------------------------------------------------
    def path(self, path: Path, cache: PathCache) -> str:
        """A local holding the value at ``path`` (first element names a root), None if absent."""
        hit = cache.get(path)
        if hit is not None:
            return hit
        if len(path) == 1:
            root = path[0]
            if isinstance(root, str) and root in cache.roots:
                return cache.roots[root]
        parent = self.path(path[:-1], cache) if len(path) > 1 else None
        if parent is None:  # a relative path: the root object itself is the parent
            parent = cache.roots["@"]
        local = self.cg.name("v")
        key = path[-1]
        if self.fast and isinstance(key, str):
            # dict.get: a missing key costs what a present one does (a KeyError raised and
            # caught costs ten times more), as in hand-written code
            self.cg.emit(f"{local} = {self.dict_view(parent, cache)}.get({self.cg.literal(key)})")
            cache.put(path, local)
            return local
        with self.cg.block("try:"):
            self.cg.emit(f"{local} = {parent}[{self.cg.literal(key)}]")
        with self.cg.block("except _MISSING:"):
            self.cg.emit(f"{local} = None")
        if isinstance(key, int):
            # Python's negative index and subscripting a string with an int differ from JMESPath
            self.cg.emit(f"if type({parent}) is not list: {local} = None")
        cache.put(path, local)
        return local

    def dict_view(self, local: str, cache: PathCache) -> str:
        """Fast mode: a local that is ``local``, or an empty mapping when ``local`` is falsy.

        A non-empty value that is not an object passes through (see ``fast``).
        """
        if local in self.known_dicts:
            return local
        key = (_VIEW, local)
        hit = cache.get(key)
        if hit is not None:
            return hit
        view = self.cg.name("d")
        self.cg.emit(f"{view} = {local} or {self.empty}")
        cache.put(key, view)
        return view

    def assume_truthy(self, ast: dict[str, Any], cache: PathCache) -> None:
        """``cache`` is inside ``if <ast>:`` (fast mode): a path the condition requires to be
        truthy is its own dict view (``v or EMPTY`` is ``v``)."""
        if not self.fast:
            return
        if ast["type"] == "and_expression":
            for child in ast["children"]:
                self.assume_truthy(child, cache)
            return
        path = simple_path(ast)
        local = cache.get(path) if path is not None else None
        if local is not None:
            cache.put((_VIEW, local), local)

    def value(
        self, expression: str, ast: dict[str, Any], cache: PathCache, part: bool = False
    ) -> str:
        """A local holding the expression's value (``part``: ``ast`` is a part of it)."""
        path = simple_path(ast)
        if path is not None and (path[0] in cache.roots or "@" in cache.roots):
            return self.path(path, cache)
        if ast["type"] in ("or_expression", "and_expression"):
            return self._or_and(expression, ast, cache)
        return self._fallback(expression, cache, ast if part else None)

    def _or_and(self, expression: str, ast: dict[str, Any], cache: PathCache) -> str:
        """``a || b``: a when JMESPath calls it true, else b; ``a && b``: a when it is false,
        else b. b is computed only when needed, in a branch whose reads stay there. Spellings
        of one field (``x.customer_id || x.customerid``) then cost a read each, and a guard
        (``x[0] && <an expression only the interpreter can do>``) keeps the interpreter off
        records the guard rules out."""
        left, right = ast["children"]
        out = self.cg.name("o")
        self.cg.emit(f"{out} = {self.value(expression, left, cache, part=True)}")
        # jmespath_truthy inline, as in _bool
        truthy = f"(True if {out} else ({out} == 0 and {out} is not False))"
        test = f"not {truthy}" if ast["type"] == "or_expression" else truthy
        with self.cg.block(f"if {test}:"):
            self.cg.emit(f"{out} = {self.value(expression, right, cache.child(), part=True)}")
        return out

    def _fallback(
        self, expression: str, cache: PathCache, ast: dict[str, Any] | None = None
    ) -> str:
        compiled = self.cg.const(JMESPathSearch(expression, ast), "jp")
        local = self.cg.name("x")
        if "@" in cache.roots:
            scope = cache.roots["@"]
        else:
            scope = "{" + ", ".join(f"{k!r}: {v}" for k, v in cache.roots.items()) + "}"
        self.cg.emit(f"{local} = {compiled}({scope})")
        return local

    # -- conditions ----------------------------------------------------------------------
    def condition(self, expression: str, ast: dict[str, Any], cache: PathCache) -> str:
        """Python source of a boolean for ``expression`` in a condition position."""
        translated = self._bool(ast, cache, expression)
        if translated is not None:
            return translated
        return f"{self.truthy}({self._fallback(expression, cache)})"

    def _search_truthy(self, expression: str, ast: dict[str, Any], cache: PathCache) -> str:
        """An inline call of the interpreter on a part of ``expression``, as a boolean: in a
        condition it runs only when Python's ``and``/``or`` gets to it."""
        compiled = self.cg.const(JMESPathSearch(expression, ast), "jp")
        if "@" in cache.roots:
            scope = cache.roots["@"]
        else:
            scope = "{" + ", ".join(f"{k!r}: {v}" for k, v in cache.roots.items()) + "}"
        return f"{self.truthy}({compiled}({scope}))"

    def _operand(self, ast: dict[str, Any], cache: PathCache) -> tuple[str, Any] | None:
        """(source, literal-or-sentinel) for a comparison operand we can translate."""
        if ast["type"] == "literal":
            return self.cg.literal(ast["value"]), ast["value"]
        path = simple_path(ast)
        if path is not None and (path[0] in cache.roots or "@" in cache.roots):
            return self.path(path, cache), _NOT_LITERAL
        return None

    def _bool(
        self, ast: dict[str, Any], cache: PathCache, expression: str | None = None
    ) -> str | None:
        kind = ast["type"]
        children = ast.get("children", [])
        if kind == "and_expression" or kind == "or_expression":
            # `a && b` is true when both are, `a || b` when either is (JMESPath's values,
            # Python's short-circuit): a part only the interpreter can do runs only when
            # the other part does not settle it
            lhs = self._bool(children[0], cache, expression)
            rhs = self._bool(children[1], cache, expression)
            if lhs is None or rhs is None:
                if expression is None or (lhs is None and rhs is None):
                    return None  # the whole condition goes to the interpreter, once
                lhs = lhs or self._search_truthy(expression, children[0], cache)
                rhs = rhs or self._search_truthy(expression, children[1], cache)
            op = "and" if kind == "and_expression" else "or"
            return f"({lhs} {op} {rhs})"
        if kind == "not_expression":
            inner = self._bool(children[0], cache, expression)
            return None if inner is None else f"(not {inner})"
        if kind == "comparator" and ast["value"] in ("eq", "ne"):
            left = self._operand(children[0], cache)
            right = self._operand(children[1], cache)
            if left is None or right is None:
                return None
            literal = right[1] if right[1] is not _NOT_LITERAL else left[1]
            other = left[0] if right[1] is not _NOT_LITERAL else right[0]
            if literal is _NOT_LITERAL or not _exact_comparable(literal):
                return None
            if literal is None or isinstance(literal, bool):
                op = "is" if ast["value"] == "eq" else "is not"
                return f"({other} {op} {literal!r})"
            op = "==" if ast["value"] == "eq" else "!="
            return f"({other} {op} {self.cg.literal(literal)})"
        if kind == "function_expression" and ast["value"] == "contains" and len(children) == 2:
            haystack, needle = children
            strings: list[Any] | None = None
            if haystack["type"] == "literal" and isinstance(haystack["value"], list):
                strings = haystack["value"]  # contains(`["a", "b"]`, x)
            elif haystack["type"] == "multi_select_list" and "@" not in cache.roots:
                # contains(['a', 'b'], x): a list of raw strings, built against the scope
                # object (never null here), so it is the list of those strings
                strings = [
                    c.get("value") if c["type"] == "literal" else None for c in haystack["children"]
                ]
            if strings is not None and all(isinstance(v, str) for v in strings):
                operand = self._operand(needle, cache)
                if operand is None or operand[1] is not _NOT_LITERAL:
                    return None
                values = self.cg.const(frozenset(strings), "set")
                return f"(type({operand[0]}) is str and {operand[0]} in {values})"
            return None
        if (
            kind == "function_expression"
            and ast["value"] in ("starts_with", "ends_with")
            and len(children) == 2
            and expression is not None
        ):
            return self._affix(expression, ast, cache)
        path = simple_path(ast)
        if path is not None and (path[0] in cache.roots or "@" in cache.roots):
            v = self.path(path, cache)
            # jmespath_truthy inline (no call per record): Python's truth, except that numbers
            # are all true (0 == 0 and 0.0 == 0, but False == 0 too). Always a bool.
            return f"(True if {v} else ({v} == 0 and {v} is not False))"
        return None

    def _affix(self, expression: str, ast: dict[str, Any], cache: PathCache) -> str | None:
        """``starts_with(p, 'x')`` (or ``ends_with``, or with ``to_string(p)``): a string
        method when p holds a string; anything else goes to the interpreter, which gives
        JMESPath's answer or its type error."""
        subject, affix = ast["children"]
        if affix["type"] != "literal" or not isinstance(affix["value"], str):
            return None
        if (
            subject["type"] == "function_expression"
            and subject["value"] == "to_string"
            and len(subject["children"]) == 1
        ):
            subject = subject["children"][0]  # to_string of a string is the string
        path = simple_path(subject)
        if path is None or not (path[0] in cache.roots or "@" in cache.roots):
            return None
        v = self.path(path, cache)
        method = "startswith" if ast["value"] == "starts_with" else "endswith"
        other = self._search_truthy(expression, ast, cache)
        return f"({v}.{method}({self.cg.literal(affix['value'])}) if type({v}) is str else {other})"


_NOT_LITERAL = object()


def _exact_comparable(value: Any) -> bool:
    # Strings, null and booleans compare in Python exactly as in JMESPath; numbers do not
    # (True == 1 in Python), so numeric comparisons stay with jmespath.
    return value is None or isinstance(value, str | bool)
