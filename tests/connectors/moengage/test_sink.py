"""MoEngage Data API sink: request shapes, batching by bytes, classification of answers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from moerules.connectors.moengage.sink import MoEngageDataSink
from moerules.engine.connector import (
    EVENT,
    USER,
    Delivered,
    Fatal,
    Item,
    ItemTooLarge,
    Reject,
    Response,
    Retry,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.retry import retry_after_seconds


def sink(**settings: object) -> MoEngageDataSink:
    return MoEngageDataSink({"workspace_id": "WS", "data_api_key": "KEY", **settings})


def event(cid: str, name: str, project: str | None = None, pad: int = 0) -> Item:
    return Item(
        EVENT, cid, name, {"p": "x" * pad} if pad else {}, {"current_time": 1}, project, (1, 0), "r"
    )


def user(cid: str, attributes: dict[str, object], line: int = 1) -> Item:
    return Item(USER, cid, "", dict(attributes), {}, None, (line, -1), "user")


def test_headers_and_urls() -> None:
    s = sink(data_center="05")
    enc = s.encoder()
    (req,) = enc.add(user("c1", {"a": 1}, 1)) + enc.flush()
    assert req.method == "POST"
    assert req.url == "https://api-05.moengage.com/v1/transition/WS?app_id=WS"
    assert req.headers == {
        "Authorization": "Basic " + base64.b64encode(b"WS:KEY").decode(),
        "Content-Type": "application/json",
        "MOE-APPKEY": "WS",
    }
    assert req.redacted_headers(s.secret_headers)["Authorization"] == "***"


def test_bulk_groups_consecutive_actions_of_a_customer() -> None:
    enc = sink().encoder()
    for item in (
        user("c1", {"a": 1}, 1),
        event("c1", "A"),
        event("c1", "B"),
        event("c2", "C"),
        event("c1", "D", project="P1"),
    ):
        assert enc.add(item) == []
    portfolio, project = enc.flush()
    assert orjson.loads(portfolio.body) == {
        "type": "transition",
        "elements": [
            {"type": "customer", "customer_id": "c1", "attributes": {"a": 1}},
            {
                "type": "event",
                "customer_id": "c1",
                "actions": [
                    {"action": "A", "attributes": {}, "current_time": 1},
                    {"action": "B", "attributes": {}, "current_time": 1},
                ],
            },
            {
                "type": "event",
                "customer_id": "c2",
                "actions": [{"action": "C", "attributes": {}, "current_time": 1}],
            },
        ],
    }
    assert [i.kind for i in portfolio.items] == ["user", "event", "event", "event"]
    assert project.url.endswith("?app_id=WS&project_code=P1")
    assert len(orjson.loads(project.body)["elements"]) == 1


def test_requests_stay_within_max_bytes_and_lose_nothing() -> None:
    s = sink(max_request_bytes=4096)
    enc = s.encoder()
    requests = []
    for i in range(300):
        requests += enc.add(event(f"c{i % 7}", f"E{i}", pad=i % 200))
    requests += enc.flush()
    assert all(len(r.body) <= 4096 for r in requests)
    names = [
        a["action"]
        for r in requests
        for e in orjson.loads(r.body)["elements"]
        for a in e["actions"]
    ]
    assert names == [f"E{i}" for i in range(300)]
    assert sum(len(r.items) for r in requests) == 300


def test_single_mode_uses_event_and_customer_endpoints() -> None:
    enc = sink(mode="single").encoder()
    out = enc.add(user("c1", {"a": 1}, 1))
    out += enc.add(event("c1", "A"))
    out += enc.add(event("c1", "B"))
    out += enc.add(event("c2", "C", project="P"))
    out += enc.flush()
    assert [r.url for r in out] == [
        "https://api-01.moengage.com/v1/customer/WS?app_id=WS",
        "https://api-01.moengage.com/v1/event/WS?app_id=WS",
        "https://api-01.moengage.com/v1/event/WS?app_id=WS&project_code=P",
    ]
    assert orjson.loads(out[0].body) == {
        "type": "customer",
        "customer_id": "c1",
        "attributes": {"a": 1},
    }
    assert orjson.loads(out[1].body) == {
        "type": "event",
        "customer_id": "c1",
        "actions": [
            {"action": "A", "attributes": {}, "current_time": 1},
            {"action": "B", "attributes": {}, "current_time": 1},
        ],
    }


def test_endpoint_overrides_host() -> None:
    s = sink(endpoint="http://127.0.0.1:8080/", data_center="02")
    assert s.url("event", None) == "http://127.0.0.1:8080/v1/event/WS?app_id=WS"


def answer(status: int, body: bytes = b"", **headers: str) -> Verdict:
    request = WireRequest("POST", "https://api-01.moengage.com/v1/transition/WS", {}, b"{}")
    return sink().classify(request, Response(status, headers, body))


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b'{"status":"success","request_id":"x"}', Delivered()),
        (202, b"", Delivered()),
        (200, b'{"status":"fail","error":{"type":"X"}}', Reject("rejected in a 2xx answer")),
        (400, b'{"status":"fail"}', Reject("HTTP 400")),
        (409, b"", Reject("HTTP 409")),
        (401, b"", Fatal("HTTP 401")),
        (403, b"", Fatal("HTTP 403")),
        (413, b"", Split("HTTP 413")),
        (408, b"", Retry("HTTP 408")),
        (429, b'{"title":"Rate Limits Exceeded"}', Retry("HTTP 429", throttled=True)),
        (500, b"", Retry("HTTP 500")),
        (503, b"", Retry("HTTP 503")),
    ],
)
def test_classify(status: int, body: bytes, verdict: Verdict) -> None:
    assert answer(status, body) == verdict


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 27 <= (retry_after_seconds(later) or 0) <= 30
    assert answer(429, b"", **{"Retry-After": "3"}) == Retry("HTTP 429", after=3.0, throttled=True)


def test_an_item_that_fits_no_request_is_refused_when_encoded() -> None:
    enc = sink(max_request_bytes=2048).encoder()
    requests, refused = enc.add_all(
        [event("c1", "small"), event("c1", "big", pad=3000), event("c1", "after")]
    )
    requests += enc.flush()
    assert [(r.item.name, r.reason) for r in refused] == [("big", "too large for the destination")]
    assert "a request to the destination holds at most 2048 bytes" in refused[0].error
    assert [i.name for r in requests for i in r.items] == ["small", "after"]
    with pytest.raises(ItemTooLarge):
        enc.add(user("c2", {"bio": "y" * 3000}))
    assert enc.flush() == []


def test_max_age_says_when_held_items_must_leave() -> None:
    enc = sink().encoder()
    assert enc.until_next() is None
    enc.add(event("c1", "A"))
    wait = enc.until_next()
    assert wait is not None and 4.0 < wait <= 5.0
    late = enc.until_next(now=1e12)
    assert late is not None and late < 0
    enc.flush()
    assert enc.until_next() is None


def test_user_updates_stay_within_max_bytes_and_lose_nothing() -> None:
    enc = sink(max_request_bytes=2048).encoder()
    requests = []
    for i in range(200):
        requests += enc.add(user(f"c{i}", {"bio": "y" * (i % 150)}, i))
        requests += enc.add(event(f"c{i}", f"E{i}"))
    requests += enc.flush()
    assert all(len(r.body) <= 2048 for r in requests)
    elements = [e for r in requests for e in orjson.loads(r.body)["elements"]]
    users = [e["customer_id"] for e in elements if e["type"] == "customer"]
    actions = [a["action"] for e in elements if e["type"] == "event" for a in e["actions"]]
    assert users == [f"c{i}" for i in range(200)]
    assert actions == [f"E{i}" for i in range(200)]
    assert sum(len(r.items) for r in requests) == 400
