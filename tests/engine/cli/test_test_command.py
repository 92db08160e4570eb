"""`moerules test`: YAML test cases, pass and fail, with a readable diff."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import MINIMAL_BUNDLE, Result

CASES = """
env: {TEST_KEY: k}
cases:
  - name: custom event is sent by name
    input:
      user_identities: {customer_id: c1}
      events: [{event_type: custom_event, data: {event_name: Opened}}]
    expect:
      requests:
        - url: https://api-01.moengage.com/v1/transition/WS?app_id=WS
          body:
            elements: [{customer_id: c1, actions: [{action: %s}]}]
  - name: no identity is dead-lettered
    input:
      events: [{event_type: custom_event, data: {event_name: Opened}}]
    expect:
      requests: []
      dead_lettered: {no usable identity: 1}
  - name: other types are dropped as unmatched
    input_line: '{"user_identities": {"customer_id": "c1"}, "events": [{"event_type": "x"}]}'
    expect:
      dropped: {no rule matched: 1}
"""


def make(write: Callable[..., Path], name: str) -> Path:
    write("b/bundle.yaml", MINIMAL_BUNDLE)
    return write("b/tests/cases.yaml", CASES % name)


def test_passing_cases(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = make(write, "Opened")
    result = cli("test", str(path.parent.parent))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("3 passed, 0 failed")


def test_failing_case_shows_a_diff(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = make(write, "Closed")
    result = cli("test", str(path))
    assert result.exit_code == 1
    assert f"FAIL {path}:3:5: custom event is sent by name" in result.stdout
    assert (
        'requests[0].body.elements[0].actions[0].action: expected "Closed", got "Opened"'
        in result.stdout
    )
    assert '-              "action": "Closed"' in result.stdout
    assert '+              "action": "Opened"' in result.stdout
    assert "Authorization" not in result.stdout  # the diff shows only what the case names
    assert result.stdout.strip().endswith("2 passed, 1 failed")


def test_shipped_bundle_tests_pass(cli: Callable[..., Result]) -> None:
    result = cli("test", "rules")
    assert result.exit_code == 0, result.stdout + result.stderr
    passed = int(result.stdout.strip().splitlines()[-1].split()[0])
    assert passed >= 1


def test_invalid_test_file(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    write("b/bundle.yaml", MINIMAL_BUNDLE)
    path = write(
        "b/tests/bad.yaml", "cases:\n  - name: x\n    expect: {requets: []}\n    input: {}\n"
    )
    result = cli("test", str(path))
    assert result.exit_code == 1
    assert f"{path}:3:14: error: unknown key 'requets' (did you mean 'requests'?)" in (
        result.stderr
    )


def test_installed_script_test(moerules: Callable[..., object], write: Callable[..., Path]) -> None:
    path = make(write, "Opened")
    result = moerules("test", str(path))
    assert result.returncode == 0, result.stdout  # type: ignore[attr-defined]
    assert "3 passed, 0 failed" in result.stdout  # type: ignore[attr-defined]
