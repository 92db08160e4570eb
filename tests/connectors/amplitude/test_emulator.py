"""Amplitude HTTP V2 emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import AmplitudeEmulator, Fault

KEY = "amp-key-123"
EVENT = {"user_id": "user@x.com", "device_id": "C8F9-device", "event_type": "watch_tutorial",
         "time": 1396381378123, "event_properties": {"source": "notification"},
         "insert_id": "5f0adeff-1"}


@pytest.fixture(scope="module")
def emu() -> AmplitudeEmulator:
    return AmplitudeEmulator(KEY)


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5.0) as c:
        yield c


def upload(client: httpx.Client, events: list[Any], path: str = "/2/httpapi",
           **extra: Any) -> httpx.Response:
    return client.post(path, json={"api_key": KEY, "events": events, **extra})


def test_accepts_events(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    before = int(time.time() * 1000)
    payload = orjson.dumps({"api_key": KEY, "events": [EVENT, EVENT]})
    response = client.post("/2/httpapi", content=payload,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200
    assert body["events_ingested"] == 2
    assert body["payload_size_bytes"] == len(payload)
    assert before <= body["server_upload_time"] <= int(time.time() * 1000)
    assert emu.records() == [EVENT, EVENT]


def test_batch_endpoint(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    response = upload(client, [EVENT], path="/batch")
    assert response.status_code == 200
    assert emu.records("/batch") == [EVENT]


def test_requires_json_content_type(client: httpx.Client) -> None:
    response = client.post("/2/httpapi", content=orjson.dumps({"api_key": KEY, "events": [EVENT]}),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert response.json() == {"code": 400,
                               "error": "Invalid request: Content-Type must be application/json"}


def test_invalid_api_key(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    response = client.post("/2/httpapi", json={"api_key": "nope", "events": [EVENT]})
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid API key: nope"}
    assert emu.records() == []


@pytest.mark.parametrize(("payload", "field"), [({"events": [EVENT]}, "api_key"),
                                                ({"api_key": KEY}, "events"),
                                                ({"api_key": KEY, "events": []}, "events")])
def test_missing_request_fields(client: httpx.Client, payload: dict[str, Any], field: str) -> None:
    response = client.post("/2/httpapi", json=payload)
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Request missing required field",
                               "missing_field": field}


def test_invalid_json(client: httpx.Client) -> None:
    response = client.post("/2/httpapi", content=b"[1,",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid JSON request body"}


def test_event_count_limit(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    small = {"user_id": "user1", "event_type": "e"}
    assert upload(client, [small] * 2000).status_code == 200
    response = upload(client, [small] * 2001)
    assert response.status_code == 413
    assert response.json() == {"code": 413, "error": "Payload too large"}
    assert len(emu.records()) == 2000


def test_payload_size_limit(client: httpx.Client) -> None:
    big = dict(EVENT, event_properties={"blob": "x" * 1_000_000})
    response = upload(client, [big])
    assert response.status_code == 413
    assert response.json() == {"code": 413, "error": "Payload too large"}


def test_per_event_problems_reject_the_whole_request(client: httpx.Client,
                                                     emu: AmplitudeEmulator) -> None:
    events = [
        EVENT,
        {"user_id": "user-2"},  # no event_type
        {"event_type": "e"},  # no user_id nor device_id
        dict(EVENT, user_id="abc"),  # too short
        dict(EVENT, time="2024-01-01T00:00:00Z"),
        dict(EVENT, time=1.5e12),
        dict(EVENT, device_id="null"),
        dict(EVENT, event_properties=[1]),
    ]
    response = upload(client, events)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Some events are missing required fields",
        "events_with_missing_fields": {"event_type": [1], "user_id": [2]},
        "events_with_invalid_fields": {"time": [4, 5], "device_id": [6],
                                       "event_properties": [7]},
        "events_with_invalid_id_lengths": {"user_id": [3]},
    }
    assert emu.records() == []
    assert [r.status for r in emu.received] == [400]


def test_short_ids_only(client: httpx.Client) -> None:
    response = upload(client, [EVENT, {"device_id": "d1", "event_type": "e"}])
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid id length for user_id or device_id",
                               "events_with_invalid_id_lengths": {"device_id": [1]}}


def test_min_id_length_option(client: httpx.Client) -> None:
    events = [{"user_id": "u1", "event_type": "e"}]
    assert upload(client, events).status_code == 400
    assert upload(client, events, options={"min_id_length": 1}).status_code == 200
    bad = upload(client, events, options={"min_id_length": 0})
    assert bad.status_code == 400
    assert bad.json() == {"code": 400,
                          "error": "Invalid options: min_id_length must be a positive integer"}


def test_injected_429_lists_throttled_users(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    emu.faults.push("429_bare")
    response = upload(client, [EVENT, dict(EVENT, user_id="other-user", device_id=None)])
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert response.json() == {
        "code": 429, "error": "Too many requests for some devices and users",
        "eps_threshold": 30, "throttled_devices": {"C8F9-device": 1},
        "throttled_users": {"user@x.com": 1, "other-user": 1}, "throttled_events": [0, 1]}
    assert emu.received == []


def test_record_fault_names_the_failing_events(client: httpx.Client,
                                               emu: AmplitudeEmulator) -> None:
    emu.faults.push(Fault("record_400", indices=(0, 2), field="time"))
    response = upload(client, [EVENT, EVENT, EVENT])
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid field values on some events",
                               "events_with_invalid_fields": {"time": [0, 2]}}
    assert emu.records() == []
    assert upload(client, [EVENT]).status_code == 200
