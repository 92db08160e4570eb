"""The benchmark's two reference mappings (compiled bundle, hand-written) agree; no timing here."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from moerules.benchmarks.generate import BASE_MS, batches, commerce_pairs
from moerules.benchmarks.handwritten import map_event
from moerules.benchmarks.mapping import compiled_mapper, load_reference, verify
from moerules.engine.compile.compiler import CompiledBundle

Pair = tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def reference() -> CompiledBundle:
    return load_reference()


def _event(product_action: dict[str, Any] | None, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"timestamp_unixtime_ms": BASE_MS, **data}
    if product_action is not None:
        body["product_action"] = product_action
    return {"event_type": "commerce_event", "data": body}


BATCH = {"device_info": {"platform": "iOS"}, "application_info": {"application_version": "4.2.0"}}
EDGE_CASES: list[Pair] = [
    # string price, int price, missing price, missing quantity, missing category, blank category
    (
        BATCH,
        _event(
            {
                "action": "purchase",
                "transaction_id": "T-1",
                "total_amount": "41.50",
                "tax_amount": 3,
                "products": [
                    {"id": "a", "name": "A", "price": "8.00", "quantity": 2},
                    {"id": "b", "price": 5, "category": ""},
                    {"id": "c", "brand": "Peak", "category": "Outdoor"},
                ],
            },
            currency_code="EUR",
            custom_attributes={"moe_project_name": "Brand A", "channel": None},
        ),
    ),
    # unknown, blank and missing project; no currency; no custom attributes at all
    (
        BATCH,
        _event(
            {"action": "add_to_cart", "products": []},
            custom_attributes={"moe_project_name": "Brand C"},
        ),
    ),
    (
        BATCH,
        _event(
            {"action": "view_detail"},
            custom_attributes={"moe_project_name": "  "},
            currency_code="",
        ),
    ),
    (BATCH, _event({"action": "checkout", "products": [{}]})),
    # no product action, not a commerce event: nothing mapped
    (BATCH, _event(None, custom_attributes={"channel": "app"})),
    (BATCH, {"event_type": "custom_event", "data": {"event_name": "x"}}),
    # no device or application info, no timestamp
    ({}, {"event_type": "commerce_event", "data": {"product_action": {"action": "refund"}}}),
]


def test_edge_cases_map_identically(reference: CompiledBundle) -> None:
    mapped = compiled_mapper(reference)
    for batch, event in EDGE_CASES:
        assert orjson.dumps(mapped(batch, event)) == orjson.dumps(map_event(batch, event))
    first = mapped(*EDGE_CASES[0])
    assert first is not None
    project, action = first
    assert project == "BRANDA01"
    products = action["attributes"]["Products"]
    assert [p.get("Price") for p in products] == [8.0, 5.0, None]
    assert [p["Quantity"] for p in products] == [2, 1, 1]
    assert [p["Category"] for p in products] == ["uncategorised"] * 2 + ["Outdoor"]
    assert action["attributes"]["Currency"] == "eur"
    assert action["current_time"] == BASE_MS // 1000
    assert "channel" not in action["attributes"]
    unknown = mapped(*EDGE_CASES[1])  # an unknown project: portfolio level, attribute removed
    assert unknown is not None and unknown[0] is None
    assert "moe_project_name" not in unknown[1]["attributes"]
    assert mapped(*EDGE_CASES[4]) is None


def test_generated_events_map_identically(reference: CompiledBundle) -> None:
    pairs = commerce_pairs(2_000, seed=7)
    mapped = verify(reference, pairs)  # raises on the first difference
    assert mapped > 1_500  # most generated events are product actions
    outputs = [out for out in map(lambda p: map_event(*p), pairs) if out is not None]
    projects = {project for project, _ in outputs}
    assert projects == {"BRANDA01", "BRANDB01", None}  # routed and fallback both occur
    products = [p for _, a in outputs for p in a["attributes"].get("Products", [])]
    assert any("Price" not in p for p in products)  # missing prices
    assert any(p["Quantity"] == 1 for p in products)
    assert any(p["Category"] == "uncategorised" for p in products)
    assert all(a["attributes"] and a["action"] for _, a in outputs)


def test_generator_is_seeded() -> None:
    assert list(batches(20, seed=3)) == list(batches(20, seed=3))
    assert list(batches(20, seed=3)) != list(batches(20, seed=4))
    assert commerce_pairs(50, seed=3) == commerce_pairs(50, seed=3)


def _malformed(batch: dict[str, Any], event: dict[str, Any]) -> list[Pair]:
    """The same event with objects where strings, numbers or lists should be, and back."""
    out: list[Pair] = []
    for where, value in [
        (("data",), "x"),
        (("data", "product_action", "products"), [1, "a"]),
        (("data", "product_action", "products"), {"a": 1}),
        (("data", "custom_attributes"), ["moe_project_name"]),
        (("data", "custom_attributes"), 5),
        (("data", "product_action", "total_amount"), "abc"),
        (("data", "product_action", "total_amount"), "nan"),
        (("data", "currency_code"), 7),
    ]:
        changed = copy.deepcopy(event)
        node: Any = changed
        for key in where[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[where[-1]] = value
            out.append((batch, changed))
    out.append(({"device_info": "iOS", "application_info": [1]}, event))
    return out


def test_malformed_records_match_the_safe_code(reference: CompiledBundle) -> None:
    """The compiled bundle's fast code hands records it cannot read to its safe code."""
    safe = reference.event.__globals__["_event_safe"]
    checked = 0
    for batch, event in commerce_pairs(200, seed=11):
        for bad_batch, bad_event in _malformed(batch, event):
            try:
                expected: Any = safe(bad_batch, bad_event)
            except Exception as exc:  # the safe code's verdict, e.g. a bad cast
                expected = type(exc)
            try:
                got: Any = reference.event(bad_batch, bad_event)
            except Exception as exc:
                got = type(exc)
            assert orjson.dumps(got, default=str) == orjson.dumps(expected, default=str)
            checked += 1
    assert checked > 1_000
