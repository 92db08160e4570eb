"""The checks run once over the whole bundle, before any code is emitted: every problem is
reported once, at its line, including in parts no code would be emitted for."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result

LINE = re.compile(r"^.+?:(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")

BUNDLE = """\
bundle: t
source: {connector: mparticle}
destination: {connector: moengage, settings: {workspace_id: WS, data_api_key: "${KEY}"}}
identity:
  candidates:
    customer_id: batch.user_identities.customer_id
    email: {from: user_identities.email}
  precedence: [customer_id]
events:
%s
routing:
  from: "event.data.["
  projects: %s
tables:
  t: {a: b}
"""

RULES = """\
  - name: one
    when: event.event_type == 'a'
    event_name: "{{ event.data.name }}"
  - name: two
    when: event.event_type == 'b'
    event_name: "{{ event.data.name }}"
    attributes:
      price: {from: "event.data.[", transform: [flaot]}
      products:
        each: event.data.products
        transform: [empty_to_null]
        attributes: {id: {from: id, as: strin}}
  - name: three
    event_name: "{{ event.data.name | lookup('nope') }}"
"""


def problems(
    cli: Callable[..., Result], write: Callable[..., Path], text: str
) -> list[tuple[int, str]]:
    result = cli("validate", str(write("bundle.yaml", text)))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    found = [
        (int(m["line"]), m["msg"]) for line in result.stderr.splitlines() if (m := LINE.match(line))
    ]
    assert result.stderr.strip().endswith(f"{len(found)} problems found in 1 files")
    return found


def test_every_problem_is_reported_once(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    found = problems(cli, write, BUNDLE % (RULES, "[{name: A, code: P1}]"))
    # three rules route events; the routing path is wrong once, and said once
    routing = [msg for line, msg in found if line == 26]
    assert len(routing) == 1 and routing[0].startswith("invalid JMESPath 'event.data.['")
    assert len(found) == len(set(found)), found


def test_problems_the_code_would_never_meet_are_reported(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    found = problems(cli, write, BUNDLE % (RULES, "[]"))
    expected = [
        # a candidate precedence leaves out is checked all the same
        (7, "path 'user_identities.email' starts at 'user_identities'"),
        # a field's path and its transforms: both problems, not the first alone
        (17, "invalid JMESPath 'event.data.['"),
        (17, "unknown transform 'flaot' (did you mean 'float'?)"),
        # a transform on `each` would be ignored
        (20, "products: `each` makes a list of objects; `transform` would never be used"),
        (21, "unknown cast 'strin' (did you mean 'string'?)"),
        (23, "lookup: unknown table 'nope'; tables: t"),
        # no project is declared, so nothing is routed; the path is still checked
        (26, "invalid JMESPath 'event.data.['"),
    ]
    for line, text in expected:
        assert any(at == line and text in msg for at, msg in found), (line, text, found)
    assert len(found) == len(expected), found


def test_a_sound_bundle_compiles_after_its_checks(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    sound = (
        (BUNDLE % ("  - name: one\n    event_name: E\n", "[{name: A, code: P1}]"))
        .replace('"event.data.["', "event.data.custom_attributes.moe_project_name")
        .replace("{from: user_identities.email}", "batch.user_identities.email")
    )
    result = cli("validate", str(write("bundle.yaml", sound)))
    assert result.exit_code == 0, result.stderr
