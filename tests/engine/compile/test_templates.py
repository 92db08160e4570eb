"""Templates have a bounded cost: refused at validate when they cannot be bounded, capped at run
time (the event dead-lettered with the reason), and never a traceback, however nested."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moerules.engine.compile.bounds import MAX_TEMPLATE_OUTPUT
from moerules.engine.compile.template_checks import TemplateCheck, TemplateError
from moerules.engine.compile.templates import environment, renderer
from moerules.engine.errors import RecordError

from tests.conftest import MINIMAL_BUNDLE, Result

NAME_AT = (11, 17)  # where MINIMAL_BUNDLE's event_name template stands
NAMES = frozenset({"event", "batch"})


def with_name(template: str) -> str:
    """MINIMAL_BUNDLE with ``template`` as the event name (a YAML double-quoted string)."""
    return MINIMAL_BUNDLE.replace('"{{ event.data.event_name }}"', json.dumps(template))


def validate(cli: Callable[..., Result], write: Callable[..., Path], bundle: str) -> Result:
    path = write("bundle.yaml", bundle)
    result = cli("validate", str(path))
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{{ 'a' * 100000000 }}",
            "`*` repeats a literal to 100,000,000 characters or items; the limit is 1,000",
        ),
        ("{{ [1] * 100000000 }}", "`*` repeats a literal to 100,000,000 characters"),
        ("{{ 100000000 * 'ab' }}", "`*` repeats a literal to 200,000,000 characters"),
        ("{{ 'a' * event.data.n }}", "`*` repeats a literal only by a whole-number constant"),
        (
            "{{ 'ab' * 3 * 100000 }}",
            "template would make 600,000 characters or items; the limit is 65,536",
        ),
        ("{{ ('ab' ~ 'cd') * 100000 }}", "template would make 400,000 characters"),
        ("{{ 'aaaa'" + "|replace('a', 'aaaa')" * 12 + " }}", "template would make"),
        ("{{ '%0999999999d' % 1 }}", "string formatting with % is not allowed"),
    ],
)
def test_templates_that_cannot_be_bounded_are_refused(
    cli: Callable[..., Result], write: Callable[..., Path], template: str, message: str
) -> None:
    result = validate(cli, write, with_name(template))
    assert result.exit_code == 1
    path = result.stderr.split(":", 1)[0]
    assert f"{path}:{NAME_AT[0]}:{NAME_AT[1]}: error: {message}" in result.stderr


def test_tiny_repetition_and_data_sized_work_are_fine(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    result = validate(
        cli,
        write,
        with_name(
            "{{ '-' * 20 }}{{ event.data.event_name * 3 }}{{ event.data.event_name"
            " | replace('a', 'bb') }}"
        ),
    )
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ " + "(" * 50_000 + "event.x" + ")" * 50_000 + " }}", "template nests more than 32"),
        ("{{ " + "[" * 50_000 + "event.x" + "]" * 50_000 + " }}", "template nests more than 32"),
        ("{% if event.x %}" * 5_000 + "x" + "{% endif %}" * 5_000, "template nests more than 32"),
        ("{{ " + "not " * 5_000 + "event.x }}", "template nests more than 32"),
        ("{{ " + "-" * 5_000 + "event.x }}", "template nests more than 32"),
        (
            "{{ " + " if event.a else ".join(["event.x"] * 5_000) + " }}",
            "template nests more than 32",
        ),
        ("{{ " + " + ".join(["event.x"] * 5_000) + " }}", "template is nested more than 64"),
        ("{{ event.x" + " | lower" * 5_000 + " }}", "template is nested more than 64"),
        ("{{ event" + ".a" * 5_000 + " }}", "template is nested more than 64"),
    ],
)
def test_deep_nesting_is_an_error_at_its_line(
    cli: Callable[..., Result], write: Callable[..., Path], template: str, message: str
) -> None:
    result = validate(cli, write, with_name(template))
    assert result.exit_code == 1
    assert f":{NAME_AT[0]}:{NAME_AT[1]}: error: {message}" in result.stderr


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ event.x | truncate(1, 2, 3, 4, 5, 6) }}", "filter 'truncate': too many positional"),
        ("{{ event.x | replace('a') }}", "filter 'replace': missing a required argument"),
        ("{{ event.x | round(precision=1, nope=2) }}", "filter 'round': got an unexpected keyword"),
        ("{{ event.x | lookup('brands') }}", "lookup: unknown table 'brands'; tables: (none)"),
        ("{{ event.x is number(1) }}", "test 'number': too many positional arguments"),
    ],
)
def test_filter_calls_that_would_fail_every_event_are_errors(
    cli: Callable[..., Result], write: Callable[..., Path], template: str, message: str
) -> None:
    result = validate(cli, write, with_name(template))
    assert result.exit_code == 1
    assert f":{NAME_AT[0]}:{NAME_AT[1]}: error: {message}" in result.stderr


# -- at run time -------------------------------------------------------------------------------
def dry_run(
    cli: Callable[..., Result],
    write: Callable[..., Path],
    tmp_path: Path,
    bundle: str,
    events: list[dict[str, Any]],
) -> tuple[list[Any], list[Any], Result]:
    """Dry-run ``events`` (one batch) through ``bundle``: (request bodies, dead letters)."""
    path = write("bundle.yaml", bundle)
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        orjson.dumps({"user_identities": {"customer_id": "c1"}, "events": events}) + b"\n"
    )
    dead = tmp_path / "dead.jsonl"
    result = cli("run", str(path), "--input", str(data), "--dry-run", "--dead-letter", str(dead))
    assert result.exit_code == 0, result.stderr
    bodies = [json.loads(line)["body"] for line in result.stdout.splitlines()]
    letters = [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []
    return bodies, letters, result


def custom(name: Any, **data: Any) -> dict[str, Any]:
    return {"event_type": "custom_event", "data": {"event_name": name, **data}}


def actions(bodies: list[Any]) -> list[Any]:
    return [a["action"] for b in bodies for e in b["elements"] for a in e["actions"]]


@pytest.mark.parametrize(
    ("template", "big", "fine"),
    [
        # compiled to a path read, and rendered by Jinja: the same limit
        ("{{ event.data.event_name }}", "a" * (MAX_TEMPLATE_OUTPUT + 1), "ab"),
        ("{{ event.data.event_name | lower }}", "A" * (MAX_TEMPLATE_OUTPUT + 1), "ab"),
        ("{{ event.data.event_name * event.data.n }}", "a" * 30_000, "abab"),
        (
            "{{ event.data.event_name | replace('a', 'aaaaaaaaaa') | replace('a', 'aaaaaaaaaa') }}",
            "a" * 1_000,
            "a" * 100 + "b",
        ),
        (
            "{{ event.data.event_name ~ event.data.event_name ~ event.data.event_name }}",
            "a" * 30_000,
            "ababab",
        ),
        ("{{ event.data.parts | join(event.data.event_name) }}", "a" * 30_000, "xabyabzabw"),
    ],
)
def test_output_past_the_limit_dead_letters_the_event(
    cli: Callable[..., Result],
    write: Callable[..., Path],
    tmp_path: Path,
    template: str,
    big: str,
    fine: str,
) -> None:
    bodies, letters, _ = dry_run(
        cli,
        write,
        tmp_path,
        with_name(template),
        [custom("ab", n=2, parts=list("xyzw")), custom(big, n=3, parts=list("xyzw"))],
    )
    assert actions(bodies) == [fine]
    (letter,) = letters
    assert letter["reason"] == "event name: template output too large"
    assert letter["error"].endswith("the limit is 65,536")
    assert letter["record"]["data"]["n"] == 3


@pytest.mark.parametrize(
    "template",
    [
        "{{ event.data.event_name }}",
        "{{ event.data.event_name | lower }}",
        "{{ event.data.event_name ~ '!' }}",
        "x-{{ event.data.event_name }}",
    ],
)
@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"a": 1}, 'got an object: {"a":1}'),
        ([1, 2], "got a list: [1,2]"),
    ],
)
def test_an_object_is_never_written_as_text(
    cli: Callable[..., Result],
    write: Callable[..., Path],
    tmp_path: Path,
    template: str,
    value: Any,
    detail: str,
) -> None:
    bodies, letters, _ = dry_run(
        cli, write, tmp_path, with_name(template), [custom(value), custom("Ok")]
    )
    assert len(actions(bodies)) == 1
    (letter,) = letters
    assert (letter["reason"], letter["error"]) == ("event name: expected text", detail)


def test_values_are_written_alike_by_path_reads_and_jinja(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    names: dict[str, list[Any]] = {}
    for template in ("{{ event.data.event_name }}", "{{ event.data.event_name | trim }}"):
        bodies, _, _ = dry_run(
            cli,
            write,
            tmp_path,
            with_name(template),
            [custom(5.0), custom(True), custom(12), custom(2.5)],
        )
        names[template] = actions(bodies)
    assert list(names.values()) == [["5", "true", "12", "2.5"]] * 2


def test_string_filter_writes_json(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    bodies, _, _ = dry_run(
        cli,
        write,
        tmp_path,
        with_name("{{ event.data.event_name | string }}"),
        [custom({"a": [1, None]})],
    )
    assert actions(bodies) == ['{"a":[1,null]}']


# -- properties --------------------------------------------------------------------------------
CHECK = TemplateCheck(environment({"brands": {"a": "A"}}), ["brands"])

_atoms = st.sampled_from(
    [
        "event",
        "batch",
        "event.data",
        "event.data.s",
        "event.data.n",
        "event.data.l",
        "event.data.o",
        "batch.x",
        "nope",
        "'a'",
        '"bb"',
        "''",
        "1",
        "0",
        "-3",
        "2.5",
        "none",
        "true",
        "[1, 2]",
        "['a', 'b']",
        "('a',)",
        "event['data']",
        "event.__class__",
        "event.data.s.upper",
        "range(3)",
    ]
)
_filters = st.sampled_from(
    [
        "lower",
        "upper",
        "title",
        "capitalize",
        "trim",
        "string",
        "int",
        "float",
        "round",
        "length",
        "first",
        "last",
        "abs",
        "default('d')",
        "replace('a', 'aaaa')",
        "replace('a')",
        "join(',')",
        "join('-' * 3)",
        "truncate(3)",
        "lookup('brands')",
        "lookup('nope')",
        "attr('x')",
        "list",
        "format(1)",
    ]
)
_operators = st.sampled_from(
    [
        " + ",
        " - ",
        " * ",
        " / ",
        " // ",
        " % ",
        " ~ ",
        " and ",
        " or ",
        " == ",
        " != ",
        " < ",
        " in ",
        " ** ",
    ]
)


def _expressions() -> st.SearchStrategy[str]:
    return st.recursive(
        _atoms,
        lambda inner: st.one_of(
            st.tuples(inner, _operators, inner).map("".join),
            st.tuples(inner, _filters).map(lambda t: f"{t[0]} | {t[1]}"),
            inner.map(lambda e: f"({e})"),
            inner.map(lambda e: f"not {e}"),
            inner.map(lambda e: f"-{e}"),
            st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} if {t[1]} else {t[2]}"),
            st.tuples(inner, st.integers(1, 200_000)).map(lambda t: f"{t[0]} * {t[1]}"),
            inner.map(lambda e: f"[{e}]"),
            inner.map(lambda e: f"{e}.name"),
        ),
        max_leaves=12,
    )


def _templates() -> st.SearchStrategy[str]:
    piece = st.one_of(
        _expressions().map(lambda e: "{{ " + e + " }}"),
        st.tuples(_expressions(), _expressions()).map(
            lambda t: "{% if " + t[0] + " %}{{ " + t[1] + " }}{% endif %}"
        ),
        st.text(alphabet="ab {}%()[]|~*'\"-#", max_size=12),
    )
    nested = st.tuples(
        st.sampled_from(
            ["(", "[", "not ", "-", "{% if x %}", " | lower", " + x", " if x else x", ".a"]
        ),
        st.integers(1, 20_000),
    ).map(_nest)
    return st.one_of(st.lists(piece, max_size=4).map("".join), nested)


def _nest(spec: tuple[str, int]) -> str:
    part, n = spec
    closer = {"(": ")", "[": "]", "{% if x %}": "{% endif %}"}.get(part)
    if closer is not None:
        inner = part * n + "x" + closer * n
        return inner if part.startswith("{%") else "{{ " + inner + " }}"
    return "{{ " + (part * n + "x" if part in ("not ", "-") else "x" + part * n) + " }}"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
_events = st.fixed_dictionaries(
    {
        "data": st.fixed_dictionaries(
            {
                "s": st.text(max_size=40) | st.just("a" * 40_000),
                "n": st.integers(-5, 100_000),
                "l": st.lists(st.text(max_size=5), max_size=5),
                "o": _json,
            }
        )
    }
)


@settings(
    max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow]
)
@given(source=_templates(), event=_events, batch=_json)
def test_any_template_is_refused_or_renders_within_bounds(
    source: str, event: dict[str, Any], batch: Any
) -> None:
    """Whatever the text: a TemplateError at load, or a renderer that gives text within the
    output limit or a RecordError (dead letter), and nothing else (no RecursionError,
    MemoryError or sandbox error escaping)."""
    try:
        compiled = CHECK.compile(source, NAMES)
    except TemplateError:
        return
    render = renderer(source, compiled, "field")
    try:
        out = render(event=event, batch=batch)
    except RecordError:
        return
    assert isinstance(out, str)
    assert len(out) <= MAX_TEMPLATE_OUTPUT


@settings(
    max_examples=40,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(source=_templates())
def test_validate_answers_any_template_with_lines_not_tracebacks(
    cli: Callable[..., Result], write: Callable[..., Path], source: str
) -> None:
    result = validate(cli, write, with_name(source))
    assert result.exit_code in (0, 1)
    if result.exit_code == 1:
        assert ":11:17: error: " in result.stderr or "invalid YAML" in result.stderr, result.stderr[
            -500:
        ]
