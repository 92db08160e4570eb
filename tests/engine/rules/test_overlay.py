"""`extends:` overlays: merge rules, and errors that point at the overlay's lines."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def run(path: Path, *events: dict[str, object], **ids: str) -> list[dict[str, Any]]:
    compiled = load_bundle(path)
    line = orjson.dumps({"user_identities": ids, "events": list(events)})
    out = io.BytesIO()
    dry_run(compiled, [(1, line)], out)
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_overlay_merges_maps_replaces_lists_and_merges_rules(write: Callable[..., Path]) -> None:
    write("base/bundle.yaml", BASE)
    overlay = write(
        "mine.yaml",
        """
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
        """,
    )
    compiled = load_bundle(overlay)
    model = compiled.model
    assert model.bundle == "mine"
    assert model.destination.settings == {
        "workspace_id": "WS",
        "data_api_key": "K",
        "data_center": "02",
    }
    assert [r.name for r in model.events] == ["custom", "rest", "added"]
    assert model.events[0].when == "event.event_type == 'custom_event'"  # kept from base
    assert compiled.projects == [("Mine", "M1")]  # lists replace whole
    assert model.tables["t1"].values == {"a": "1", "b": "2", "c": "3"}  # maps merge
    (request,) = run(
        overlay, {"event_type": "custom_event", "data": {"event_name": "E"}}, email="a@b.c"
    )
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
    overlay = write(
        "mine.yaml",
        """
        extends: base/bundle.yaml
        events:
          - name: custom
            when: "event.event_type =="
        routing:
          projects:
            - {name: Mine, code: M1}
            - {name: Mine, code: M2}
        """,
    )
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    problems = [str(p) for p in info.value.problems]
    assert any(p.startswith(f"{overlay}:4:11: error: invalid JMESPath") for p in problems)
    assert any(
        p.startswith(f"{overlay}:8:14: error: project 'Mine' is declared twice") for p in problems
    )


def test_extends_shipped_bundle_by_name(write: Callable[..., Path]) -> None:
    overlay = write("o.yaml", "extends: mparticle-to-moengage\nbundle: o\n")
    assert load_bundle(overlay).model.source.connector == "mparticle"


def test_extends_unknown_bundle(write: Callable[..., Path]) -> None:
    overlay = write("o.yaml", "extends: mparticle-to-moengag\n")
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    assert str(info.value) == (
        f"{overlay}:1:10: error: cannot find bundle "
        "'mparticle-to-moengag' to extend (did you mean "
        "'mparticle-to-moengage'?); give a shipped bundle's name or a path"
    )


def test_extends_loop(write: Callable[..., Path]) -> None:
    write("a.yaml", "extends: b.yaml\n")
    b = write("b.yaml", "extends: a.yaml\n")
    with pytest.raises(RuleError) as info:
        load_bundle(b)
    assert "loops back" in str(info.value)


def opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the loader opens, recorded."""

    seen: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, *args: int) -> int:
        seen.append(str(path))
        fd: int = real_open(path, flags, *args)
        return fd

    monkeypatch.setattr(os, "open", spy)
    return seen


@pytest.mark.parametrize(
    "ref", ["/proc/self/status", "/etc/passwd", "../../../etc/passwd", "../outside.yaml"]
)
def test_extends_outside_the_project_is_refused_unread(
    ref: str, write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write("outside.yaml", BASE)
    overlay = write("project/o.yaml", f"extends: {ref}\nbundle: o\n")
    seen = opened_paths(monkeypatch)
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    assert str(info.value) == (
        f"{overlay}:1:10: error: `extends` may name a shipped bundle or a file inside this "
        f"bundle's folder {overlay.parent.resolve()}; {ref!r} is outside it"
    )
    assert seen == [str(overlay)]


def test_a_link_that_leads_out_of_the_project_is_refused(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = write("outside.yaml", BASE)
    overlay = write("project/o.yaml", "extends: base.yaml\n")
    (overlay.parent / "base.yaml").symlink_to(outside)
    seen = opened_paths(monkeypatch)
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    assert "'base.yaml' is outside it" in str(info.value)
    assert seen == [str(overlay)]


def test_extends_within_the_project_folder_tree(write: Callable[..., Path]) -> None:
    # the project folder is the first file's: a base below it may extend a file beside it
    write("project/common.yaml", BASE)
    write("project/bases/acme.yaml", "extends: ../common.yaml\nbundle: acme-base\n")
    overlay = write("project/o.yaml", "extends: bases/acme.yaml\nbundle: o\n")
    assert load_bundle(overlay).model.routing is not None
    # ...but the base alone, loaded as the first file, may not reach above its own folder
    with pytest.raises(RuleError) as info:
        load_bundle(overlay.parent / "bases" / "acme.yaml")
    assert "'../common.yaml' is outside it" in str(info.value)


def test_extends_a_fifo_in_the_project_does_not_wait(write: Callable[..., Path]) -> None:
    overlay = write("project/o.yaml", "extends: pipe.yaml\n")
    os.mkfifo(overlay.parent / "pipe.yaml")
    with pytest.raises(RuleError) as info:
        load_bundle(overlay)
    assert str(info.value) == (
        f"{overlay}:1:10: error: cannot find bundle 'pipe.yaml' to "
        "extend; give a shipped bundle's name or a path"
    )


SECRET = "Sx9-very-secret-key-value"


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ([SECRET], "--set #1:1:1: error: --set takes KEY=VALUE, e.g. destination.data_center=02"),
        (
            ["destination..x=1"],
            "--set #1:1:1: error: --set takes KEY=VALUE, e.g. destination.data_center=02",
        ),
        (
            [f"destination.data_api_key=[{SECRET}"],
            "--set destination.data_api_key:1:27: error: invalid YAML: "
            "while parsing a flow sequence did not find expected ',' or ']'",
        ),
        (
            [f"destination.data_api_key='{SECRET}"],
            "--set destination.data_api_key:1:27: error: invalid YAML: "
            "while scanning a quoted scalar found unexpected end of stream",
        ),
        (
            ["identity.precedence=" + "[" * 50_000],
            "--set identity.precedence:1:63: error: value nests deeper than 64 levels (its KEY's "
            "included); refusing to load it",
        ),
        (
            ["a." * 70 + "b=1"],
            "--set " + ("a." * 40) + "...:1:1: error: KEY has more than 63 parts",
        ),
    ],
)
def test_set_errors(sets: list[str], expected: str) -> None:
    with pytest.raises(RuleError) as info:
        load_bundle("mparticle-to-moengage", sets)
    assert str(info.value) == expected
    assert SECRET not in str(info.value)
