"""JMESPath in rules: what would fail every record fails `validate` at its line, nesting is
bounded before the parser sees the text, and compiled expressions agree with JMESPath on any
expression and any record (property tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moerules.engine.compile.codegen import Codegen, PathCache
from moerules.engine.compile.expressions import ExpressionError, jmespath_truthy, parse
from moerules.engine.compile.values import ValueCompiler
from moerules.engine.errors import RecordError

from tests.conftest import MINIMAL_BUNDLE, Result

WHEN_AT = (10, 11)  # where MINIMAL_BUNDLE's `when:` stands


def with_when(expression: str) -> str:
    return MINIMAL_BUNDLE.replace("event.event_type == 'custom_event'", json.dumps(expression))


def validate(cli: Callable[..., Result], write: Callable[..., Path], bundle: str) -> Result:
    result = cli("validate", str(write("bundle.yaml", bundle)))
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "lenght(event.event_type) == `3`",
            "unknown function lenght() (did you mean 'length'?); functions: abs, avg, ceil,",
        ),
        ("system('ls')", "unknown function system(); functions: abs,"),
        ("length(event.a, event.b)", "length() takes 1 argument, got 2"),
        ("starts_with(event.a)", "starts_with() takes 2 arguments, got 1"),
        ("merge()", "merge() takes at least 1 argument, got 0"),
        ("length(`5`)", "argument 1 of length() must be array or object or string, not number"),
        ("sort_by(event.a, event.b)", "argument 2 of sort_by() must be expref, not a value"),
        ("abs(&event.a)", "argument 1 of abs() must be number, not expref"),
        ("contains(`[\"a\"]`, abs('x'))", "argument 1 of abs() must be number, not string"),
    ],
)
def test_function_calls_that_fail_every_record_are_errors(
    cli: Callable[..., Result], write: Callable[..., Path], expression: str, message: str
) -> None:
    result = validate(cli, write, with_when(expression))
    assert result.exit_code == 1
    assert f":{WHEN_AT[0]}:{WHEN_AT[1]}: error: JMESPath " in result.stderr
    assert message in result.stderr


def test_valid_function_calls_pass(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    result = validate(
        cli,
        write,
        with_when(
            "length(event.data) > `1` && contains(['a'], event.event_type) && "
            "not_null(event.a, event.b, `1`) && sort_by(event.list, &name)[0].name == 'x' && "
            "merge(event.data, `{}`) && starts_with(event.event_type, 'c')"
        ),
    )
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(" * 50_000 + "event.x" + ")" * 50_000, "nests more than 32 levels deep"),
        ("[" * 50_000 + "event.x" + "]" * 50_000, "nests more than 32 levels deep"),
        ("!" * 50_000 + "event.x", "nests more than 32 levels deep"),
        ("& " * 50_000 + "event.x", "nests more than 32 levels deep"),
        ("event.x" + "[*]" * 50_000, "nests more than 32 levels deep"),
        ("event.x" + "[]" * 50_000, "nests more than 32 levels deep"),
        ("event.x" + "[?a]" * 50_000, "nests more than 32 levels deep"),
        ("abs(" * 50_000 + "event.x" + ")" * 50_000, "nests more than 32 levels deep"),
        ("event.x == `" + "[" * 50_000 + "]" * 50_000 + "`", "nests more than 32 levels deep"),
        (" || ".join(["event.x"] * 50_000), "is nested more than 64 levels deep"),
        (" | ".join(["event.x"] * 50_000), "is nested more than 64 levels deep"),
        ("event.x" + "[0]" * 50_000, "is nested more than 64 levels deep"),
        ("event" + ".x" * 50_000, "is nested more than 64 levels deep"),
    ],
)
def test_deep_nesting_is_an_error_at_its_line(
    cli: Callable[..., Result], write: Callable[..., Path], expression: str, message: str
) -> None:
    result = validate(cli, write, with_when(expression))
    assert result.exit_code == 1
    (line,) = [x for x in result.stderr.splitlines() if ": error: " in x]
    assert f":{WHEN_AT[0]}:{WHEN_AT[1]}: error: JMESPath " in line
    assert message in line
    assert len(line) < 400  # the expression is quoted short, not echoed whole


def test_chained_indexes_compile() -> None:
    assert parse("event.a[0][1]")["children"][1]["type"] == "index_expression"  # a flat chain
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
    with cg.block("def f(event):"):
        local = values.value("event.a[0][1]", parse("event.a[0][1]"), PathCache({"event": "event"}))
        cg.emit(f"return {local}")
    f = cg.build("<test>")["f"]
    assert f({"a": [[1, "x"]]}) == "x"
    assert f({"a": [[1]]}) is None


# -- properties --------------------------------------------------------------------------------
_fields = st.sampled_from(["a", "b", "event_type", "data", "list", "n", '"$q"', "x"])
_literals = st.sampled_from(
    [
        "`1`",
        "`0`",
        "`null`",
        "`true`",
        "`false`",
        "'a'",
        "'commerce'",
        '`"a"`',
        "`[1, 2]`",
        '`{"a": 1}`',
        "`[]`",
        "''",
        "`-1`",
    ]
)
_functions = st.sampled_from(
    [
        "length",
        "contains",
        "abs",
        "to_string",
        "to_number",
        "type",
        "not_null",
        "keys",
        "starts_with",
        "join",
        "lenght",
        "sort",
        "max",
        "reverse",
        "to_array",
        "values",
    ]
)


def _paths() -> st.SearchStrategy[str]:
    step = st.one_of(
        _fields.map(lambda f: "." + f),
        st.integers(-3, 3).map(lambda i: f"[{i}]"),
        st.just("[*]"),
        st.just("[]"),
        st.just(".*"),
    )
    return st.lists(step, max_size=4).map(lambda steps: "event" + "".join(steps))


def _expressions() -> st.SearchStrategy[str]:
    return st.recursive(
        st.one_of(_paths(), _literals, st.just("@")),
        lambda inner: st.one_of(
            st.tuples(
                inner,
                st.sampled_from([" == ", " != ", " < ", " >= ", " && ", " || ", " | "]),
                inner,
            ).map("".join),
            inner.map(lambda e: f"!{e}"),
            inner.map(lambda e: f"({e})"),
            st.tuples(_functions, st.lists(inner, max_size=3)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
            st.tuples(inner, inner).map(lambda t: f"[{t[0]}, {t[1]}]"),
            st.tuples(inner, inner).map(lambda t: f"{{k: {t[0]}, m: {t[1]}}}"),
            st.tuples(_paths(), inner).map(lambda t: f"{t[0]}[?{t[1].replace('event', '@')}]"),
            st.tuples(_paths(), _fields).map(lambda t: f"sort_by({t[0]}, &{t[1]})"),
        ),
        max_leaves=8,
    )


def _garbage() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet="event.[]()!&|*?`'\"{}:,@0123 =<>\\", max_size=40),
        st.tuples(
            st.sampled_from(
                ["(", "[", "!", "&", "[*]", "[]", "[?a]", "abs(", "`[", " || a", "[0]", ".a"]
            ),
            st.integers(1, 30_000),
        ).map(lambda t: "event" + t[0] * t[1] if t[0][0] in "[.|" else t[0] * t[1] + "event"),
    )


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.0, 2.5, -1.5])
    | st.sampled_from(["", "a", "commerce", "$q"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_fields, inner, max_size=4),
    max_leaves=12,
)


def _compiled(expression: str, condition: bool, fast: bool) -> Callable[[Any], Any]:
    """The expression compiled as the compiler does: safe code, or fast code that hands the
    record to the safe code when it cannot read it (as ``BundleCode.function`` does)."""
    ast = parse(expression)
    cg = Codegen()
    cg.namespace["_MISSING"] = (KeyError, TypeError, IndexError)
    values = ValueCompiler(cg)
    for name, mode in (("safe", False), ("fast", True)):
        values.fast = mode
        with cg.block(f"def {name}(event):"):
            cache = PathCache({"event": "event"})
            body = values.condition if condition else values.value
            if mode:
                with cg.block("try:"):
                    cg.emit(f"return {body(expression, ast, cache)}")
                with cg.block("except (AttributeError, ValueError):"):
                    cg.emit("return safe(event)")
            else:
                cg.emit(f"return {body(expression, ast, cache)}")
    namespace = cg.build("<property>")
    return namespace["fast" if fast else "safe"]  # type: ignore[no-any-return]


@settings(
    max_examples=400,
    deadline=timedelta(seconds=5),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(expression="`1` < 'a'", event={}, condition=True, fast=True)
@given(
    expression=st.one_of(_expressions(), _garbage()),
    event=_json,
    condition=st.booleans(),
    fast=st.booleans(),
)
def test_compiled_expressions_agree_with_jmespath(
    expression: str, event: Any, condition: bool, fast: bool
) -> None:
    """Any text is refused with an ExpressionError or compiles; compiled, it gives what
    JMESPath gives on the same record, or a RecordError where JMESPath raises."""
    try:
        parse(expression)
    except ExpressionError:
        return
    compiled = _compiled(expression, condition, fast)
    try:
        expected = jmespath.search(expression, {"event": event})
    except jmespath.exceptions.JMESPathError:
        with pytest.raises(RecordError):
            compiled(event)
        return
    except TypeError:
        # jmespath itself fails on an ordering of unlike types (`1` < 'a'); the compiled code
        # fails alike and the pipeline dead-letters the event ("mapping failed on unexpected
        # data"), tested in tests/engine/cli
        with pytest.raises((RecordError, TypeError)):
            compiled(event)
        return
    got = compiled(event)
    if condition:
        assert got is jmespath_truthy(expected)
    else:
        assert got == expected and type(got) is type(expected)


@settings(
    max_examples=40,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(expression=st.one_of(_expressions(), _garbage()))
def test_validate_answers_any_expression_with_lines_not_tracebacks(
    cli: Callable[..., Result], write: Callable[..., Path], expression: str
) -> None:
    result = validate(cli, write, with_when(expression))
    assert result.exit_code in (0, 1)
    if result.exit_code == 1:
        assert f":{WHEN_AT[0]}:{WHEN_AT[1]}: error: " in result.stderr, result.stderr[-500:]
