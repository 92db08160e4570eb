"""Compiled paths and conditions behave exactly like JMESPath."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.expressions import ValueCompiler, jmespath_truthy, parse
from moerules.engine.errors import RecordError

DOCS: list[Any] = [
    {"event": {"event_type": "commerce_event", "data": {"product_action": {"action": "x"},
               "n": 0, "e": "", "l": [], "o": {}, "f": False, "t": True, "list": [1, "two"],
               "s": "str", "nul": None}}},
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
    "event.data.n", "event.data.e", "event.data.l", "event.data.o", "event.data.f",
    "event.data.t", "event.data.nul", "event.data.missing",
    "event.data.f == `false`", "event.data.nul == null", "event.data.t != `true`",
    "contains(['commerce_event', 'custom_event'], event.event_type)",
    "event.data.list[0]", "event.data.list[1] == 'two'", "event.data.list[-1] == 'two'",
    "event.event_type == `5`",
    "length(event.data.list) > `1`",
]

VALUES = [
    "event.event_type", "event.data.product_action.action", "event.data.list[1]",
    "event.data.list[5]", "event.data.s[0]", "event.data.list[-1]", "event.data",
    "event.data.list[*]", "event.missing.deeper",
]


def compile_expr(expr: str, condition: bool) -> Any:
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
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
