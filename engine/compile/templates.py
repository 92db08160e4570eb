"""String templates: Jinja2 in an immutable sandbox, with every step's cost bounded.

The grammar rule files may use is checked before anything runs (``template_checks``); this is
where checked templates render. Whatever can make text or lists grow faster than its input
(``*``, ``+``, ``~``, ``replace``, ``join``) checks the size of its result before making it,
and the output is capped: past ``MAX_TEMPLATE_OUTPUT`` the event is dead-lettered ("template
output too large"). Jinja folds constant expressions while it compiles; those operations are
never folded (intercepted operators and context filters are not), so compiling cannot run a
bomb.

A template writes a value as text the way the ``string`` transform does (null as nothing,
``true``/``false``, ``5.0`` as ``5``), whether it is a single variable compiled to a path read
or rendered by Jinja; an object or a list is not text and dead-letters the event, unless the
template asks for its JSON with ``| string``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from moerules.engine.compile.bounds import MAX_TEMPLATE_OUTPUT
from moerules.engine.compile.conversions import describe, lookup_key, to_string, wrong_shape
from moerules.engine.errors import RecordError

__all__ = [
    "ALLOWED_FILTERS",
    "TemplateRenderer",
    "TemplateTooLarge",
    "attribute_chain",
    "environment",
    "renderer",
    "simple_variable",
    "template_text",
]


ALLOWED_FILTERS = frozenset(
    {
        "lower",
        "upper",
        "title",
        "capitalize",
        "trim",
        "default",
        "d",
        "replace",
        "string",
        "int",
        "float",
        "round",
        "length",
        "join",
        "first",
        "last",
        "truncate",
        "abs",
        "lookup",
    }
)

_SEQUENCES = (str, list, tuple)


# -- what a template writes ------------------------------------------------------------------
class TemplateTooLarge(Exception):
    """A template would make more than MAX_TEMPLATE_OUTPUT characters or items."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size:,} characters or items; the limit is {MAX_TEMPLATE_OUTPUT:,}")


class _NotText(Exception):
    """A template was asked to write an object or a list as text."""

    def __init__(self, value: Any) -> None:
        super().__init__(describe(value))
        self.value = value


def _text(value: Any) -> Any:
    """``value`` as a template writes it; _NotText for an object or a list."""
    if type(value) is str:
        if len(value) > MAX_TEMPLATE_OUTPUT:
            raise TemplateTooLarge(len(value))
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return to_string(value, "")
    if isinstance(value, dict | list | tuple):
        raise _NotText(value)
    return value  # an undefined value: StrictUndefined refuses to be written


def _failure(exc: Exception, what: str) -> RecordError:
    """The dead-letter reason for a template that failed on a record."""
    label = f"{what}: " if what else ""
    if isinstance(exc, TemplateTooLarge):
        return RecordError(f"{label}template output too large", str(exc))
    if isinstance(exc, _NotText):
        return wrong_shape(what or "template", "text", exc.value)
    return RecordError("template failed", f"{type(exc).__name__}: {exc}")


def template_text(value: Any, what: str) -> str:
    """What a single-variable template (compiled to a path read) writes for ``value``."""
    try:
        text: str = _text(value)
    except (TemplateTooLarge, _NotText) as exc:
        raise _failure(exc, what) from None
    return text


class TemplateRenderer:
    """Renders one compiled template (``source``) for field ``what``; a failure is the
    record's (RecordError), naming ``rule`` (the rule the template belongs to) for its dead
    letter."""

    __slots__ = ("rule", "source", "template", "what")

    def __init__(self, source: str, template: Any, what: str, rule: str | None) -> None:
        self.source, self.template, self.what, self.rule = source, template, what, rule

    def __call__(self, **scope: Any) -> str:
        try:
            return str(self.template.render(**scope))
        except Exception as exc:  # the sandbox's, Jinja's and the bounds' errors
            failure = _failure(exc, self.what)
            failure.rule = self.rule
            raise failure from None


def renderer(source: str, template: Any, what: str, rule: str | None = None) -> TemplateRenderer:
    """A function rendering ``template`` (compiled from ``source``) for field ``what`` of
    ``rule``."""
    return TemplateRenderer(source, template, what, rule)


# -- the environment -------------------------------------------------------------------------
def _join(pieces: Iterable[Any]) -> str:
    """Text pieces joined, each written as ``_text`` writes it, within the output bound."""
    out: list[str] = []
    size = 0
    for piece in pieces:
        text = piece if type(piece) is str else str(_text(piece))
        size += len(text)
        if size > MAX_TEMPLATE_OUTPUT:
            raise TemplateTooLarge(size)
        out.append(text)
    return "".join(out)


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, _SEQUENCES) else None


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``a ~ b`` joined by the environment's bounded ``concat``
    (Jinja's own join is neither bounded nor interceptable)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _RuleTemplates(ImmutableSandboxedEnvironment):
    """The sandbox, with every operation that can grow text or lists bounded."""

    code_generator_class = _BoundedCodeGenerator
    # intercepted: checked at render, and never folded while compiling
    intercepted_binops = frozenset({"*", "+", "%"})
    concat = staticmethod(_join)  # the output, and `~`

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            raise TypeError("string formatting with % is not allowed")
        if operator == "*":
            count, seq = (right, left) if _size(left) is not None else (left, right)
            if (
                _size(seq) is not None
                and isinstance(count, int)
                and (_size(seq) or 0) * count > MAX_TEMPLATE_OUTPUT
            ):
                raise TemplateTooLarge((_size(seq) or 0) * count)
        if operator == "+" and _size(left) is not None and _size(right) is not None:
            total = (_size(left) or 0) + (_size(right) or 0)
            if total > MAX_TEMPLATE_OUTPUT:
                raise TemplateTooLarge(total)
        return self.binop_table[operator](left, right)


@pass_context  # a context filter is never folded at compile time
def _replace(context: Context, value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = str(_text(value)), str(old), str(new)
    found = text.count(old) if count is None or count < 0 else min(text.count(old), count)
    size = len(text) + found * (len(new) - len(old))
    if size > MAX_TEMPLATE_OUTPUT:
        raise TemplateTooLarge(size)
    return text.replace(old, new, -1 if count is None else count)


@pass_context
def _join_filter(context: Context, value: Any, separator: Any = "") -> str:
    if isinstance(value, str | dict):
        value = list(value)
    if not isinstance(value, list | tuple):
        raise TypeError(f"join needs a list, not {type(value).__name__}")
    separator = str(separator)
    size = len(separator) * max(len(value) - 1, 0)
    if size > MAX_TEMPLATE_OUTPUT:
        raise TemplateTooLarge(size)
    return _join(p for i, item in enumerate(value) for p in ((separator, item) if i else (item,)))


def _string(value: Any) -> str:
    """``| string`` converts as the ``string`` transform does: an object or list as JSON."""
    return "" if value is None else str(to_string(value, ""))


_TEXT_FILTERS = ("lower", "upper", "title", "capitalize", "trim", "truncate")


def _on_text(apply: Callable[..., Any]) -> Callable[..., Any]:
    """A filter of text whose input is first written as a template writes it (Jinja's own
    would take ``str()`` of an object: its Python repr)."""
    at = 0 if _PassArg.from_obj(apply) is None else 1  # after what Jinja passes first

    @functools.wraps(apply)  # its signature (checked at load) and how Jinja calls it
    def on_text(*args: Any, **kwargs: Any) -> Any:
        return apply(*args[:at], _text(args[at]), *args[at + 1 :], **kwargs)

    return on_text


def environment(tables: dict[str, Any]) -> ImmutableSandboxedEnvironment:
    """The one sandboxed environment rule templates render in."""
    env = _RuleTemplates(undefined=StrictUndefined, autoescape=False, finalize=_text)
    env.filters = {k: v for k, v in env.filters.items() if k in ALLOWED_FILTERS}
    env.filters.update({name: _on_text(env.filters[name]) for name in _TEXT_FILTERS})

    def lookup(value: Any, table: str, default: Any = None) -> Any:
        values = tables.get(table, {})
        return values.get(lookup_key(value), value if default is None else default)

    env.filters.update(lookup=lookup, replace=_replace, join=_join_filter, string=_string)
    env.globals = {}
    return env


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
