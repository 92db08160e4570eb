"""String templates: Jinja2 in an immutable sandbox, checked statically before anything runs.

The sandbox already refuses ``''.__class__`` at render time; rule files are refused earlier,
at load, so a hostile template is an error on its line and is never evaluated. Only a small
grammar is allowed: output of variables and attributes, literals, whitelisted filters,
comparisons, ``and``/``or``/``not``, inline ``if``/``else`` and ``{% if %}`` blocks. No method
calls, no underscore attributes, no imports, includes, macros or assignments.

Every template has a bounded cost:

- its nesting is measured on its tokens before Jinja's recursive parser sees it, and the depth
  of its tree before anything walks it (``bounds``);
- whatever can make text or lists grow faster than its input (``*``, ``+``, ``~``, ``replace``,
  ``join``) checks the size of its result before making it, and the output is capped: past
  ``MAX_TEMPLATE_OUTPUT`` the event is dead-lettered ("template output too large");
- Jinja folds constant expressions while it compiles; the operations above are never folded
  (intercepted operators and context filters are not), so compiling cannot run a bomb. The
  constant parts of a template are instead evaluated once at load, within those bounds, and a
  literal repeated by ``*`` must stay tiny: ``{{ 'a' * 100000000 }}`` is an error on its line.

A template writes a value as text the way the ``string`` transform does (null as nothing,
``true``/``false``, ``5.0`` as ``5``), whether it is a single variable compiled to a path read
or rendered by Jinja; an object or a list is not text and dead-letters the event, unless the
template asks for its JSON with ``| string``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from moerules.engine.compile.bounds import (
    MAX_DEPTH,
    MAX_NESTING,
    MAX_TEMPLATE_OUTPUT,
    tree_depth,
)
from moerules.engine.compile.transforms import describe, lookup_key, to_string, wrong_shape
from moerules.engine.errors import RecordError

__all__ = [
    "ALLOWED_FILTERS", "TemplateCheck", "TemplateError", "attribute_chain", "environment",
    "renderer", "simple_variable", "template_text",
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
_SEQUENCES = (str, list, tuple)
TINY_REPEAT = 1_000
"""Items (or characters) a literal repeated by ``*`` may come to: ``'-' * 20`` is fine."""


# -- what a template writes ------------------------------------------------------------------
class _TooLarge(Exception):
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
            raise _TooLarge(len(value))
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
    if isinstance(exc, _TooLarge):
        return RecordError(f"{label}template output too large", str(exc))
    if isinstance(exc, _NotText):
        return wrong_shape(what or "template", "text", exc.value)
    return RecordError("template failed", f"{type(exc).__name__}: {exc}")


def template_text(value: Any, what: str) -> str:
    """What a single-variable template (compiled to a path read) writes for ``value``."""
    try:
        text: str = _text(value)
    except (_TooLarge, _NotText) as exc:
        raise _failure(exc, what) from None
    return text


def renderer(template: Any, what: str, rule: str | None = None) -> Callable[..., str]:
    """A function rendering ``template``; a failure is the record's (RecordError), naming
    ``rule`` (the rule the template belongs to) for its dead letter."""
    def render(**scope: Any) -> str:
        try:
            return str(template.render(**scope))
        except Exception as exc:  # the sandbox's, Jinja's and the bounds' errors
            failure = _failure(exc, what)
            failure.rule = rule
            raise failure from None

    return render


# -- the environment -------------------------------------------------------------------------
def _join(pieces: Iterable[Any]) -> str:
    """Text pieces joined, each written as ``_text`` writes it, within the output bound."""
    out: list[str] = []
    size = 0
    for piece in pieces:
        text = piece if type(piece) is str else str(_text(piece))
        size += len(text)
        if size > MAX_TEMPLATE_OUTPUT:
            raise _TooLarge(size)
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
            raise TemplateError("string formatting with % is not allowed")
        if operator == "*":
            count, seq = (right, left) if _size(left) is not None else (left, right)
            if _size(seq) is not None and isinstance(count, int) and (
                    _size(seq) or 0) * count > MAX_TEMPLATE_OUTPUT:
                raise _TooLarge((_size(seq) or 0) * count)
        if operator == "+" and _size(left) is not None and _size(right) is not None:
            total = (_size(left) or 0) + (_size(right) or 0)
            if total > MAX_TEMPLATE_OUTPUT:
                raise _TooLarge(total)
        return self.binop_table[operator](left, right)


@pass_context  # a context filter is never folded at compile time
def _replace(context: Context, value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = str(_text(value)), str(old), str(new)
    found = text.count(old) if count is None or count < 0 else min(text.count(old), count)
    size = len(text) + found * (len(new) - len(old))
    if size > MAX_TEMPLATE_OUTPUT:
        raise _TooLarge(size)
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
        raise _TooLarge(size)
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
        return apply(*args[:at], _text(args[at]), *args[at + 1:], **kwargs)

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


# -- checks ----------------------------------------------------------------------------------
_OPENERS = frozenset({"lparen", "lbracket", "lbrace"})
_CLOSERS = frozenset({"rparen", "rbracket", "rbrace"})
_PREFIX = frozenset({"sub", "add"})


def _check_nesting(env: ImmutableSandboxedEnvironment, source: str) -> None:
    """Refuse a template nested deeper than MAX_NESTING, measured on its tokens (Jinja's lexer
    is a loop; its parser recurses): brackets and ``{% if %}`` blocks nest until they close;
    a run of prefix operators (``not not -x``) and the ``if``s of one expression (a chain of
    ``a if b else c if d else ...``) nest too."""
    brackets = blocks = run = ifs = 0
    first_in_block = False
    try:
        for token in env.lexer.tokenize(source):
            kind, value = token.type, token.value
            if kind in _OPENERS:
                brackets += 1
            elif kind in _CLOSERS:
                brackets -= 1
            elif kind in ("variable_begin", "block_begin"):
                ifs, first_in_block = 0, kind == "block_begin"
                continue
            elif kind == "name" and first_in_block:
                blocks += 1 if value == "if" else -1 if value == "endif" else 0
            elif kind == "name" and value == "if":
                ifs += 1
            run = run + 1 if kind in _PREFIX or (kind == "name" and value == "not") else 0
            first_in_block = False
            if brackets + blocks + run + ifs > MAX_NESTING:
                raise TemplateError(f"template nests more than {MAX_NESTING} levels deep "
                                    "(brackets, if-blocks and operators)")
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template does not parse: {exc.message}") from None


def _children(node: nodes.Node) -> Iterable[nodes.Node]:
    return node.iter_child_nodes()


def _check(node: nodes.Node, names: frozenset[str], env: ImmutableSandboxedEnvironment,
           tables: frozenset[str]) -> None:
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
    if isinstance(node, nodes.Filter):
        if node.name not in ALLOWED_FILTERS:
            raise TemplateError(f"filter {node.name!r} is not allowed; allowed: "
                                f"{', '.join(sorted(ALLOWED_FILTERS))}")
        _check_call(node, "filter", env.filters[node.name])
        if node.name == "lookup":
            table = node.args[0] if node.args else None
            if not (isinstance(table, nodes.Const) and table.value in tables):
                shown = repr(table.value) if isinstance(table, nodes.Const) else "a computed name"
                raise TemplateError(f"lookup: unknown table {shown}; tables: "
                                    f"{', '.join(sorted(tables)) or '(none)'}")
    if isinstance(node, nodes.Test):
        if node.name not in _ALLOWED_TESTS:
            raise TemplateError(f"test {node.name!r} is not allowed")
        _check_call(node, "test", env.tests[node.name])  # type: ignore[arg-type]
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in names:
        raise TemplateError(
            f"unknown variable {node.name!r}; templates can use: {', '.join(sorted(names))}"
        )
    if isinstance(node, nodes.Mul):
        _check_repeat(node)
    if isinstance(node, nodes.Mod) and _literal_sequence(node.left):
        raise TemplateError("string formatting with % is not allowed")
    for child in node.iter_child_nodes():
        _check(child, names, env, tables)


def _check_call(node: nodes.Filter | nodes.Test, kind: str, func: Callable[..., Any]) -> None:
    """The arguments fit the filter's (or test's) signature: a mistake here would fail every
    record, so it is one at load."""
    if node.dyn_args is not None or node.dyn_kwargs is not None:
        raise TemplateError(f"{kind} {node.name!r}: *args and **kwargs are not allowed")
    params = list(inspect.signature(func).parameters.values())
    if _PassArg.from_obj(func) is not None:
        params = params[1:]  # the context or environment Jinja passes itself
    signature = inspect.Signature(params)
    try:
        signature.bind(None, *node.args, **{str(k.key): k.value for k in node.kwargs})
    except TypeError as exc:
        raise TemplateError(f"{kind} {node.name!r}: {exc}") from None


def _literal_sequence(node: nodes.Node) -> bool:
    return isinstance(node, nodes.List | nodes.Tuple) or (
        isinstance(node, nodes.Const) and isinstance(node.value, str))


def _check_repeat(node: nodes.Mul) -> None:
    """A literal repeated by ``*`` must come to a tiny, constant size."""
    for seq, count in ((node.left, node.right), (node.right, node.left)):
        if not _literal_sequence(seq):
            continue
        size = len(seq.value) if isinstance(seq, nodes.Const) else len(
            seq.items)  # type: ignore[attr-defined]
        if not (isinstance(count, nodes.Const) and type(count.value) is int):
            raise TemplateError("`*` repeats a literal only by a whole-number constant")
        if size * count.value > TINY_REPEAT:
            raise TemplateError(f"`*` repeats a literal to {size * count.value:,} characters or "
                                f"items; the limit is {TINY_REPEAT:,}")


def _constant_parts(node: nodes.Node) -> Iterable[nodes.Expr]:
    """The largest parts of the tree that read no variable and compute something."""
    stack = [node]
    while stack:
        current = stack.pop()
        if (isinstance(current, nodes.Expr)
                and not isinstance(current, nodes.Const | nodes.TemplateData)
                and not any(True for _ in current.find_all(nodes.Name))):
            yield current
            continue
        stack.extend(current.iter_child_nodes())


def _check_constants(env: ImmutableSandboxedEnvironment, source: str) -> None:
    """Evaluate each constant part once, within the bounds: one that would make more than
    the output limit fails every record, so it is an error at load. (The parts are taken from
    a tree of their own: compiling one folds what it can in place.)"""
    tree = env.parse(source)
    for part in _constant_parts(tree):
        body = nodes.Template([nodes.Assign(nodes.Name("result", "store"), part)])
        body.set_environment(env)
        body.set_lineno(1)
        try:
            template = env.from_string(body)
            context = template.new_context({})
            for _ in template.root_render_func(context):
                pass
        except _TooLarge as exc:
            raise TemplateError(f"template would make {exc}") from None
        except Exception:  # other failures may lie in a branch never taken
            continue


class TemplateCheck:
    """Parses and vets templates; compiles them once for rendering."""

    def __init__(self, env: ImmutableSandboxedEnvironment,
                 tables: Iterable[str] = ()) -> None:
        self.env = env
        self.tables = frozenset(tables)

    def compile(self, source: str, names: frozenset[str]) -> Any:
        _check_nesting(self.env, source)
        try:
            tree = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template does not parse: {exc.message}") from None
        if tree_depth(tree, _children) > MAX_DEPTH:  # type: ignore[arg-type]
            raise TemplateError(f"template is nested more than {MAX_DEPTH} levels deep "
                                "(operators, filters and attributes applied one to another)")
        _check(tree, names, self.env, self.tables)
        _check_constants(self.env, source)
        try:
            return self.env.from_string(source)
        except Exception as exc:  # folding a constant part failed: it fails every record
            raise TemplateError(f"template always fails: {type(exc).__name__}: {exc}") from None


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
