"""String templates: Jinja2 in an immutable sandbox, checked statically before anything runs.

The sandbox already refuses ``''.__class__`` at render time; rule files are refused earlier,
at load, so a hostile template is an error on its line and is never evaluated. Only a small
grammar is allowed: output of variables and attributes, literals, whitelisted filters,
comparisons, ``and``/``or``/``not``, inline ``if``/``else`` and ``{% if %}`` blocks. No method
calls, no underscore attributes, no imports, includes, macros or assignments.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "ALLOWED_FILTERS", "TemplateCheck", "TemplateError", "attribute_chain", "environment",
    "simple_variable",
]


class TemplateError(ValueError):
    """A template that does not parse or uses something outside the allowed grammar."""


ALLOWED_FILTERS = frozenset({
    "lower", "upper", "title", "capitalize", "trim", "default", "d", "replace", "string",
    "int", "float", "round", "length", "join", "first", "last", "truncate", "abs",
    "lookup",
})

_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Getattr, nodes.Getitem,
    nodes.Const, nodes.Filter, nodes.Concat, nodes.Compare, nodes.Operand, nodes.CondExpr,
    nodes.If, nodes.And, nodes.Or, nodes.Not, nodes.List, nodes.Tuple, nodes.Add, nodes.Sub,
    nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Neg, nodes.Pos, nodes.Test,
    nodes.Keyword,
)
_ALLOWED_TESTS = frozenset({"defined", "undefined", "none", "number", "string", "mapping"})


def _check(node: nodes.Node, names: frozenset[str]) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        raise TemplateError(
            f"{type(node).__name__} is not allowed in rule templates "
            "(only output, filters, comparisons and if/else)"
        )
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        raise TemplateError(f"attribute {node.attr!r} is not allowed (names starting with _)")
    if isinstance(node, nodes.Getitem):
        arg = node.arg
        if not isinstance(arg, nodes.Const) or (
            isinstance(arg.value, str) and arg.value.startswith("_")
        ):
            raise TemplateError("only constant subscripts not starting with _ are allowed")
    if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
        raise TemplateError(
            f"filter {node.name!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_FILTERS))}"
        )
    if isinstance(node, nodes.Test) and node.name not in _ALLOWED_TESTS:
        raise TemplateError(f"test {node.name!r} is not allowed")
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in names:
        raise TemplateError(
            f"unknown variable {node.name!r}; templates can use: {', '.join(sorted(names))}"
        )
    for child in node.iter_child_nodes():
        _check(child, names)


def environment(tables: dict[str, Any]) -> ImmutableSandboxedEnvironment:
    """The one sandboxed environment rule templates render in."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters = {k: v for k, v in env.filters.items() if k in ALLOWED_FILTERS}

    def lookup(value: Any, table: str, default: Any = None) -> Any:
        values = tables.get(table, {})
        return values.get(str(value), value if default is None else default)

    env.filters["lookup"] = lookup
    env.globals = {}
    return env


class TemplateCheck:
    """Parses and vets templates; compiles them once for rendering."""

    def __init__(self, env: ImmutableSandboxedEnvironment) -> None:
        self.env = env

    def compile(self, source: str, names: frozenset[str]) -> Any:
        try:
            tree = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template does not parse: {exc.message}") from None
        _check(tree, names)
        return self.env.from_string(source)


def simple_variable(env: ImmutableSandboxedEnvironment, source: str) -> tuple[str, ...] | None:
    """``{{ event.data.event_name }}`` as a path; None for anything richer or constant text."""
    try:
        tree = env.parse(source)
    except TemplateSyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    items = tree.body[0].nodes
    if len(items) != 1:
        return None
    base, names, computed = attribute_chain(items[0])
    if computed or not isinstance(base, nodes.Name):
        return None
    return (base.name, *names)


def attribute_chain(node: nodes.Node) -> tuple[nodes.Node, list[str], list[nodes.Node]]:
    """``a.b['c']`` walked down to its base: (the base node; the constant names from the base
    outwards, stopping before the first computed key; the computed keys' expressions)."""
    names: list[str] = []
    computed: list[nodes.Node] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            names.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            names.append(node.arg.value)
        else:  # what is under a computed key is read whole: the names so far do not count
            names.clear()
            computed.append(node.arg)
        node = node.node
    names.reverse()
    return node, names, computed
