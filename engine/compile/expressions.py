"""JMESPath as rules use it: parsed once, checked whole, evaluated by ``jmespath`` when needed.

``parse`` is the one way in: it bounds nesting before the recursive parser sees the text and
refuses what would fail on every record (unknown functions, wrong arities, literal arguments of
the wrong type). The rest reads the parsed tree: ``simple_path`` (``a.b[0]``), ``root_fields``
(what an expression starts at) and ``jmespath_truthy``. ``values`` compiles expressions to
Python; ``JMESPathSearch`` runs any part it leaves to the interpreter.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions
from jmespath.parser import ParsedResult
from moerules.engine.compile.bounds import MAX_DEPTH, MAX_NESTING, excerpt, tree_depth
from moerules.engine.errors import RecordError

__all__ = [
    "ExpressionError",
    "JMESPathSearch",
    "jmespath_truthy",
    "parse",
    "root_fields",
    "simple_path",
]

Path = tuple[str | int, ...]


class ExpressionError(ValueError):
    """A JMESPath expression that does not parse, with the parser's explanation."""


class _Functions(jmespath_functions.Functions):
    """JMESPath's built-in functions; nothing added, so rules cannot call out."""


_OPTIONS = jmespath.Options(custom_functions=_Functions())


def parse(expression: str) -> dict[str, Any]:
    """Parse ``expression`` and return its AST, or raise ExpressionError with the reason.

    Beyond JMESPath's grammar, an expression must nest at most MAX_NESTING levels (measured on
    its text before the recursive parser sees it), its tree must be at most MAX_DEPTH deep, and
    the functions it calls must exist and take the arguments given, as far as can be told
    before any record is read: whatever would fail for every record fails here.
    """
    return _parse(expression)


@functools.lru_cache(maxsize=1024)
def _parse(expression: str) -> dict[str, Any]:
    if _nesting(expression) > MAX_NESTING:
        raise ExpressionError(
            f"JMESPath {excerpt(expression)} nests more than {MAX_NESTING} "
            "levels deep (brackets, projections and operators)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PendingDeprecationWarning)
            parsed: dict[str, Any] = jmespath.compile(expression).parsed  # type: ignore[assignment]
    except PendingDeprecationWarning:  # `text`: JSON or nothing, not JMESPath's old guess
        raise ExpressionError(
            f"invalid JMESPath {excerpt(expression)}: a literal between "
            "backticks must be JSON; write text as 'text'"
        ) from None
    except jmespath_errors.JMESPathError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExpressionError(f"invalid JMESPath {excerpt(expression)}: {reason}") from None
    if _depth(parsed) > MAX_DEPTH:
        raise ExpressionError(
            f"JMESPath {excerpt(expression)} is nested more than {MAX_DEPTH} "
            "levels deep (operators and path steps applied one to another)"
        )
    _check_functions({"type": "root", "children": [parsed]}, expression)
    return parsed


def _children(ast: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in ast.get("children", ()) if isinstance(c, dict)]


_CHAINS = frozenset({"subexpression", "index_expression"})  # children applied one after another


def _depth(ast: dict[str, Any]) -> int:
    """The tree's depth, a chain (``a.b[0][1]``, kept flat by the parser) counting one level
    per step as the compiled code takes them; a loop, stopping past MAX_DEPTH."""

    def steps(node: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
        children = _children(node)
        if node["type"] in _CHAINS:
            return [(child, i + 1) for i, child in enumerate(children)]
        return [(child, 1) for child in children]

    return tree_depth(
        (ast, 0),
        lambda pair: [(child, pair[1] + weight) for child, weight in steps(pair[0])],
        key=lambda pair: pair[1],
    )


_QUOTES = "'\"`"


def _nesting(text: str) -> int:
    """How deep ``text`` nests, by a loop over its characters: open brackets (in a JSON literal
    too, which the lexer hands to a recursive JSON parser), plus every prefix operator,
    projection, flatten and filter so far (each makes the parser recurse once more)."""
    depth = nested = deepest = 0
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char in _QUOTES:  # skip to the closing quote; brackets in a JSON literal count
            inner = inner_deepest = 0
            i += 1
            in_string = False
            while i < end and text[i] != char:
                c = text[i]
                if c == "\\":
                    i += 1
                elif char == "`" and c == '"':
                    in_string = not in_string
                elif char == "`" and not in_string and c in "[{":
                    inner += 1
                    inner_deepest = max(inner_deepest, inner)
                elif char == "`" and not in_string and c in "]}":
                    inner -= 1
                i += 1
            deepest = max(deepest, depth + nested + inner_deepest)
        elif char in "([{":
            depth += 1
            following = text[i + 1 : i + 2]
            if char == "[" and following in ("]", "?"):
                nested += 1  # a flatten or a filter projection
        elif char in ")]}":
            depth -= 1
        elif (
            char == "*"
            or (char == "!" and text[i + 1 : i + 2] != "=")
            or (char == "&" and text[i + 1 : i + 2] != "&" and text[i - 1 : i] != "&")
        ):
            nested += 1  # a projection, a not, an expression reference
        deepest = max(deepest, depth + nested)
        i += 1
    return deepest


_FUNCTIONS_TABLE: dict[str, Any] = jmespath_functions.Functions.FUNCTION_TABLE


def _json_types(value: Any) -> set[str]:
    """The JMESPath types a literal argument has."""
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int | float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, dict):
        return {"object"}
    if isinstance(value, list):
        kinds = {"array"}
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            kinds.add("array-number")
        if all(isinstance(v, str) for v in value):
            kinds.add("array-string")
        return kinds
    return {"null"}


def _check_functions(ast: dict[str, Any], expression: str) -> None:
    """Every function called exists, gets as many arguments as it takes, and each argument
    that is a literal or an ``&expression`` is of a type the function accepts."""
    for child in _children(ast):
        if child["type"] == "expref" and ast["type"] != "function_expression":
            raise ExpressionError(
                f"JMESPath {excerpt(expression)}: an &expression is only a "
                "function's argument (sort_by(list, &name))"
            )
        _check_functions(child, expression)
    if ast["type"] != "function_expression":
        return
    name, args = ast["value"], _children(ast)
    spec = _FUNCTIONS_TABLE.get(name)
    if spec is None:
        from moerules.engine.rules.validation import did_you_mean

        raise ExpressionError(
            f"JMESPath {excerpt(expression)}: unknown function {name}()"
            f"{did_you_mean(name, _FUNCTIONS_TABLE)}; functions: "
            f"{', '.join(sorted(_FUNCTIONS_TABLE))}"
        )
    params = spec["signature"]
    variadic = bool(params) and params[-1].get("variadic", False)
    if len(args) < len(params) or (len(args) > len(params) and not variadic):
        wanted = f"at least {len(params)}" if variadic else str(len(params))
        plural = "" if len(params) == 1 else "s"
        raise ExpressionError(
            f"JMESPath {excerpt(expression)}: {name}() takes {wanted} "
            f"argument{plural}, got {len(args)}"
        )
    for index, arg in enumerate(args):
        accepted = set(params[min(index, len(params) - 1)]["types"])
        if arg["type"] == "expref":
            given = {"expref"}
        elif arg["type"] == "literal":
            given = _json_types(arg["value"])
        elif accepted == {"expref"}:
            given = {"a value"}
        else:
            continue
        if accepted and not accepted & given:
            raise ExpressionError(
                f"JMESPath {excerpt(expression)}: argument {index + 1} of {name}() must be "
                f"{' or '.join(sorted(accepted))}, not {sorted(given)[0]}"
            )


def simple_path(ast: dict[str, Any]) -> Path | None:
    """``a.b[0].c`` as ``('a', 'b', 0, 'c')``; None when the expression is more than a path."""
    kind = ast["type"]
    if kind == "field":
        return (ast["value"],)
    if kind == "subexpression":
        out: Path = ()
        for child in ast["children"]:
            part = simple_path(child)
            if part is None:
                return None
            out += part
        return out
    if kind == "index_expression":  # a[0] or a[0][1]: the left side, then each index
        left_ast, *indexes = ast["children"]
        left = simple_path(left_ast)
        if left is None or any(index["type"] != "index" for index in indexes):
            return None
        return (*left, *(int(index["value"]) for index in indexes))
    return None


_RELATIVE_RIGHT = {
    "subexpression",
    "index_expression",
    "projection",
    "value_projection",
    "filter_projection",
    "flatten",
    "pipe",
}


def root_fields(ast: dict[str, Any]) -> set[str]:
    """The field names an expression reads from its root (to check ``event.``/``batch.``)."""
    kind = ast["type"]
    children = ast.get("children", [])
    if kind == "field":
        return {ast["value"]}
    if kind in _RELATIVE_RIGHT:
        return root_fields(children[0]) if children else set()
    if kind == "expref":  # &name: read from each element the function is given, not the root
        return set()
    if kind == "key_val_pair":
        return root_fields(children[0])
    out: set[str] = set()
    for child in children:
        if isinstance(child, dict):
            out |= root_fields(child)
    return out


def jmespath_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null and empty strings/lists/objects are false; 0 is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


class JMESPathSearch:
    """A compiled JMESPath expression (or one part of it, ``ast``); its runtime type errors
    make the record bad."""

    __slots__ = ("compiled", "expression", "part")

    def __init__(self, expression: str, ast: dict[str, Any] | None = None) -> None:
        self.expression = expression
        self.part = ast is not None
        # a part of a parsed expression runs on the parser's own result type
        self.compiled = (
            jmespath.compile(expression) if ast is None else ParsedResult(expression, ast)  # type: ignore[arg-type]
        )

    def __call__(self, scope: Any) -> Any:
        try:
            return self.compiled.search(scope, _OPTIONS)
        except jmespath_errors.JMESPathError as exc:
            # e.g. length(null): the record lacks what the rule assumes; dead-letter it
            raise RecordError(
                f"expression {self.expression!r} failed", str(exc).splitlines()[0]
            ) from None
