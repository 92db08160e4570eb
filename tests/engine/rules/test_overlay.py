"""`extends:` overlays: merge rules, and errors that point at the overlay's lines."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.errors import RuleError

BASE = """
bundle: base
source: {connector: mparticle}
destination:
  connector: moengage
  settings: {workspace_id: WS, data_api_key: K, data_center: "01"}
identity:
  candidates:
    customer_id: batch.user_identities.customer_id
    email: batch.user_identities.email
  precedence: [customer_id]
events:
  - name: custom
    when: event.event_type == 'custom_event'
    event_name: "{{ event.data.event_name }}"
  - name: screens
    when: event.event_type == 'screen_view'
    event_name: Screen Viewed
  - name: rest
    drop: not mapped
routing:
  from: event.data.custom_attributes.moe_project_name
  projects:
    - {name: Base Project, code: B1}
tables:
  t1: {a: "1", b: "2"}
"""


def run(path: Path, *events: dict[str, object], **ids: str) -> list[dict[str, object]]:
    compiled = load_bundle(path)
    line = orjson.dumps({"user_identities": ids, "events": list(events)})
    out = io.BytesIO()
    dry_run(compiled, [(1, line)], out)
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_overlay_merges_maps_replaces_lists_and_merges_rules(
        write: Callable[..., Path]) -> None:
    write("base/bundle.yaml", BASE)
    overlay = write("mine.yaml", """
        extends: base/bundle.yaml
        bundle: mine
        destination: {settings: {data_center: "02"}}
        identity: {precedence: [customer_id, email]}
        events:
          - {name: custom, event_name: "Custom {{ event.data.event_name }}"}
          - {name: screens, remove: true}
          - {name: added, when: "event.event_type == 'x'", event_name: Added}
        routing:
          projects: [{name: Mine, code: M1}]
        tables: {t1: {c: "3"}}
        """)
    compiled = load_bundle(overlay)
    model = compiled.model
    assert model.bundle == "mine"
    assert model.destination.settings == {"workspace_id": "WS", "data_api_key": "K",
                                          "data_center": "02"}
    assert [r.name for r in model.events] == ["custom", "rest", "added"]
    assert model.events[0].when == "event.event_type == 'custom_event'"  # kept from base
    assert compiled.projects == [("Mine", "M1")]  # lists replace whole
    assert model.tables["t1"].values == {"a": "1", "b": "2", "c": "3"}  # maps merge
    (request,) = run(overlay, {"event_type": "custom_event", "data": {"event_name": "E"}},
                     email="a@b.c")
    assert request["url"].startswith("https://api-02.moengage.com/")
    element = request["body"]["elements"][0]
    assert element["customer_id"] == "a@b.c"
    assert element["actions"][0]["action"] == "Custom E"


def test_null_removes_a_key(write: Callable[..., Path]) -> None:
    write("base/bundle.yaml", BASE)
    overlay = write("mine.yaml", "extends: base/bundle.yaml\nrouting: null\n")
    assert load_bundle(overlay).model.routing is None


def test_errors_in_overlay_point_at_overlay_lines(write: Callable[..., Path]) -> None:
    write("base/bundle.yaml", BASE)
    overlay = write("mine.yaml", """
        extends: base/bundle.yaml
        events:
          - name: custom
            when: "event.event_type =="
        routing:
          projects:
            - {name: Mine, code: M1}
            - {name: Mine, code: M2}
        """)
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    problems = [str(p) for p in info.value.problems]
    assert any(p.startswith(f"{overlay}:4:11: error: invalid JMESPath") for p in problems)
    assert any(p.startswith(f"{overlay}:8:14: error: project 'Mine' is declared twice")
               for p in problems)


def test_extends_shipped_bundle_by_name(write: Callable[..., Path]) -> None:
    overlay = write("o.yaml", "extends: mparticle-to-moengage\nbundle: o\n")
    assert load_bundle(overlay).model.source.connector == "mparticle"


def test_extends_unknown_bundle(write: Callable[..., Path]) -> None:
    overlay = write("o.yaml", "extends: mparticle-to-moengag\n")
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    assert str(info.value) == (f"{overlay}:1:10: error: cannot find bundle "
                               "'mparticle-to-moengag' to extend (did you mean "
                               "'mparticle-to-moengage'?); give a shipped bundle's name or a path")


def test_extends_loop(write: Callable[..., Path]) -> None:
    write("a.yaml", "extends: b.yaml\n")
    b = write("b.yaml", "extends: a.yaml\n")
    with pytest.raises(RuleError) as info:
        load_bundle(b)
    assert "loops back" in str(info.value)
