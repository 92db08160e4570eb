"""Property tests: whatever a rule file or a ``--set`` value holds, loading ends in a bundle or
in ``file:line:col`` errors, never in a traceback, a crash or a secret echoed.

Bounded for CI: a fixed number of examples each, derandomized (the same examples every run,
so a failure reproduces), no per-example deadline (CI machines vary).
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moerules.engine.api import load_bundle
from moerules.engine.errors import RuleError
from moerules.engine.rules.loading import load_value, load_yaml

from tests.conftest import MINIMAL_BUNDLE

PROBLEM = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): error: \S.*$", re.DOTALL)
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# YAML's own punctuation, weighted in, so the text is garbage of the interesting kind
YAML_CHARS = st.sampled_from([*"[]{}:,-?&*!|>'\"%@`#\n\t ", "<<", "---", "...", "${"])
TEXT = st.lists(st.one_of(YAML_CHARS, st.text(max_size=8)), max_size=60).map("".join)


def nested(depth: int) -> st.SearchStrategy[str]:
    """Flow collections nested up to ``depth``, some closed, some not."""
    leaf = st.sampled_from(["x", "1", "'q'", "null", "*a", "&a v", "1e9999", "9" * 5000, ""])
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.lists(inner, max_size=3).map(
                lambda xs: "{" + ", ".join(f"k{i}: {x}" for i, x in enumerate(xs)) + "}"
            ),
            inner.map(lambda x: "[" + x),  # unclosed
        ),
        max_leaves=depth,
    )


def assert_positioned(exc: RuleError, path: str) -> None:
    assert exc.problems, "a RuleError without problems"
    for problem in exc.problems:
        match = PROBLEM.match(str(problem))
        assert match, str(problem)
        assert match["path"] == path or match["path"].startswith("--set")
        assert int(match["line"]) >= 1 and int(match["col"]) >= 1


@BOUNDED
@given(TEXT)
def test_any_text_loads_or_is_a_positioned_error(text: str) -> None:
    try:
        load_yaml("b.yaml", text)
    except RuleError as exc:
        assert_positioned(exc, "b.yaml")


@BOUNDED
@given(st.integers(min_value=0, max_value=300), st.sampled_from("[{-"), nested(40))
def test_deep_and_nested_documents(depth: int, opener: str, tail: str) -> None:
    prefix = {
        "[": "[" * depth,
        "{": "{a: " * depth,
        "-": "".join(" " * i + "-\n" for i in range(depth)),
    }[opener]
    try:
        load_yaml("b.yaml", "bundle: x\nsource: " + prefix + tail + "\n")
    except RuleError as exc:
        assert_positioned(exc, "b.yaml")


SETTINGS = [
    "workspace_id",
    "data_api_key",
    "data_center",
    "endpoint",
    "mode",
    "max_request_bytes",
    "requests_per_second",
    "requests_per_minute",
    "colour",
]


@BOUNDED
@given(st.sampled_from(SETTINGS), st.one_of(TEXT, nested(10)))
def test_any_setting_value_in_a_file(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: str
) -> None:
    folder = tmp_path_factory.mktemp("b")
    path = folder / "bundle.yaml"
    text = MINIMAL_BUNDLE.lstrip("\n").replace(
        "settings: {workspace_id: WS,", f"settings: {{{key}: {value}, workspace_id: WS,"
    )
    path.write_text(text, encoding="utf-8")
    try:
        load_bundle(path, env={"TEST_KEY": "a-test-key"})
    except RuleError as exc:
        assert_positioned(exc, str(path))


KEYS = st.lists(
    st.sampled_from(
        [
            "destination",
            "source",
            "settings",
            "identity",
            "events",
            "routing",
            "0",
            "x",
            "",
            *SETTINGS,
        ]
    ),
    min_size=0,
    max_size=6,
)


@settings(BOUNDED, max_examples=80)
@given(KEYS, st.one_of(TEXT, nested(30)))
def test_any_set_value(minimal: Path, parts: list[str], value: str) -> None:
    try:
        load_bundle(minimal, [".".join(parts) + "=" + value], env={"TEST_KEY": "a-test-key"})
    except RuleError as exc:
        assert_positioned(exc, str(minimal))


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("minimal") / "bundle.yaml"
    path.write_text(MINIMAL_BUNDLE.lstrip("\n"), encoding="utf-8")
    return path


@settings(BOUNDED, max_examples=60)
@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + "[]{}:,'\"&*!#|>-", min_size=0, max_size=30
    )
)
def test_set_errors_never_echo_a_secret(minimal: Path, noise: str) -> None:
    secret = "Sx9" + "".join(sorted(set(string.ascii_letters))) + "key"
    for value in (noise + secret, secret + noise, f"[{secret}", f"'{secret}", f"{{{secret}:"):
        try:
            load_bundle(minimal, [f"destination.data_api_key={value}"])
        except RuleError as exc:
            assert_positioned(exc, str(minimal))
            assert secret not in str(exc)


@BOUNDED
@given(st.one_of(TEXT, nested(30)), st.integers(min_value=1, max_value=64))
def test_set_values_alone(value: str, depth: int) -> None:
    try:
        load_value("--set k", value, depth)
    except RuleError as exc:
        assert_positioned(exc, "--set k")
