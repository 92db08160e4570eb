"""Amplitude HTTP V2 sink: the exact request, settings, verdicts, and real runs against the
emulator with injected partial failures (reference §3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.connectors.amplitude.emulator import AmplitudeLimits
from moerules.connectors.amplitude.sink import AmplitudeSink
from moerules.connectors.emulation import AmplitudeEmulator, Fault, serve
from moerules.engine.api import load_bundle
from moerules.engine.connector import (
    EVENT,
    ITEMS,
    Delivered,
    Fatal,
    Item,
    Partial,
    RateLimit,
    Reject,
    Response,
    Retry,
    Split,
    WireRequest,
)
from moerules.engine.runtime.delivery import deliver
from pydantic import ValidationError

from tests.conftest import Result
from tests.connectors.streams_input import FAST, accepted, dead_letters, event, write_streams

KEY = "test-amplitude-key"


def sink(**settings: Any) -> AmplitudeSink:
    return AmplitudeSink({"api_key": "KEY", **settings})


def item(
    identity: str = "user@x.com", name: str = "watch_tutorial", index: int = 0, **fields: Any
) -> Item:
    return Item(EVENT, identity, name, {"source": "notification"}, fields, None, (1, index), "r")


def body_of(s: AmplitudeSink, *items: Item) -> bytes:
    encoder = s.encoder()
    requests, refused = encoder.add_all(list(items))
    assert refused == []
    (request,) = requests + encoder.flush()
    return request.body


# -- the request -------------------------------------------------------------------------------
def test_request_is_byte_for_byte_amplitudes_example() -> None:
    """Reference §3's example request, with the elided ids written out."""
    s = sink(min_id_length=1)
    body = body_of(
        s,
        Item(
            EVENT,
            "user@x.com",
            "watch_tutorial",
            {"source": "notification"},
            {
                "device_id": "C8F9E604-F01A-4BD9-95C6-8E5357DF265D",
                "time": 1396381378123,
                "user_properties": {"$set": {"plan": "pro"}},
                "insert_id": "5f0adeff-6668-4427-8d02-57d803a2b841",
                "platform": "iOS",
                "app_version": "2.1.3",
                "session_id": 1396381378123,
            },
            None,
            (1, 0),
            "r",
        ),
    )
    assert body == (
        b'{"api_key":"KEY","events":[{"user_id":"user@x.com",'
        b'"device_id":"C8F9E604-F01A-4BD9-95C6-8E5357DF265D","event_type":"watch_tutorial",'
        b'"time":1396381378123,"event_properties":{"source":"notification"},'
        b'"user_properties":{"$set":{"plan":"pro"}},'
        b'"insert_id":"5f0adeff-6668-4427-8d02-57d803a2b841","platform":"iOS",'
        b'"app_version":"2.1.3","session_id":1396381378123}],"options":{"min_id_length":1}}'
    )


def test_url_headers_and_hosts() -> None:
    encoder = sink().encoder()
    (request,) = encoder.add_all([item(time=1)])[0] + encoder.flush()
    assert (request.method, request.url) == ("POST", "https://api2.amplitude.com/2/httpapi")
    assert request.headers == {"Content-Type": "application/json"}  # the key is in the body
    assert sink(data_residency="eu").url == "https://api.eu.amplitude.com/2/httpapi"
    assert sink(endpoint="http://127.0.0.1:9/").url == "http://127.0.0.1:9/2/httpapi"
    assert b'"options"' not in body_of(sink(), item())  # Amplitude's default applies


def test_batches_hold_at_most_2000_events_and_1_mb() -> None:
    encoder = sink().encoder()
    items = [item(identity=f"user-{i:05d}", index=i, insert_id=f"id-{i}") for i in range(4500)]
    requests, refused = encoder.add_all(items)
    requests += encoder.flush()
    assert refused == []
    assert [len(r.items) for r in requests] == [2000, 2000, 500]
    big = [
        Item(EVENT, f"user-{i:05d}", "e", {"blob": "x" * 100_000}, {}, None, (1, i), "r")
        for i in range(25)
    ]
    encoder = sink().encoder()
    requests = encoder.add_all(big)[0] + encoder.flush()
    assert all(len(r.body) <= 1_000_000 for r in requests)
    assert sum(len(r.items) for r in requests) == 25


def test_short_user_id_is_refused_with_its_reason_and_device_id_left_out() -> None:
    encoder = sink().encoder()
    _, refused = encoder.add_all(
        [item(identity="42"), item(device_id="null"), item(device_id="abc")]
    )
    assert [(r.reason, "min_id_length 5" in r.error) for r in refused] == [
        ("user_id shorter than min_id_length", True)
    ]
    (request,) = encoder.flush()
    assert [e.get("device_id") for e in orjson.loads(request.body)["events"]] == [None, None]
    assert b'"user_id":"42"' in body_of(sink(min_id_length=2), item(identity="42"))


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"data_residency": "IN"}, "data_residency", "Input should be 'US' or 'EU'"),
        ({"min_id_length": 0}, "min_id_length", "greater than or equal to 1"),
        ({"max_events_per_request": 5000}, "max_events_per_request", "less than or equal to 2000"),
        ({"endpoint": "ftp://x"}, "endpoint", "http:// or https://"),
        ({"apikey": "x"}, "apikey", "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_by_name(settings: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AmplitudeSink({"api_key": "k", **settings})
    (error,) = caught.value.errors()
    assert error["loc"] == (key,) and message in error["msg"]


def test_settings_problems_are_validate_errors_at_their_lines(
    write: Callable[[str, str], Path], cli: Callable[..., Result]
) -> None:
    path = write(
        "b.yaml",
        """
        bundle: t
        source: {connector: moengage-streams}
        destination:
          connector: amplitude
          settings:
            data_residency: APAC
        identity: {candidates: {uid: event.uid}}
        events: [{name: all, event_name: "{{ event.event_name }}"}]
        """,
    )
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[:2] == [
        f"{path}:5:3: error: destination 'amplitude' needs setting 'api_key'",
        f"{path}:6:21: error: destination setting 'data_residency': Input should be 'US' or 'EU'",
    ]


def test_rate_limits_are_amplitudes_documented_ones() -> None:
    assert sink().rate_limits() == [RateLimit(100, 1.0), RateLimit(1000, 1.0, counts=ITEMS)]


# -- answers -----------------------------------------------------------------------------------
def request_of(count: int) -> WireRequest:
    items = [
        item(identity=f"user-{i:05d}", index=i, device_id=f"device-{i:03d}") for i in range(count)
    ]
    return WireRequest("POST", "u", {}, b"", items)


@pytest.mark.parametrize(("status", "body", "verdict"), AmplitudeSink.documented_answers)
def test_documented_answers(status: int, body: bytes, verdict: type[Any]) -> None:
    assert isinstance(sink().classify(request_of(3), Response(status, {}, body)), verdict)


def test_400_rejects_exactly_the_named_events_and_sends_the_rest_again() -> None:
    answer = Response(
        400,
        {},
        orjson.dumps(
            {
                "code": 400,
                "error": "Invalid field values on some events",
                "events_with_invalid_fields": {"time": [1, 3]},
                "events_with_missing_fields": {"event_type": [3]},
                "events_with_invalid_id_lengths": {"user_id": [4]},
                "silenced_events": [0],
            }
        ),
    )
    verdict = sink().classify(request_of(6), answer)
    assert verdict == Partial(
        {
            1: "time: with invalid fields",
            3: "time: with invalid fields; event_type: with missing fields",
            4: "user_id: with invalid id lengths",
            0: "silenced",
        },
        frozenset({2, 5}),
        reason="HTTP 400: Invalid field values on some events",
    )


def test_400_without_indices_rejects_all_and_a_bad_key_stops_the_run() -> None:
    assert sink().classify(request_of(2), Response(400, {}, b"not json")) == Reject("HTTP 400")
    assert isinstance(
        sink().classify(
            request_of(2), Response(400, {}, b'{"code":400,"error":"Invalid API key: x"}')
        ),
        Fatal,
    )


def test_429_retries_later_and_rejects_only_users_over_their_daily_quota() -> None:
    s = sink(throttle_pause_seconds=12)
    plain = s.classify(
        request_of(3),
        Response(
            429,
            {},
            orjson.dumps(
                {"code": 429, "throttled_users": {"user-00001": 12}, "throttled_events": [1]}
            ),
        ),
    )
    # the throttled user's events wait on their own; the others were not ingested either
    # (a 429 ingests nothing) and are sent again at once
    assert plain == Partial(
        {},
        frozenset({1}),
        reason="HTTP 429",
        after=12,
        throttled=True,
        holds="items",
        resend=frozenset({0, 2}),
    )
    by_device = s.classify(
        request_of(3),
        Response(429, {}, orjson.dumps({"code": 429, "throttled_devices": {"device-002": 12}})),
    )
    assert by_device == Partial(
        {},
        frozenset({2}),
        reason="HTTP 429",
        after=12,
        throttled=True,
        holds="items",
        resend=frozenset({0, 1}),
    )
    quota = s.classify(
        request_of(3),
        Response(
            429,
            {},
            orjson.dumps(
                {
                    "code": 429,
                    "error": "Too many",
                    "exceeded_daily_quota_users": {"user-00000": 1},
                    "exceeded_daily_quota_devices": {"device-002": 1},
                    "throttled_users": {"user-00001": 9},
                    "throttled_events": [0, 1, 2],
                }
            ),
        ),
    )
    assert quota == Partial(
        {
            0: "user 'user-00000' exceeded its daily quota",
            2: "device 'device-002' exceeded its daily quota",
        },
        frozenset({1}),
        reason="HTTP 429: Too many",
        after=12,
        throttled=True,
        holds="items",
    )
    # an answer that names no one holds the request's own items, not the key
    assert s.classify(request_of(2), Response(429, {}, b"")) == Retry(
        "HTTP 429", after=12, throttled=True, holds="items"
    )
    # a Retry-After (a proxy's: Amplitude documents none) speaks for the whole key
    assert s.classify(
        request_of(2),
        Response(429, {"Retry-After": "3"}, orjson.dumps({"code": 429, "throttled_events": [0]})),
    ) == Partial(
        {}, frozenset({0}), reason="HTTP 429", after=3.0, throttled=True, resend=frozenset({1})
    )


def test_other_answers() -> None:
    s, request = sink(), request_of(1)
    assert s.classify(request, Response(200, {}, b"")) == Delivered()
    assert isinstance(s.classify(request, Response(408, {}, b"")), Retry)
    assert isinstance(s.classify(request, Response(413, {}, b"")), Split)
    assert isinstance(s.classify(request, Response(401, {}, b"")), Fatal)
    assert s.classify(request, Response(404, {}, b"")) == Reject("HTTP 404")


# -- real runs ---------------------------------------------------------------------------------
def run(url: str, tmp_path: Path, lines: int, *sets: str) -> tuple[Any, list[str], Path]:
    uuids = write_streams(tmp_path / "in.jsonl", lines)
    dead = tmp_path / "dead.jsonl"
    bundle = load_bundle(
        "moengage-to-amplitude",
        [f"destination.endpoint={url}", "destination.throttle_pause_seconds=0.05", *sets],
        env={"AMPLITUDE_API_KEY": KEY},
    )
    report = deliver(
        bundle,
        str(tmp_path / "in.jsonl"),
        dead_letter=dead,
        state_dir=tmp_path / "state",
        quiet=True,
        options=FAST,
    )
    return report, uuids, dead


def test_a_400_dead_letters_exactly_the_named_events_the_rest_arrive_once(tmp_path: Path) -> None:
    emu = AmplitudeEmulator(KEY)
    emu.faults.push(Fault("record_400", indices=(1, 4), field="time"))
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 4)
    letters = dead_letters(dead, "insert_id")
    assert set(letters) == {uuids[1], uuids[4]}
    for letter in letters.values():
        assert (
            letter["reason"] == "rejected by the destination: HTTP 400: Invalid field values "
            "on some events"
        )
        assert letter["error"] == "time: with invalid fields"
        assert letter["status"] == 400 and letter["attempts"] == 1
    got = accepted(emu.records("/2/httpapi"), lambda e: e["insert_id"])
    assert got == {u: 1 for u in uuids if u not in letters}
    assert report.balanced() and report.delivered == len(uuids) - 2
    assert dict(report.statuses) == {"400": 1, "200": 1}


def test_413_splits_until_requests_fit(tmp_path: Path) -> None:
    emu = AmplitudeEmulator(KEY, max_body_bytes=1500)
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 6)
    got = accepted(emu.records("/2/httpapi"), lambda e: e["insert_id"])
    assert got == {u: 1 for u in uuids}
    assert report.statuses["413"] >= 1 and not dead_letters(dead, "insert_id")
    assert all(len(orjson.dumps(r.body)) <= 1500 for r in emu.received if r.status == 200)


def test_throttling_and_outages_are_retried_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    emu = AmplitudeEmulator(KEY)
    for kind in ("429", "500", "503"):
        emu.faults.push(Fault(kind, retry_after=0))
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 3)
    assert accepted(emu.records("/2/httpapi"), lambda e: e["insert_id"]) == {u: 1 for u in uuids}
    assert report.throttled == 1 and report.retries == 3
    assert not dead.exists() and report.balanced()


def test_a_429_holds_back_only_the_throttled_users_events(tmp_path: Path) -> None:
    """Amplitude throttles users, not the key: the throttled user's events wait the pause on
    their own and are resent alone; the bystanders of that 429 are resent at once, and the
    requests after it are not held back (one sender: the request log's order shows it)."""
    heavy = "cust-heavy"
    lines = [
        [event(1, i, uid=heavy) for i in range(3)],  # request 1: heavy + B
        [event(2, i) for i in range(3)],
        [event(3, i, uid=heavy) for i in range(3)],  # request 2: heavy again + C: 429
        [event(4, i) for i in range(3)],
        [event(5, i) for i in range(3)],  # request 3: D + E
        [event(6, i) for i in range(3)],
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"app_name": "App", "source": "MOENGAGE", "events": events}) + b"\n"
            for events in lines
        )
    )
    uuids = [e["event_uuid"] for events in lines for e in events]
    # 4 events per user a second: a request of 3 fits, a second one within the second not
    emu = AmplitudeEmulator(KEY, limits=AmplitudeLimits(eps_threshold=4, window=1.0))
    with serve(emu) as url:
        bundle = load_bundle(
            "moengage-to-amplitude",
            [
                f"destination.endpoint={url}",
                "destination.throttle_pause_seconds=1.5",
                "destination.max_events_per_request=6",
            ],
            env={"AMPLITUDE_API_KEY": KEY},
        )
        dead = tmp_path / "dead.jsonl"
        report = deliver(
            bundle,
            str(source),
            dead_letter=dead,
            state_dir=tmp_path / "state",
            quiet=True,
            options=replace(FAST, concurrency=1),
        )
    sent = [(r.status, [e["insert_id"] for e in r.body["events"]]) for r in emu.received]
    first, second, third = uuids[:6], uuids[6:12], uuids[12:]
    assert (
        sent
        == [
            (200, first),
            (429, second),  # the heavy user's 3 events and C's 3: nothing ingested
            (200, second[3:]),  # C's at once, without the heavy user's
            (200, third),  # the next request is not held back by the 429
            (200, second[:3]),  # the heavy user's, alone, after the pause
        ]
    )
    assert accepted(emu.records("/2/httpapi"), lambda e: e["insert_id"]) == {u: 1 for u in uuids}
    assert not dead.exists() and report.balanced() and report.delivered == len(uuids)
    assert report.throttled == 1 and report.retries == 2


def test_a_wrong_api_key_stops_the_run_without_dead_letters(tmp_path: Path) -> None:
    emu = AmplitudeEmulator("another-key")
    with serve(emu) as url:
        report, _, dead = run(url, tmp_path, 2)
    assert report.interrupted
    assert any("Invalid API key" in w for w in report.warnings)
    assert not dead.exists()
    assert emu.records() == []
