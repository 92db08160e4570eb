"""Amplitude HTTP V2 emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.amplitude.emulator import AmplitudeLimits
from moerules.connectors.emulation import AmplitudeEmulator, Fault, serve

from tests.connectors.emulation.rawhttp import chunks, exchange, head

KEY = "amp-key-123"
EVENT = {
    "user_id": "user@x.com",
    "device_id": "C8F9-device",
    "event_type": "watch_tutorial",
    "time": 1396381378123,
    "event_properties": {"source": "notification"},
    "insert_id": "5f0adeff-1",
}


@pytest.fixture(scope="module")
def emu() -> AmplitudeEmulator:
    return AmplitudeEmulator(KEY)


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5.0) as c:
        yield c


def upload(
    client: httpx.Client, events: list[Any], path: str = "/2/httpapi", **extra: Any
) -> httpx.Response:
    return client.post(path, json={"api_key": KEY, "events": events, **extra})


SECOND = dict(EVENT, insert_id="5f0adeff-2")


def test_accepts_events(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    before = int(time.time() * 1000)
    payload = orjson.dumps({"api_key": KEY, "events": [EVENT, SECOND]})
    response = client.post(
        "/2/httpapi", content=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200
    assert body["events_ingested"] == 2
    assert body["payload_size_bytes"] == len(payload)
    assert before <= body["server_upload_time"] <= int(time.time() * 1000)
    assert emu.records() == [EVENT, SECOND]


def test_batch_endpoint(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    response = upload(client, [EVENT], path="/batch")
    assert response.status_code == 200
    assert emu.records("/batch") == [EVENT]


def test_requires_json_content_type(client: httpx.Client) -> None:
    response = client.post(
        "/2/httpapi",
        content=orjson.dumps({"api_key": KEY, "events": [EVENT]}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Invalid request: Content-Type must be application/json",
    }


def test_invalid_api_key(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    response = client.post("/2/httpapi", json={"api_key": "nope", "events": [EVENT]})
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid API key: nope"}
    assert emu.records() == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"events": [EVENT]}, "api_key"),
        ({"api_key": KEY}, "events"),
        ({"api_key": KEY, "events": []}, "events"),
    ],
)
def test_missing_request_fields(client: httpx.Client, payload: dict[str, Any], field: str) -> None:
    response = client.post("/2/httpapi", json=payload)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Request missing required field",
        "missing_field": field,
    }


def test_invalid_json(client: httpx.Client) -> None:
    response = client.post(
        "/2/httpapi", content=b"[1,", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid JSON request body"}


def test_event_count_limit(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    many = [{"user_id": f"user-{i}", "event_type": "e"} for i in range(2001)]
    assert upload(client, many[:2000]).status_code == 200
    response = upload(client, many)
    assert response.status_code == 413
    assert response.json() == {"code": 413, "error": "Payload too large"}
    assert len(emu.records()) == 2000


def test_payload_size_limit(client: httpx.Client) -> None:
    big = dict(EVENT, event_properties={"blob": "x" * 1_000_000})
    response = upload(client, [big])
    assert response.status_code == 413
    assert response.json() == {"code": 413, "error": "Payload too large"}


def test_size_is_refused_before_the_body(url: str, emu: AmplitudeEmulator) -> None:
    declared = exchange(
        url,
        head(
            "POST", "/2/httpapi", {"Content-Type": "application/json", "Content-Length": "1000001"}
        ),
    )
    assert (declared.status, declared.json()) == (413, {"code": 413, "error": "Payload too large"})
    endless = exchange(
        url,
        head(
            "POST",
            "/2/httpapi",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        + chunks([b" " * 65536] * 16),
    )  # 1 MB and counting, never finished
    assert endless.status == 413
    wrong_type = exchange(
        url, head("POST", "/2/httpapi", {"Content-Type": "text/plain", "Content-Length": "500"})
    )
    assert wrong_type.status == 400
    assert [r.status for r in emu.received] == [413, 413, 400]


def test_batch_allows_20_mb(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    big = dict(EVENT, event_properties={"blob": "x" * 1_500_000})
    assert upload(client, [big], path="/batch").status_code == 200
    assert emu.records("/batch") == [big]


def test_missing_body(client: httpx.Client) -> None:
    response = client.post("/2/httpapi", content=b"", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Missing request body"}


def test_events_must_be_objects(client: httpx.Client) -> None:
    response = upload(client, [EVENT, "x"])
    assert response.status_code == 400
    assert response.json() == {"code": 400, "error": "Invalid event JSON"}


def test_per_event_problems_reject_the_whole_request(
    client: httpx.Client, emu: AmplitudeEmulator
) -> None:
    events = [
        EVENT,
        {"user_id": "user-2"},  # no event_type
        {"event_type": "e"},  # no user_id nor device_id
        dict(EVENT, user_id="abc"),  # too short
        dict(EVENT, time="2024-01-01T00:00:00Z"),
        dict(EVENT, time=1.5e12),
        dict(EVENT, device_id="null"),
        dict(EVENT, event_properties=[1]),
        dict(EVENT, event_type="[Amplitude] Revenue"),
        dict(EVENT, user_id="LMY47D"),
        dict(EVENT, user_properties=nested(41)),
        dict(EVENT, user_properties=nested(40)),  # the deepest allowed
    ]
    response = upload(client, events)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Request missing required field",
        "events_with_missing_fields": {"event_type": [1], "user_id": [2]},
        "events_with_invalid_fields": {
            "time": [4, 5],
            "device_id": [6],
            "event_properties": [7],
            "event_type": [8],
            "user_id": [9],
            "user_properties": [10],
        },
        "events_with_invalid_id_lengths": {"user_id": [3]},
    }
    assert emu.records() == []
    assert [r.status for r in emu.received] == [400]


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_invalid_values_only(client: httpx.Client) -> None:
    response = upload(client, [EVENT, dict(EVENT, time="yesterday")])
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Invalid field values on some events",
        "events_with_invalid_fields": {"time": [1]},
    }


def test_short_ids_only(client: httpx.Client) -> None:
    response = upload(client, [EVENT, {"device_id": "d1", "event_type": "e"}])
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Invalid id length for user_id or device_id",
        "events_with_invalid_id_lengths": {"device_id": [1]},
    }


def test_min_id_length_option(client: httpx.Client) -> None:
    events = [{"user_id": "u1", "event_type": "e"}]
    assert upload(client, events).status_code == 400
    assert upload(client, events, options={"min_id_length": 1}).status_code == 200
    bad = upload(client, events, options={"min_id_length": 0})
    assert bad.status_code == 400
    assert bad.json() == {
        "code": 400,
        "error": "Invalid options: min_id_length must be a positive integer",
    }


def test_injected_429_lists_throttled_users(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    emu.faults.push("429_bare")
    response = upload(client, [EVENT, dict(EVENT, user_id="other-user", device_id=None)])
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert response.json() == {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 10,
        "throttled_devices": {"C8F9-device": 1},
        "throttled_users": {"user@x.com": 1, "other-user": 1},
        "throttled_events": [0, 1],
    }
    assert emu.received == []


def test_record_fault_names_the_failing_events(
    client: httpx.Client, emu: AmplitudeEmulator
) -> None:
    emu.faults.push(Fault("record_400", indices=(0, 2), field="time"))
    response = upload(client, [EVENT, EVENT, EVENT])
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "Invalid field values on some events",
        "events_with_invalid_fields": {"time": [0, 2]},
    }
    assert emu.records() == []
    assert upload(client, [EVENT]).status_code == 200


# -- de-duplication, throttling and regions --------------------------------------------------
def test_insert_id_deduplicates(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    """ "We will ignore subsequent events sent with the same insert_id within the past 7
    days" [A1]: a resent request is answered like the first, and ingested once."""
    first = upload(client, [EVENT, SECOND])
    again = upload(client, [SECOND, dict(EVENT, insert_id="new-1")])
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["events_ingested"] == 2
    assert emu.records() == [EVENT, SECOND, dict(EVENT, insert_id="new-1")]
    assert emu.received[1].reasons == {0: "duplicate insert_id '5f0adeff-2': ignored"}


def throttling(**limits: Any) -> AmplitudeEmulator:
    defaults: dict[str, Any] = {
        "eps_threshold": None,
        "batch_eps_threshold": None,
        "daily_quota": None,
    }
    return AmplitudeEmulator(KEY, limits=AmplitudeLimits(**{**defaults, **limits}))


def event(user: str | None, device: str | None, n: int) -> dict[str, Any]:
    return {"user_id": user, "device_id": device, "event_type": "e", "insert_id": f"i-{n}"}


def test_users_and_devices_over_their_rate_get_429() -> None:
    """10 events/s per user or device, averaged over the window [A1]: with a window of
    0.5 s, 5 events per id fit; the 429 names who is over and which events were theirs."""
    emu = throttling(eps_threshold=10, window=0.5)
    with serve(emu) as url, httpx.Client(base_url=url) as c:
        fits = upload(c, [event("user-a", "dev-1", n) for n in range(5)])
        over = upload(
            c, [event("user-a", None, 5), event("user-b", "dev-2", 6), event(None, "dev-1", 7)]
        )
        other = upload(c, [event("user-b", "dev-2", 8)])
        time.sleep(0.55)
        later = upload(c, [event("user-a", "dev-1", 9)])
    assert [r.status_code for r in (fits, over, other, later)] == [200, 429, 200, 200]
    assert over.json() == {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 10,
        "throttled_devices": {"dev-1": 12},
        "throttled_users": {"user-a": 12},
        "throttled_events": [0, 2],
    }
    assert [e["insert_id"] for e in emu.records()] == [
        "i-0",
        "i-1",
        "i-2",
        "i-3",
        "i-4",
        "i-8",
        "i-9",
    ]
    assert emu.stats()["rate_limited"] == 1


def test_batch_has_its_own_threshold() -> None:
    emu = throttling(eps_threshold=1, batch_eps_threshold=100, window=1.0)
    with serve(emu) as url, httpx.Client(base_url=url) as c:
        many = [event("user-a", None, n) for n in range(50)]
        assert upload(c, many, path="/2/httpapi").status_code == 429
        assert upload(c, many, path="/batch").status_code == 200


def test_daily_quota_per_id() -> None:
    emu = throttling(daily_quota=3, day=0.5)
    with serve(emu) as url, httpx.Client(base_url=url) as c:
        # the day is a clock bucket: start right after one begins
        time.sleep(0.5 - time.monotonic() % 0.5 + 0.01)
        first = upload(c, [event("user-a", None, 0), event("user-a", None, 1)])
        over = upload(c, [event("user-a", "dev-9", 2), event("user-a", None, 3)])
        time.sleep(0.5)
        next_day = upload(c, [event("user-a", None, 4), event("user-a", None, 5)])
    assert [r.status_code for r in (first, over, next_day)] == [200, 429, 200]
    assert over.json() == {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": None,
        "throttled_devices": {},
        "throttled_users": {},
        "exceeded_daily_quota_users": {"user-a": 4},
        "exceeded_daily_quota_devices": {},
        "throttled_events": [0, 1],
    }


def test_default_limits_are_the_documented_ones() -> None:
    limits = AmplitudeLimits()
    assert (
        limits.eps_threshold,
        limits.batch_eps_threshold,
        limits.window,
        limits.daily_quota,
        limits.day,
    ) == (10, 1000, 30.0, 500_000, 86_400.0)
    with pytest.raises(ValueError, match="window must be a number within"):
        AmplitudeLimits(window=0)


def test_reset_forgets_usage_and_insert_ids(client: httpx.Client, emu: AmplitudeEmulator) -> None:
    assert upload(client, [EVENT]).status_code == 200
    client.post("/_emulator/reset")
    assert upload(client, [EVENT]).status_code == 200
    assert emu.records() == [EVENT]


@pytest.mark.parametrize(
    ("region", "host", "status"),
    [
        ("us", "api2.amplitude.com", 200),
        ("us", "api.eu.amplitude.com", 400),
        ("eu", "api.eu.amplitude.com", 200),
        ("eu", "api2.amplitude.com", 400),
    ],
)
def test_a_key_works_on_its_own_regions_host(region: str, host: str, status: int) -> None:
    emu = AmplitudeEmulator(KEY, region=region)
    with serve(emu) as url, httpx.Client(base_url=url, headers={"Host": host}) as c:
        response = upload(c, [EVENT])
    assert response.status_code == status
    if status == 400:
        assert response.json() == {"code": 400, "error": f"Invalid API key: {KEY}"}
        assert emu.records() == []
    with pytest.raises(ValueError, match="region must be one of"):
        AmplitudeEmulator(region="ap")
