"""Template checks: a rule file's templates vetted before anything runs.

The sandbox already refuses ``''.__class__`` at render time; rule files are refused earlier,
at load, so a hostile template is an error on its line and is never evaluated. Only a small
grammar is allowed: output of variables and attributes, literals, whitelisted filters (called
with arguments their signature takes), comparisons, ``and``/``or``/``not``, inline
``if``/``else`` and ``{% if %}`` blocks. No method calls, no underscore attributes, no imports,
includes, macros or assignments.

And what cannot be bounded is refused: nesting is measured on the tokens before Jinja's
recursive parser sees them, and the depth of the tree before anything walks it (``bounds``);
a literal repeated by ``*`` must stay tiny (``{{ 'a' * 100000000 }}`` is an error on its
line); the constant parts of a template are evaluated once, within the output bound.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from moerules.engine.compile.bounds import MAX_DEPTH, MAX_NESTING, tree_depth
from moerules.engine.compile.templates import ALLOWED_FILTERS, TemplateTooLarge

__all__ = ["TINY_REPEAT", "TemplateCheck", "TemplateError"]


class TemplateError(ValueError):
    """A template that does not parse or uses something outside the allowed grammar."""


_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Filter,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.CondExpr,
    nodes.If,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.List,
    nodes.Tuple,
    nodes.Add,
    nodes.Sub,
    nodes.Mul,
    nodes.Div,
    nodes.FloorDiv,
    nodes.Mod,
    nodes.Neg,
    nodes.Pos,
    nodes.Test,
    nodes.Keyword,
)
_ALLOWED_TESTS = frozenset({"defined", "undefined", "none", "number", "string", "mapping"})
TINY_REPEAT = 1_000
"""Items (or characters) a literal repeated by ``*`` may come to: ``'-' * 20`` is fine."""


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
                raise TemplateError(
                    f"template nests more than {MAX_NESTING} levels deep "
                    "(brackets, if-blocks and operators)"
                )
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template does not parse: {exc.message}") from None


def _children(node: nodes.Node) -> Iterable[nodes.Node]:
    return node.iter_child_nodes()


def _check(
    node: nodes.Node,
    names: frozenset[str],
    env: ImmutableSandboxedEnvironment,
    tables: frozenset[str],
) -> None:
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
            raise TemplateError(
                f"filter {node.name!r} is not allowed; allowed: "
                f"{', '.join(sorted(ALLOWED_FILTERS))}"
            )
        _check_call(node, "filter", env.filters[node.name])
        if node.name == "lookup":
            table = node.args[0] if node.args else None
            if not (isinstance(table, nodes.Const) and table.value in tables):
                shown = repr(table.value) if isinstance(table, nodes.Const) else "a computed name"
                raise TemplateError(
                    f"lookup: unknown table {shown}; tables: "
                    f"{', '.join(sorted(tables)) or '(none)'}"
                )
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
        isinstance(node, nodes.Const) and isinstance(node.value, str)
    )


def _check_repeat(node: nodes.Mul) -> None:
    """A literal repeated by ``*`` must come to a tiny, constant size."""
    for seq, count in ((node.left, node.right), (node.right, node.left)):
        if not _literal_sequence(seq):
            continue
        size = len(seq.value) if isinstance(seq, nodes.Const) else len(seq.items)  # type: ignore[attr-defined]
        if not (isinstance(count, nodes.Const) and type(count.value) is int):
            raise TemplateError("`*` repeats a literal only by a whole-number constant")
        if size * count.value > TINY_REPEAT:
            raise TemplateError(
                f"`*` repeats a literal to {size * count.value:,} characters or "
                f"items; the limit is {TINY_REPEAT:,}"
            )


def _constant_parts(node: nodes.Node) -> Iterable[nodes.Expr]:
    """The largest parts of the tree that read no variable and compute something."""
    stack = [node]
    while stack:
        current = stack.pop()
        if (
            isinstance(current, nodes.Expr)
            and not isinstance(current, nodes.Const | nodes.TemplateData)
            and not any(True for _ in current.find_all(nodes.Name))
        ):
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
        except TemplateTooLarge as exc:
            raise TemplateError(f"template would make {exc}") from None
        except Exception:  # other failures may lie in a branch never taken
            continue


class TemplateCheck:
    """Parses and vets templates; compiles them once for rendering."""

    def __init__(self, env: ImmutableSandboxedEnvironment, tables: Iterable[str] = ()) -> None:
        self.env = env
        self.tables = frozenset(tables)

    def compile(self, source: str, names: frozenset[str]) -> Any:
        _check_nesting(self.env, source)
        try:
            tree = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template does not parse: {exc.message}") from None
        if tree_depth(tree, _children) > MAX_DEPTH:  # type: ignore[arg-type]
            raise TemplateError(
                f"template is nested more than {MAX_DEPTH} levels deep "
                "(operators, filters and attributes applied one to another)"
            )
        _check(tree, names, self.env, self.tables)
        _check_constants(self.env, source)
        try:
            return self.env.from_string(source)
        except Exception as exc:  # folding a constant part failed: it fails every record
            raise TemplateError(f"template always fails: {type(exc).__name__}: {exc}") from None
