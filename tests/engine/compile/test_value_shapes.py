"""A value of the wrong shape is dead-lettered with the reason, never sent converted: an
identity or event name that is an object or list is not sent as its JSON text, and
``products: [1, null, "x"]`` does not become ``[{}, {}, {}]``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Result


def run(
    cli: Callable[..., Result],
    tmp_path: Path,
    *batches: dict[str, Any],
    bundle: str = "mparticle-to-moengage",
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Dry-run the batches: (the elements sent, the dead letters, the report)."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in batches))
    dead, report = tmp_path / "dead.jsonl", tmp_path / "report.json"
    dead.unlink(missing_ok=True)
    result = cli(
        "run",
        bundle,
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(dead),
        "--report",
        str(report),
    )
    assert result.exit_code == 0, result.stderr
    elements = [
        e for line in result.stdout.splitlines() for e in json.loads(line)["body"]["elements"]
    ]
    letters = [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []
    return elements, letters, json.loads(report.read_text())


def purchase(products: Any) -> dict[str, Any]:
    return {
        "event_type": "commerce_event",
        "data": {
            "product_action": {"action": "purchase", "transaction_id": "T1", "products": products}
        },
    }


def custom(name: Any, **attributes: Any) -> dict[str, Any]:
    return {
        "event_type": "custom_event",
        "data": {"event_name": name, "custom_attributes": attributes},
    }


@pytest.mark.parametrize(
    ("identity", "detail"),
    [
        ({"a": 1}, 'got an object: {"a":1}'),
        (["c1"], 'got a list: ["c1"]'),
    ],
)
def test_an_identity_that_is_not_text_dead_letters_the_record(
    cli: Callable[..., Result], tmp_path: Path, identity: Any, detail: str
) -> None:
    bad = {"user_identities": {"customer_id": identity}, "events": [custom("Opened")]}
    good = {"user_identities": {"customer_id": 42}, "events": [custom("Opened")]}
    elements, letters, report = run(cli, tmp_path, bad, good)
    assert [e["customer_id"] for e in elements] == ["42"]  # a number is text enough
    (letter,) = letters
    assert letter["reason"] == "identity customer_id: expected text or a number"
    assert letter["error"] == detail
    assert letter["record"] == bad  # the whole batch: its events and user update with it
    assert report["dead_lettered"] == {"identity customer_id: expected text or a number": 1}


@pytest.mark.parametrize("name", [{"a": 1}, ["Opened"]])
def test_an_event_name_that_is_not_text_dead_letters_the_event(
    cli: Callable[..., Result], tmp_path: Path, name: Any
) -> None:
    promotion = {
        "event_type": "commerce_event",
        "data": {"promotion_action": {"action": name, "promotions": []}},
    }
    batch = {
        "user_identities": {"customer_id": "c1"},
        "events": [custom(name), promotion, custom("Opened")],
    }
    elements, letters, _ = run(cli, tmp_path, batch)
    assert [a["action"] for e in elements for a in e["actions"]] == ["Opened"]
    assert [(d["reason"], d["event_index"]) for d in letters] == [
        ("event name: expected text", 0),  # a template: writes text
        ("event name: expected text or a number", 1),  # a path with transforms
    ]


@pytest.mark.parametrize(
    ("products", "reason", "detail"),
    [
        ([1, None, "x"], "Products[]: expected an object", "got a number: 1"),
        ([{"id": "a"}, None], "Products[]: expected an object", "got null"),
        ([{"id": "a"}, "x"], "Products[]: expected an object", "got a string: 'x'"),
        ("abc", "Products: expected a list", "got a string: 'abc'"),
        ({"id": "a"}, "Products: expected a list", 'got an object: {"id":"a"}'),
    ],
)
def test_list_items_of_the_wrong_shape_dead_letter_the_event(
    cli: Callable[..., Result], tmp_path: Path, products: Any, reason: str, detail: str
) -> None:
    batch = {
        "user_identities": {"customer_id": "c1"},
        "events": [purchase(products), purchase([{"id": 7}]), purchase([]), purchase(None)],
    }
    elements, letters, _ = run(cli, tmp_path, batch)
    sent = [a["attributes"].get("Products") for e in elements for a in e["actions"]]
    assert sent == [[{"Id": "7"}], [], None]
    (letter,) = letters
    assert (letter["reason"], letter["error"], letter["event_index"]) == (reason, detail, 0)


def test_nested_items_are_checked_too(cli: Callable[..., Result], tmp_path: Path) -> None:
    impression = {
        "event_type": "commerce_event",
        "data": {
            "product_impressions": [
                {"product_impression_list": "home", "products": [{"id": "p"}, 5]}
            ]
        },
    }
    _, letters, _ = run(
        cli, tmp_path, {"user_identities": {"customer_id": "c1"}, "events": [impression]}
    )
    assert [(d["reason"], d["error"]) for d in letters] == [
        ("Impressions[].Products[]: expected an object", "got a number: 5")
    ]


@pytest.mark.parametrize("attributes", [[1, 2], "text", 7])
def test_a_spread_of_something_that_is_not_an_object_dead_letters(
    cli: Callable[..., Result], tmp_path: Path, attributes: Any
) -> None:
    event = custom("Opened")
    event["data"]["custom_attributes"] = attributes
    batch = {
        "user_identities": {"customer_id": "c1"},
        "user_attributes": attributes,
        "events": [event, custom("Fine", plan="pro")],
    }
    elements, letters, _ = run(cli, tmp_path, batch)
    assert [a["attributes"] for e in elements for a in e.get("actions", [])] == [{"plan": "pro"}]
    assert sorted(d["reason"] for d in letters) == [
        "spread batch.user_attributes: expected an object",
        "spread event.data.custom_attributes: expected an object",
    ]


@pytest.mark.parametrize("empty", [None, [], "", {}])
def test_empty_spreads_and_lists_copy_nothing(
    cli: Callable[..., Result], tmp_path: Path, empty: Any
) -> None:
    event = custom("Opened")
    event["data"]["custom_attributes"] = empty
    _, letters, _ = run(
        cli,
        tmp_path,
        {"user_identities": {"customer_id": "c1"}, "user_attributes": empty, "events": [event]},
    )
    assert letters == []


def test_explain_shows_the_identity_dead_letter(cli: Callable[..., Result], tmp_path: Path) -> None:
    record = tmp_path / "one.json"
    record.write_bytes(
        orjson.dumps({"user_identities": {"customer_id": {"a": 1}}, "events": [custom("Opened")]})
    )
    result = cli("explain", "mparticle-to-moengage", "--event", str(record))
    assert result.exit_code == 0, result.stderr
    assert (
        "  => dead-lettered: identity customer_id: expected text or a number: got an "
        'object: {"a":1}'
    ) in result.stdout
    assert result.stdout.endswith("requests\n  (none)\n")
