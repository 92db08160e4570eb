"""Compiled paths and conditions behave exactly like JMESPath."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.expressions import jmespath_truthy, parse
from moerules.engine.compile.values import ValueCompiler
from moerules.engine.errors import RecordError

DOCS: list[Any] = [
    {
        "event": {
            "event_type": "commerce_event",
            "data": {
                "product_action": {"action": "x"},
                "n": 0,
                "e": "",
                "l": [],
                "o": {},
                "f": False,
                "t": True,
                "list": [1, "two"],
                "s": "str",
                "nul": None,
            },
        }
    },
    {"event": {"event_type": "custom_event", "data": "not an object"}},
    {"event": {"event_type": 5, "data": {"list": "abc", "product_action": None}}},
    {"event": [1, 2]},
    {"event": None},
    {},
]

CONDITIONS = [
    "event.event_type == 'commerce_event'",
    "event.event_type != 'commerce_event'",
    "event.event_type == 'commerce_event' && event.data.product_action",
    "event.event_type == 'custom_event' || event.data.n",
    "!event.data.product_action",
    "event.data.n",
    "event.data.e",
    "event.data.l",
    "event.data.o",
    "event.data.f",
    "event.data.t",
    "event.data.nul",
    "event.data.missing",
    "event.data.f == `false`",
    "event.data.nul == null",
    "event.data.t != `true`",
    "contains(['commerce_event', 'custom_event'], event.event_type)",
    "event.data.list[0]",
    "event.data.list[1] == 'two'",
    "event.data.list[-1] == 'two'",
    "event.event_type == `5`",
    "length(event.data.list) > `1`",
    # a part only the interpreter can do, next to parts compiled; run only when needed
    "event.event_type == 'commerce_event' && starts_with(event.data.s, 'st')",
    "event.event_type == 'custom_event' || starts_with(event.data.s, 'st')",
    "starts_with(to_string(event.data.s), 'x') || event.data.t",
    "event.data.t && length(event.data.list) > `1` && event.data.s == 'str'",
    # starts_with/ends_with on a path: a string method; anything else: the interpreter
    "starts_with(event.data.s, 'st')",
    "ends_with(event.data.s, 'tr')",
    "starts_with(event.data.n, 'st')",
    "starts_with(event.data.missing, 'x')",
    "starts_with(to_string(event.data.n), '0')",
    "starts_with(to_string(event.data.nul), 'nu')",
    "event.event_type == 'commerce_event' && (starts_with(to_string(event.data.s), 'x')"
    " || ends_with(to_string(event.data.s), 'r'))",
]

VALUES = [
    "event.event_type",
    "event.data.product_action.action",
    "event.data.list[1]",
    "event.data.list[5]",
    "event.data.s[0]",
    "event.data.list[-1]",
    "event.data",
    "event.data.list[*]",
    "event.missing.deeper",
    # `||` in a value: each alternative compiled, the later ones read only when needed
    "event.data.nul || event.data.s",
    "event.data.n || event.data.s",
    "event.data.e || event.data.l || event.data.o || event.data.f || event.data.t",
    "event.data.missing || event.data.nul",
    "event.data.list[0] || event.data.s",
    "event.data.missing || (event.data.list[?@ == 'two'] | [0])",
    "(event.data.list[?@ == 'two'] | [0]) || event.data.s",
    # `&&` in a value: a guard keeps the interpreter off records it rules out
    "event.data.list[0] && (event.data.list[?@ == 'two'] | [0])",
    "event.data.o[0] && (event.data.list[?@ == 'two'] | [0])",
    "event.data.n && event.data.s",
    "event.data.e && event.data.s",
    "event.data.f && event.data.s",
]


def compile_expr(expr: str, condition: bool, fast: bool = False) -> Any:
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
    values.fast = fast
    with cg.block("def f(event):"):
        cache = PathCache({"event": "event"})
        if condition:
            cg.emit(f"return {values.condition(expr, parse(expr), cache)}")
        else:
            cg.emit(f"return {values.value(expr, parse(expr), cache)}")
    return cg.build("<test>")["f"]


@pytest.mark.parametrize("expr", CONDITIONS)
def test_conditions_match_jmespath(expr: str) -> None:
    fn = compile_expr(expr, condition=True)
    for doc in DOCS:
        try:
            expected = jmespath_truthy(jmespath.search(expr, doc))
        except jmespath.exceptions.JMESPathTypeError:
            with pytest.raises(RecordError, match="failed"):
                fn(doc.get("event"))
            continue
        assert fn(doc.get("event")) is expected, (expr, doc)


@pytest.mark.parametrize("expr", VALUES)
def test_values_match_jmespath(expr: str) -> None:
    fn = compile_expr(expr, condition=False)
    for doc in DOCS:
        assert fn(doc.get("event")) == jmespath.search(expr, doc), (expr, doc)


@pytest.mark.parametrize("expr", [v for v in VALUES if "||" in v])
def test_or_values_match_jmespath_in_fast_mode(expr: str) -> None:
    """Fast mode reads objects with .get: a record of another shape raises AttributeError
    (the generated function then runs its safe twin); every other record matches."""
    fn = compile_expr(expr, condition=False, fast=True)
    matched = 0
    for doc in DOCS:
        try:
            got = fn(doc.get("event"))
        except AttributeError:
            continue
        assert got == jmespath.search(expr, doc), (expr, doc)
        matched += 1
    assert matched >= 2


def test_or_reads_its_alternatives_without_the_interpreter() -> None:
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
    expr = "event.ids.customer_id || event.ids.customerid"
    with cg.block("def f(event):"):
        local = values.value(expr, parse(expr), PathCache({"event": "event"}))
        cg.emit(f"return {local}")
    source = cg.source()
    assert "jp_" not in source
    fn = cg.build("<test>")["f"]
    assert fn({"ids": {"customerid": "c-1"}}) == "c-1"
    assert fn({"ids": {"customer_id": "c-2", "customerid": "c-1"}}) == "c-2"
    assert fn({"ids": {"customer_id": "", "customerid": "c-1"}}) == "c-1"


def test_interpreter_part_of_a_condition_runs_only_when_needed() -> None:
    """starts_with(null, ...) is a type error; behind a false `&&` it is never evaluated, as
    in JMESPath, and the compiled part reads no interpreter."""
    expr = "event.event_type == 'custom_event' && starts_with(event.data.name, 'moe_')"
    fn = compile_expr(expr, condition=True)
    assert fn({"event_type": "commerce_event"}) is False  # no error: never evaluated
    assert fn({"event_type": "custom_event", "data": {"name": "moe_x"}}) is True
    assert fn({"event_type": "custom_event", "data": {"name": "x"}}) is False
    with pytest.raises(RecordError, match="failed"):
        fn({"event_type": "custom_event", "data": {}})


def test_starts_with_compiles_to_a_string_method() -> None:
    expr = (
        "event.event_type == 'custom_event' && (starts_with(to_string(event.data.name), "
        "'moe_') || starts_with(event.data.name, 'MOE_'))"
    )
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
    with cg.block("def f(event):"):
        cg.emit(f"return {values.condition(expr, parse(expr), PathCache({'event': 'event'}))}")
    assert ".startswith('moe_') if type(" in cg.source()
    fn = cg.build("<test>")["f"]
    for name in ["moe_x", "MOE_X", "x", None, 5]:
        doc = {"event_type": "custom_event", "data": {"name": name}}
        try:
            expected = jmespath_truthy(jmespath.search(expr, {"event": doc}))
        except jmespath.exceptions.JMESPathTypeError:
            with pytest.raises(RecordError):
                fn(doc)
            continue
        assert fn(doc) is expected, name


def test_simple_paths_compile_to_subscripts() -> None:
    cg = Codegen()
    values = ValueCompiler(cg)
    with cg.block("def f(event):"):
        cache = PathCache({"event": "event"})
        values.value("event.a.b", parse("event.a.b"), cache)
        values.value("event.a.c", parse("event.a.c"), cache)
    source = cg.source()
    assert "search(" not in source  # no interpreter on the hot path
    assert source.count("'a'") == 1  # the shared prefix is read once
