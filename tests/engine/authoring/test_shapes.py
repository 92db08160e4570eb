"""Record shapes: the schemas shipped for each source, read as paths that can exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moerules.engine.authoring.shapes import ANY, RecordShape

CONNECTORS = Path(__file__).parents[3] / "connectors"


def _shape(name: str, events_key: str | None) -> RecordShape:
    return RecordShape(json.loads((CONNECTORS / name).read_text()), events_key)


def _has(shape: RecordShape, path: str) -> bool:
    root, *rest = path.split(".")
    nodes = [shape.batch if root == "batch" else shape.event]
    for part in rest:
        nodes = shape.items(nodes) if part == "[]" else shape.child(nodes, part)
        if not nodes:
            return False
    return True


@pytest.mark.parametrize(
    ("path", "exists"),
    [
        ("event.event_code", True),
        ("event.event_time", True),
        ("event.event_attributes.campaign_id", True),  # an open map
        ("event.user_attributes.moengage_user_id", True),
        ("event.event_cdoe", False),
        ("batch.app_name", True),
        ("batch.moe_request_id", True),
        ("batch.app", False),
    ],
)
def test_streams_payload(path: str, exists: bool) -> None:
    assert _has(_shape("moengage/streams.schema.json", "events"), path) is exists


@pytest.mark.parametrize(
    ("path", "exists"),
    [
        ("batch.action", True),
        ("batch.parameters.mixpanel_cohort_name", True),
        ("batch.parameters.page_info.total_pages", True),
        ("batch.parameters.members.[].email", True),
        ("batch.parameters.members.[].$moengage_user_id", True),
        ("batch.parameters.members.[].any_exported_property", True),
        ("batch.parameters.cohort_name", False),
        ("batch.parameters.page_info.pages", False),
    ],
)
def test_mixpanel_cohort_webhook(path: str, exists: bool) -> None:
    assert _has(_shape("mixpanel/cohort-webhook.schema.json", None), path) is exists


@pytest.mark.parametrize(
    ("path", "exists"),
    [
        ("event.user_id", True),
        ("event.some_user_property", True),
        ("batch.in_cohort", True),
        ("batch.cohort_id", True),
        ("batch.incohort", False),
    ],
)
def test_amplitude_cohort_webhook(path: str, exists: bool) -> None:
    assert _has(_shape("amplitude/cohort-webhook.schema.json", "users"), path) is exists


def test_mparticle_batch_amended_to_the_current_reference() -> None:
    """The published schema predates ccpa, mobile_number and customerid; the shipped copy
    follows the current JSON reference (partner-apis.md §6)."""
    shape = _shape("mparticle/batch.schema.json", "events")
    for path in (
        "batch.user_identities.mobile_number",
        "batch.user_identities.customerid",
        "batch.consent_state.ccpa",
        "batch.mpid",
        "event.data.product_action.products",
        "event.data.new.identity_type",
        "event.data.user_attribute_name",
    ):
        assert _has(shape, path), path
    gdpr = shape.child(shape.child([shape.batch], "consent_state"), "gdpr")
    assert shape.child(shape.values(gdpr), "consented")
    assert not _has(shape, "batch.user_identities.customer")
    assert shape.child([ANY], "anything") == [ANY]


def test_every_installed_source_declares_its_record_schema() -> None:
    """A source brings the shape of its records, so `validate` can check the paths rules read
    (the Streams and cohort-webhook schemas wait in their connector folders)."""
    from collections.abc import Mapping

    from moerules.engine.connector import Source, connector_names, load_connector

    for name in connector_names():
        cls = load_connector(name)
        if cls is None or not issubclass(cls, Source):
            continue
        schema = cls.record_schema
        assert isinstance(schema, Mapping), (
            f"source {name!r} declares no record_schema: ship its records' JSON Schema in its "
            "connector folder and set record_schema = packaged_schema(__package__, '<file>')"
        )
        shape = RecordShape(schema, cls.events_key, name)
        assert shape.names([shape.batch]), f"source {name!r}: its schema names no field"
