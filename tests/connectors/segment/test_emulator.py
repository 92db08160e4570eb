"""Segment HTTP Tracking API emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import SegmentEmulator, serve

KEY = "seg-write-key"
TRACK = {"userId": "019mr8mf4r", "event": "Song Played", "properties": {"name": "x"}}


@pytest.fixture(scope="module")
def emu() -> SegmentEmulator:
    return SegmentEmulator(KEY)


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5.0, auth=(KEY, "")) as c:
        yield c


def err(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


def test_track_with_basic_auth(client: httpx.Client, emu: SegmentEmulator) -> None:
    response = client.post("/v1/track", json=TRACK)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert emu.records() == [dict(TRACK, type="track")]


def test_write_key_in_body(url: str, emu: SegmentEmulator) -> None:
    with httpx.Client(base_url=url) as c:
        response = c.post("/v1/identify", json={"writeKey": KEY, "anonymousId": "a1",
                                                "traits": {"email": "a@b.com"}})
    assert response.status_code == 200
    assert emu.records() == [{"anonymousId": "a1", "traits": {"email": "a@b.com"},
                              "type": "identify"}]


@pytest.mark.parametrize("auth", [("wrong", ""), (KEY, "secret"), None])
def test_bad_credentials(url: str, emu: SegmentEmulator, auth: tuple[str, str] | None) -> None:
    with httpx.Client(base_url=url, auth=auth) as c:
        response = c.post("/v1/track", json=TRACK)
    assert response.status_code == 401
    assert response.json() == err("invalid_write_key", "invalid write key")
    assert emu.records() == []


@pytest.mark.parametrize(("call", "payload"), [
    ("page", {"userId": "u1", "name": "Home"}),
    ("screen", {"anonymousId": "a1", "name": "Home"}),
    ("group", {"userId": "u1", "groupId": "g1", "traits": {}}),
    ("alias", {"userId": "u1", "previousId": "a1"}),
])
def test_other_calls(client: httpx.Client, emu: SegmentEmulator, call: str,
                     payload: dict[str, Any]) -> None:
    assert client.post(f"/v1/{call}", json=payload).status_code == 200
    assert emu.records() == [dict(payload, type=call)]


@pytest.mark.parametrize(("call", "payload", "expected"), [
    ("track", {"event": "x"}, err("no_user_anon_id",
                                  "message 0 has neither userId nor anonymousId")),
    ("track", {"userId": " ", "event": "x"},
     err("no_user_anon_id", "message 0 has neither userId nor anonymousId")),
    ("track", {"userId": "u1"}, err("missing_event", "message 0 (track) needs event")),
    ("group", {"userId": "u1"}, err("missing_groupId", "message 0 (group) needs groupId")),
    ("alias", {"userId": "u1"}, err("missing_previousId", "message 0 (alias) needs previousId")),
])
def test_message_validation(client: httpx.Client, call: str, payload: dict[str, Any],
                            expected: dict[str, Any]) -> None:
    response = client.post(f"/v1/{call}", json=payload)
    assert response.status_code == 400
    assert response.json() == expected


def test_single_call_limit_is_32_kb(client: httpx.Client) -> None:
    base = orjson.dumps(dict(TRACK, properties={"pad": ""}))
    at_limit = orjson.dumps(dict(TRACK, properties={"pad": "x" * (32 * 1024 - len(base))}))
    assert len(at_limit) == 32 * 1024
    headers = {"Content-Type": "application/json"}
    assert client.post("/v1/track", content=at_limit, headers=headers).status_code == 200
    over = client.post("/v1/track", content=at_limit[:-3] + b'x"}}', headers=headers)
    assert over.status_code == 400
    assert over.json() == err("max_request_size_exceeded", "request body exceeds 32768 bytes")


def test_batch_merges_shared_context(client: httpx.Client, emu: SegmentEmulator) -> None:
    payload = {"batch": [dict(TRACK, type="track", context={"ip": "1.2.3.4"}),
                         {"type": "identify", "userId": "u2", "traits": {"a": 1}}],
               "context": {"device": {"type": "phone"}, "ip": "0.0.0.0"},
               "integrations": {"All": False}}
    response = client.post("/v1/batch", json=payload)
    assert response.status_code == 200
    assert emu.records() == [
        dict(TRACK, type="track", context={"device": {"type": "phone"}, "ip": "1.2.3.4"},
             integrations={"All": False}),
        {"type": "identify", "userId": "u2", "traits": {"a": 1},
         "context": {"device": {"type": "phone"}, "ip": "0.0.0.0"},
         "integrations": {"All": False}},
    ]


def test_batch_limits(client: httpx.Client) -> None:
    item = dict(TRACK, type="track", properties={"pad": "x" * 20_000})
    assert client.post("/v1/batch", json={"batch": [item] * 24}).status_code == 200  # ~480 KB
    too_big = client.post("/v1/batch", json={"batch": [item] * 26})
    assert too_big.status_code == 400
    assert too_big.json() == err("max_request_size_exceeded", "request body exceeds 512000 bytes")
    huge_item = dict(TRACK, type="track", properties={"pad": "x" * 33_000})
    response = client.post("/v1/batch", json={"batch": [TRACK | {"type": "track"}, huge_item]})
    assert response.status_code == 400
    assert response.json() == err("max_message_size_exceeded", "batch[1] exceeds 32768 bytes")


def test_batch_item_needs_a_type_and_an_id(client: httpx.Client) -> None:
    no_type = client.post("/v1/batch", json={"batch": [TRACK]})
    assert no_type.status_code == 400
    assert no_type.json()["code"] == "invalid_type"
    no_id = client.post("/v1/batch", json={"batch": [{"type": "track", "event": "x"}]})
    assert no_id.status_code == 400
    assert no_id.json() == err("no_user_anon_id", "message 0 has neither userId nor anonymousId")


def test_too_many_messages_are_dropped_with_200(url: str) -> None:
    small = SegmentEmulator(KEY, max_batch_messages=2)
    with serve(small) as base, httpx.Client(base_url=base, auth=(KEY, "")) as c:
        response = c.post("/v1/batch", json={"batch": [dict(TRACK, type="track")] * 3})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert small.records() == []
    assert small.received[0].rejected == (0, 1, 2)


def test_content_type_and_json(client: httpx.Client) -> None:
    wrong = client.post("/v1/track", content=orjson.dumps(TRACK),
                        headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 400
    assert wrong.json() == err("invalid_content_type", "Content-Type must be application/json")
    broken = client.post("/v1/track", content=b"{",
                         headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.json() == err("invalid_json", "invalid JSON body")


def test_injected_429_has_rate_limit_headers(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push("429")
    response = client.post("/v1/track", json=TRACK)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert int(response.headers["x-ratelimit-reset"]) - time.time() <= 2
    assert response.json() == err("rate_limited", "Too Many Requests")
    assert client.post("/v1/track", json=TRACK).status_code == 200
    assert len(emu.records()) == 1
