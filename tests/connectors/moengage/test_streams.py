"""The MoEngage Streams source: one Streams payload per line, bad lines refused with reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from moerules.connectors.moengage.streams import MoEngageStreamsSource
from moerules.engine.connector import load_connector
from moerules.engine.errors import RecordError

from tests.conftest import Result

PAYLOAD = {
    "app_name": "App Name",
    "source": "MOENGAGE",
    "moe_request_id": "r-1",
    "events": [
        {
            "event_name": "Notification Received Android",
            "event_code": "NOTIFICATION_RECEIVED_MOE",
            "event_uuid": "u-1",
            "event_time": 1580967474,
            "event_type": "CAMPAIGN_EVENT",
            "event_source": "MOENGAGE",
            "uid": "c-1",
            "push_id": "t",
            "event_attributes": {"campaign_id": "c"},
            "user_attributes": {"moengage_user_id": "m"},
            "device_attributes": {"moengage_device_id": "d"},
        }
    ],
}


def decode(line: bytes) -> object:
    return MoEngageStreamsSource({}).decode(line)


def test_registered_under_its_name() -> None:
    assert load_connector("moengage-streams") is MoEngageStreamsSource


def test_a_payload_decodes_whole() -> None:
    assert decode(orjson.dumps(PAYLOAD) + b"\n") == PAYLOAD


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        (b'{"events": [', "malformed JSON", "unexpected end of data"),
        (b'[{"event_code": "SMS_SENT"}]', "payload is not a JSON object", "got a JSON array"),
        (b'"events"', "payload is not a JSON object", "got a JSON string"),
        (b"null", "payload is not a JSON object", "got a JSON null"),
        (
            b'{"app_name": "A", "source": "MOENGAGE"}',
            "payload has no events",
            "keys here: app_name, source",
        ),
        (b"{}", "payload has no events", "keys here: none"),
        (b'{"events": null}', "payload has no events", "keys here: events"),
        (b'{"events": []}', "payload has no events", "`events` is an empty list"),
        (
            b'{"events": {"event_code": "SMS_SENT"}}',
            "payload.events is not a list",
            "got a JSON object",
        ),
        (b'{"events": 3}', "payload.events is not a list", "got a JSON number"),
    ],
)
def test_what_is_not_a_streams_payload_is_refused_with_its_reason(
    line: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(RecordError) as caught:
        decode(line)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_events_are_checked_one_by_one_by_the_pipeline_not_here() -> None:
    # an event that is not an object is the pipeline's to dead-letter, alone; the line stands
    line = b'{"events": ["SMS_SENT", {"event_code": "SMS_SENT"}]}'
    assert decode(line) == {"events": ["SMS_SENT", {"event_code": "SMS_SENT"}]}


def test_not_projected_until_a_missing_events_list_can_be_told_apart() -> None:
    # A projected decode types `events` as optional: a payload without events would decode to
    # nothing and never be counted. Decoding whole keeps "payload has no events" a dead letter.
    assert MoEngageStreamsSource.projectable is False


def test_unknown_settings_are_reported() -> None:
    assert MoEngageStreamsSource({"batch_size": 10}).check_settings() == [
        ("batch_size", "unknown setting 'batch_size' for source 'moengage-streams'")
    ]


def test_validate_warns_about_a_path_no_streams_payload_has(
    write: Callable[[str, str], Path], cli: Callable[..., Result]
) -> None:
    path = write(
        "b.yaml",
        """
        bundle: t
        source: {connector: moengage-streams}
        destination: {connector: segment, settings: {write_key: k}}
        identity: {candidates: {uid: event.uid}}
        events:
          - name: all
            event_name: "{{ event.event_name }}"
            fields: {messageId: event.event_uid}
        """,
    )
    result = cli("validate", "--strict", str(path))
    assert result.exit_code == 1
    assert (
        f"{path}:8:31: warning: no moengage-streams record has 'event.event_uid': event "
        "has no field 'event_uid' (did you mean 'event_uuid'?)" in result.stderr
    )
