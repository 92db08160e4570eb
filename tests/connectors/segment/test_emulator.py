"""Segment HTTP Tracking API emulator over real HTTP."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import SegmentEmulator, serve

from tests.connectors.emulation.rawhttp import basic, chunks, exchange, head

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
        response = c.post(
            "/v1/identify",
            json={"writeKey": KEY, "anonymousId": "a1", "traits": {"email": "a@b.com"}},
        )
    assert response.status_code == 200
    assert emu.records() == [
        {"anonymousId": "a1", "traits": {"email": "a@b.com"}, "type": "identify"}
    ]


@pytest.mark.parametrize(
    ("auth", "body_key"), [(("wrong", ""), None), (None, "wrong"), ((KEY[:-1], ""), KEY)]
)
def test_an_unknown_write_key_is_answered_200_and_dropped(
    url: str, emu: SegmentEmulator, auth: tuple[str, str] | None, body_key: str | None
) -> None:
    """Segment's edge does not check write keys: "Invalid keys return 200 OK (events
    silently dropped server-side)" (segmentio/analytics-go#205, analytics-node#59)."""
    payload = TRACK if body_key is None else dict(TRACK, writeKey=body_key)
    with httpx.Client(base_url=url, auth=auth) as c:
        response = c.post("/v1/track", json=payload)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert emu.records() == []
    assert emu.received[0].reasons == {0: "project_not_found"}


def test_no_write_key_at_all_is_a_400(url: str, emu: SegmentEmulator) -> None:
    with httpx.Client(base_url=url) as c:
        response = c.post("/v1/track", json=TRACK)
    assert response.status_code == 400
    assert response.json() == err("missing_write_key", "no write key")


@pytest.mark.parametrize(
    ("call", "payload"),
    [
        ("page", {"userId": "u1", "name": "Home"}),
        ("screen", {"anonymousId": "a1", "name": "Home"}),
        ("group", {"userId": "u1", "groupId": "g1", "traits": {}}),
        ("alias", {"userId": "u1", "previousId": "a1"}),
    ],
)
def test_other_calls(
    client: httpx.Client, emu: SegmentEmulator, call: str, payload: dict[str, Any]
) -> None:
    assert client.post(f"/v1/{call}", json=payload).status_code == 200
    assert emu.records() == [dict(payload, type=call)]


@pytest.mark.parametrize(
    ("call", "payload", "reason"),
    [
        ("track", {"event": "x"}, "no_user_anon_id"),
        ("track", {"userId": " ", "event": "x"}, "no_user_anon_id"),
        ("track", {"userId": "u1"}, "event_not_defined"),
        ("track", {"userId": "u1", "event": 5}, "event_not_string"),
        ("track", {"userId": "u1", "event": "e", "properties": [1]}, "properties_not_object"),
        ("identify", {"userId": "u1", "traits": "gold"}, "traits_not_object"),
        ("page", {"userId": "u1", "name": ""}, "name_not_string"),
        ("group", {"userId": "u1"}, "missing_groupId"),
        ("alias", {"userId": "u1"}, "missing_previousId"),
    ],
)
def test_messages_segment_drops_are_answered_200(
    client: httpx.Client, emu: SegmentEmulator, call: str, payload: dict[str, Any], reason: str
) -> None:
    """Only size and JSON errors are 400s [G1]; the rest is dropped after a 200, with the
    discard code Segment's Delivery Overview shows."""
    response = client.post(f"/v1/{call}", json=payload)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    [received] = emu.received
    assert (received.records, received.rejected, received.reasons) == ((), (0,), {0: reason})


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
    payload = {
        "batch": [
            dict(TRACK, type="track", context={"ip": "1.2.3.4"}),
            {"type": "identify", "userId": "u2", "traits": {"a": 1}},
        ],
        "context": {"device": {"type": "phone"}, "ip": "0.0.0.0"},
        "integrations": {"All": False},
    }
    response = client.post("/v1/batch", json=payload)
    assert response.status_code == 200
    assert emu.records() == [
        dict(
            TRACK,
            type="track",
            context={"device": {"type": "phone"}, "ip": "1.2.3.4"},
            integrations={"All": False},
        ),
        {
            "type": "identify",
            "userId": "u2",
            "traits": {"a": 1},
            "context": {"device": {"type": "phone"}, "ip": "0.0.0.0"},
            "integrations": {"All": False},
        },
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


def test_batch_items_are_dropped_one_by_one(client: httpx.Client, emu: SegmentEmulator) -> None:
    ok = dict(TRACK, type="track")
    response = client.post(
        "/v1/batch", json={"batch": [TRACK, {"type": "track", "event": "x"}, ok, "x"]}
    )
    assert response.status_code == 200
    [received] = emu.received
    assert received.records == (ok,)
    assert received.reasons == {0: "invalid_type", 1: "no_user_anon_id", 3: "invalid_type"}


def test_message_id_deduplicates(client: httpx.Client, emu: SegmentEmulator) -> None:
    first = dict(TRACK, type="track", messageId="m-1")
    client.post("/v1/batch", json={"batch": [first, dict(first, messageId="m-2")]})
    client.post("/v1/batch", json={"batch": [first]})  # a retry
    assert [r["messageId"] for r in emu.records()] == ["m-1", "m-2"]
    assert emu.received[1].reasons == {0: "duplicate_message_id"}


def test_size_is_refused_before_the_body(url: str, emu: SegmentEmulator) -> None:
    auth = {"Authorization": basic(KEY, ""), "Content-Type": "application/json"}
    declared = exchange(url, head("POST", "/v1/batch", {**auth, "Content-Length": "600000"}))
    assert (declared.status, declared.json()) == (
        400,
        err("max_request_size_exceeded", "request body exceeds 512000 bytes"),
    )
    endless = exchange(
        url,
        head("POST", "/v1/track", {**auth, "Transfer-Encoding": "chunked"})
        + chunks([b" " * 8192] * 5),
    )  # 40 KB of a 32 KB call, never finished
    assert endless.status == 400
    assert [r.status for r in emu.received] == [400, 400]


def test_gzip_bodies(client: httpx.Client, emu: SegmentEmulator) -> None:
    """The official library may gzip its batches ([G3] request.py)."""
    body = gzip.compress(orjson.dumps({"batch": [dict(TRACK, type="track")]}))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert client.post("/v1/batch", content=body, headers=headers).status_code == 200
    assert emu.records() == [dict(TRACK, type="track")]
    bomb = gzip.compress(b" " * 10_000_000)  # 10 KB that inflates past 500 KB
    response = client.post("/v1/batch", content=bomb, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "max_request_size_exceeded"
    broken = client.post("/v1/batch", content=b"not gzip", headers=headers)
    assert broken.status_code == 400


def test_rate_limit_per_workspace() -> None:
    """ "Stay below 1,000 req/s per workspace"; a 429 carries Retry-After and
    X-RateLimit-Reset (§4). Scaled: 2 requests per 0.5 s."""
    emu = SegmentEmulator(KEY, requests_per_second=2, second=0.5)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(KEY, "")) as c:
        sent = time.time()
        statuses = [c.post("/v1/track", json=TRACK) for _ in range(3)]
        time.sleep(0.55)
        after = c.post("/v1/track", json=TRACK)
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["retry-after"] == "1"
    assert sent <= int(statuses[2].headers["x-ratelimit-reset"]) <= sent + 2
    assert after.status_code == 200
    assert len(emu.records()) == 3


@pytest.mark.parametrize(
    ("region", "host", "dropped"),
    [
        ("us", "api.segment.io", False),
        ("us", "events.eu1.segmentapis.com", True),
        ("eu", "events.eu1.segmentapis.com", False),
        ("eu", "api.segment.io", True),
    ],
)
def test_the_other_regions_host_drops_silently(region: str, host: str, dropped: bool) -> None:
    emu = SegmentEmulator(KEY, region=region)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(KEY, ""), headers={"Host": host}) as c:
        response = c.post("/v1/track", json=TRACK)
    assert response.status_code == 200
    assert emu.records() == ([] if dropped else [dict(TRACK, type="track")])


def test_too_many_messages_are_dropped_with_200(url: str) -> None:
    small = SegmentEmulator(KEY, max_batch_messages=2)
    with serve(small) as base, httpx.Client(base_url=base, auth=(KEY, "")) as c:
        response = c.post("/v1/batch", json={"batch": [dict(TRACK, type="track")] * 3})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert small.records() == []
    assert small.received[0].rejected == (0, 1, 2)
    assert small.received[0].reasons == dict.fromkeys((0, 1, 2), "too_many_messages")


def test_content_type_and_json(client: httpx.Client) -> None:
    wrong = client.post(
        "/v1/track", content=orjson.dumps(TRACK), headers={"Content-Type": "text/plain"}
    )
    assert wrong.status_code == 400
    assert wrong.json() == err("invalid_content_type", "Content-Type must be application/json")
    broken = client.post("/v1/track", content=b"{", headers={"Content-Type": "application/json"})
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
