"""YAML test cases next to bundles: input payloads and the requests (or drops) they must give.

A test file (``rules/<bundle>/tests/*.yaml``)::

    bundle: ../bundle.yaml          # default: the bundle.yaml of the parent directory
    env: {MOENGAGE_WORKSPACE_ID: WS123}   # ${VARS} the cases see; nothing else leaks in
    set: [identity.precedence=[email]]    # --set overrides for every case
    cases:
      - name: a custom event becomes a MoEngage event
        input: {...one input record...}   # or input_line: 'raw text' for unreadable input
        expect:
          requests: [{url: ..., body: {...}}]   # subset match by default
          match: subset                         # or exact
          dropped: {"not supported by the MoEngage integration": 1}
          dead_lettered: {"no usable identity": 1}
          report: {routing: {Brand A: 1}}       # subset of the run report
          warnings: ["did you mean 'Brand A'"]  # each must be part of some report warning

Subset matching: every key the expectation gives must be in the actual value with a matching
value (recursively); lists must have the same length and match item by item.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.errors import Position, Problem, RuleError
from moerules.engine.rules.loading import LDict, load_yaml, position_of
from moerules.engine.rules.overlay import BUNDLE_FILE
from moerules.engine.rules.validation import validate_document
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CaseResult", "TestFile", "load_test_file", "run_test_file", "subset_mismatch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    requests: list[dict[str, Any]] | None = None
    match: Literal["subset", "exact"] = "subset"
    dropped: dict[str, int] | None = None
    dead_lettered: dict[str, int] | None = None
    report: dict[str, Any] | None = None
    warnings: list[str] | None = None


class Case(_Strict):
    name: str
    input: Any = None
    inputs: list[Any] | None = None
    input_line: str | None = None
    set: list[str] = Field(default_factory=list)
    expect: Expect


class TestFile(_Strict):
    bundle: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    set: list[str] = Field(default_factory=list)
    cases: list[Case]


@dataclass
class CaseResult:
    name: str
    position: Position
    passed: bool
    failures: list[str] = field(default_factory=list)


def load_test_file(path: Path) -> tuple[TestFile, LDict, Path]:
    raw = load_yaml(path)
    model, problems = validate_document(raw, TestFile, str(path))
    if model is None or problems:
        raise RuleError(problems)
    bundle = (path.parent / model.bundle) if model.bundle else path.parent.parent / BUNDLE_FILE
    if not bundle.is_file():
        pos = position_of(raw, ("bundle",)) or raw.pos
        raise RuleError(
            [
                Problem(
                    pos,
                    f"bundle file {bundle} not found; set `bundle:` to "
                    "its path relative to this test file",
                )
            ]
        )
    for i, case in enumerate(model.cases):
        given = [k for k in ("input", "inputs", "input_line") if k in case.model_fields_set]
        if len(given) != 1:
            pos = position_of(raw, ("cases", i)) or raw.pos
            raise RuleError(
                [
                    Problem(
                        pos,
                        f"case {case.name!r}: give exactly one of `input`, "
                        "`inputs` or `input_line`",
                    )
                ]
            )
    return model, raw, bundle


def subset_mismatch(expected: Any, actual: Any, where: str = "") -> str | None:
    """Where ``actual`` fails to contain ``expected``, or None when it does."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where or 'value'}: expected an object, got {_short(actual)}"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}.{key}: missing"
            found = subset_mismatch(value, actual[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{where or 'value'}: expected a list of {len(expected)}, got {_short(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = subset_mismatch(e, a, f"{where}[{i}]")
            if found:
                return found
        return None
    if expected != actual or (
        type(expected) is not type(actual)
        and not (
            isinstance(expected, int | float)
            and isinstance(actual, int | float)
            and not isinstance(expected, bool)
            and not isinstance(actual, bool)
        )
    ):
        return f"{where or 'value'}: expected {_short(expected)}, got {_short(actual)}"
    return None


def _project(actual: Any, expected: Any) -> Any:
    """``actual`` cut down to the keys ``expected`` names (recursively), for a focused diff."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _project(actual[k], v) for k, v in expected.items() if k in actual}
    if isinstance(expected, list) and isinstance(actual, list):
        return [_project(a, e) for a, e in zip(actual, expected, strict=False)] + actual[
            len(expected) :
        ]
    return actual


def _short(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) < 120 else text[:117] + "..."


def _pretty(value: Any) -> list[str]:
    return (
        orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)
        .decode()
        .splitlines()
    )


def _diff(expected: Any, actual: Any) -> str:
    lines = difflib.unified_diff(
        _pretty(expected), _pretty(actual), "expected", "actual", lineterm="", n=3
    )
    return "\n".join(lines)


def run_case(test: TestFile, case: Case, bundle: Path, bundle_text: str | None = None) -> list[str]:
    compiled = load_bundle(bundle, [*test.set, *case.set], env=test.env, text=bundle_text)
    if case.input_line is not None:
        lines = [(1, case.input_line.encode())]
    else:
        records = case.inputs if case.inputs is not None else [case.input]
        lines = [(i, orjson.dumps(r)) for i, r in enumerate(records, 1)]
    out = io.BytesIO()
    report = dry_run(compiled, lines, out)
    requests = [orjson.loads(line) for line in out.getvalue().splitlines()]
    failures: list[str] = []
    expect = case.expect
    if expect.requests is not None:
        if expect.match == "exact":
            if requests != expect.requests:
                failures.append("requests differ:\n" + _diff(expect.requests, requests))
        else:
            problem = subset_mismatch(expect.requests, requests, "requests")
            if problem:
                # Diff only what the expectation mentions, so the mismatch is not buried
                shown = _project(requests, expect.requests)
                failures.append(f"{problem}\n" + _diff(expect.requests, shown))
    summary = report.to_dict()
    for key in ("dropped", "dead_lettered"):
        wanted = getattr(expect, key)
        if wanted is not None and summary[key] != wanted:
            failures.append(f"{key}: expected {_short(wanted)}, got {_short(summary[key])}")
    if expect.report is not None:
        problem = subset_mismatch(expect.report, summary, "report")
        if problem:
            failures.append(problem)
    for text in expect.warnings or []:
        if not any(text in warning for warning in report.warnings):
            failures.append(f"no warning contains {text!r}; warnings: {_short(report.warnings)}")
    if not report.balanced():
        failures.append("report does not balance: some item has no outcome")
    return failures


def run_test_file(path: Path, edited: tuple[Path, str] | None = None) -> list[CaseResult]:
    """Run a test file's cases. ``edited`` is (a bundle file, its unsaved text): the cases
    of a test file for that bundle run against the text instead of the file."""
    test, raw, bundle = load_test_file(path)
    text = edited[1] if edited is not None and bundle.resolve() == edited[0].resolve() else None
    results = []
    for i, case in enumerate(test.cases):
        pos = position_of(raw, ("cases", i)) or raw.pos
        try:
            failures = run_case(test, case, bundle, text)
        except RuleError as exc:
            failures = ["the bundle does not compile:\n" + str(exc)]
        results.append(CaseResult(case.name, pos, not failures, failures))
    return results
