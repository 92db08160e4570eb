"""Fault plan (unit) and every fault kind as a real httpx client sees it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from moerules.connectors.emulation import (
    EMULATORS,
    Fault,
    FaultPlan,
    RateLimit,
    SegmentEmulator,
    serve,
)
from moerules.connectors.emulation.server import build

from tests.connectors.emulation.rawhttp import exchange, head

KEY = "seg-key"
TRACK = {"userId": "user-1", "event": "Clicked"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- FaultPlan without HTTP ------------------------------------------------------------------
def test_script_is_consumed_in_order() -> None:
    plan = FaultPlan().push("503", count=2).push(Fault("429", retry_after=7))
    kinds = [d.fault.kind if (d := plan.decide("/x")) else None for _ in range(4)]
    assert kinds == ["503", "503", "429", None]
    assert plan.pending == 0


def test_script_entries_can_target_a_path() -> None:
    plan = FaultPlan().push(Fault("500", path="/v1/identify")).push("503")
    first = plan.decide("/v1/track")
    assert first is not None and first.fault.kind == "503"
    assert plan.decide("/v1/track") is None
    second = plan.decide("/v1/identify")
    assert second is not None and (second.fault.kind, second.source) == ("500", "script")


def test_random_faults_repeat_with_the_same_seed() -> None:
    def run(seed: int) -> list[str | None]:
        plan = FaultPlan(seed=seed).add_random("500", 0.3).add_random("reset", 0.2)
        return [d.fault.kind if (d := plan.decide("/")) else None for _ in range(200)]

    first = run(42)
    assert first == run(42)
    assert first != run(43)
    assert 30 <= first.count("500") <= 90
    assert 15 <= first.count("reset") <= 65
    assert 60 <= first.count(None) <= 140


def test_clear_restarts_the_random_sequence() -> None:
    plan = FaultPlan(seed=5).add_random("500", 0.5)
    first = [plan.decide("/") is None for _ in range(50)]
    plan.clear()
    plan.add_random("500", 0.5)
    assert [plan.decide("/") is None for _ in range(50)] == first


def test_probabilities_must_not_exceed_one() -> None:
    plan = FaultPlan().add_random("500", 0.7)
    with pytest.raises(ValueError, match="sum to"):
        plan.add_random("503", 0.4)


def test_rate_limit_per_second_and_minute() -> None:
    clock = FakeClock()
    plan = FaultPlan(clock=clock).set_rate_limit(RateLimit(per_second=2, per_minute=3))
    assert plan.decide("/") is None
    clock.now += 0.1
    assert plan.decide("/") is None
    limited = plan.decide("/")
    assert limited is not None
    assert (limited.fault.kind, limited.fault.retry_after, limited.source) == (
        "429",
        1,
        "rate_limit",
    )
    clock.now += 1.0
    assert plan.decide("/") is None  # third of the minute
    clock.now += 1.0
    minute = plan.decide("/")
    assert minute is not None and minute.fault.retry_after == 58  # oldest admitted at t=1000
    clock.now = 1060.0
    assert plan.decide("/") is None


def test_rate_limit_without_retry_after_header() -> None:
    plan = FaultPlan(clock=FakeClock()).set_rate_limit(
        RateLimit(per_minute=1, retry_after_header=False)
    )
    assert plan.decide("/") is None
    limited = plan.decide("/")
    assert limited is not None and limited.fault.kind == "429_bare"


def test_failing_records_by_index_and_probability() -> None:
    plan = FaultPlan(seed=1)
    assert plan.failing_records(Fault("record_400", indices=(0, 3, 9)), 5) == [0, 3]
    chosen = plan.failing_records(Fault("record_400", record_probability=0.5), 100)
    assert 30 <= len(chosen) <= 70
    assert (
        FaultPlan(seed=1).failing_records(Fault("record_400", record_probability=0.5), 100)
        == chosen
    )


def test_configure_round_trip() -> None:
    plan = FaultPlan()
    plan.configure(
        {
            "seed": 9,
            "script": [
                {"kind": "503", "count": 2},
                {"kind": "slow", "delay": 0.5},
                {"kind": "record_400"},
            ],
            "random": [{"kind": "500", "probability": 0.25}],
            "rate_limit": {"per_second": 10},
        }
    )
    config = plan.to_config()
    assert config["seed"] == 9
    assert [(e["kind"], e["count"]) for e in config["script"]] == [
        ("503", 2),
        ("slow", 1),
        ("record_400", 1),
    ]
    assert config["script"][1]["delay"] == 0.5
    assert config["script"][2]["indices"] == [0]
    assert config["random"] == [
        {"kind": "500", "retry_after": 1, "delay": 0.0, "path": "", "probability": 0.25}
    ]
    assert config["rate_limit"] == {
        "per_second": 10,
        "per_minute": None,
        "retry_after_header": True,
        "path": "",
    }
    plan.configure({"append": True, "script": [{"kind": "reset"}]})
    assert plan.pending == 5
    plan.configure({})
    assert plan.to_config() == {"seed": 9, "script": [], "random": [], "rate_limit": None}


def test_a_huge_count_costs_one_entry() -> None:
    plan = FaultPlan().push("503", count=1_000_000)
    plan.configure({"append": True, "script": [{"kind": "503", "count": 999_999}]})
    assert plan.pending == 1_999_999
    assert plan.to_config()["script"] == [
        {"kind": "503", "retry_after": 1, "delay": 0.0, "path": "", "count": 1_000_000},
        {"kind": "503", "retry_after": 1, "delay": 0.0, "path": "", "count": 999_999},
    ]
    decision = plan.decide("/")
    assert decision is not None and decision.fault.kind == "503"
    assert plan.pending == 1_999_998


def test_reset_restores_the_initial_seed() -> None:
    plan = FaultPlan(seed=3)
    plan.configure({"seed": 2**63 - 1, "random": [{"kind": "500", "probability": 0.5}]})
    plan.clear()
    assert plan.to_config()["seed"] == 2**63 - 1  # clear() keeps the seed, so runs repeat
    plan.reset()
    assert plan.to_config() == {"seed": 3, "script": [], "random": [], "rate_limit": None}


def test_a_refused_config_changes_nothing() -> None:
    plan = FaultPlan().push("503").add_random("500", 0.5)
    before = plan.to_config()
    for config in (
        {"script": [{"kind": "429"}], "random": [{"kind": "500", "probability": 2}]},
        {"append": True, "random": [{"kind": "503", "probability": 0.6}]},
        {"seed": 1, "script": [{"kind": "429", "count": 10**8}]},
    ):
        with pytest.raises(ValueError):
            plan.configure(config)
        assert plan.to_config() == before


@pytest.mark.parametrize(
    "config",
    [
        {"script": [{"kind": "teapot"}]},
        {"script": [{"kind": "503", "count": 0}]},
        {"script": [{"kind": "503", "colour": "red"}]},
        {"random": [{"kind": "500"}]},
        {"rate_limit": {}},
        {"rate_limit": {"per_second": 0}},
        {"chaos": True},
        {"script": {"kind": "503"}},
        # every number is bounded, and of the right type
        {"script": [{"kind": "503", "count": 10**8}]},
        {"script": [{"kind": "503", "count": True}]},
        {"script": [{"kind": "503", "count": "5"}]},
        {"script": [{"kind": "503"}] * 1001},
        {"seed": -1},
        {"seed": 2**63},
        {"seed": 1.5},
        {"seed": 1e300},
        {"script": [{"kind": "429", "retry_after": 86_401}]},
        {"script": [{"kind": "429", "retry_after": -1}]},
        {"script": [{"kind": "slow", "delay": 601}]},
        {"script": [{"kind": "slow", "delay": float("nan")}]},
        {"script": [{"kind": "slow", "delay": float("inf")}]},
        {"script": [{"kind": "record_400", "indices": list(range(10_001))}]},
        {"script": [{"kind": "record_400", "indices": [-1]}]},
        {"script": [{"kind": "record_400", "record_probability": 1.5}]},
        {"script": [{"kind": "500", "path": "/" * 1001}]},
        {"script": [{"kind": 5}]},
        {"random": [{"kind": "500", "probability": float("nan")}]},
        {"random": [{"kind": "500", "probability": 0.001}] * 101},
        {"rate_limit": {"per_second": 100_001}},
        {"rate_limit": {"per_minute": 1.5}},
        {"rate_limit": {"per_second": 5, "retry_after_header": "no"}},
        {"append": "yes"},
    ],
)
def test_configure_rejects_bad_config(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultPlan().configure(config)


# -- faults over real HTTP -------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu() -> SegmentEmulator:
    return SegmentEmulator(KEY)


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5.0, auth=(KEY, "")) as c:
        yield c


def track(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/track", json=TRACK)


def test_429_with_retry_after_seconds(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push(Fault("429", retry_after=3))
    response = track(client)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert emu.received == []
    assert track(client).status_code == 200


def test_429_with_retry_after_date(client: httpx.Client) -> None:
    client.post("/_emulator/faults", json={"script": [{"kind": "429_date", "retry_after": 30}]})
    response = track(client)
    assert response.status_code == 429
    when = parsedate_to_datetime(response.headers["retry-after"])
    assert response.headers["retry-after"].endswith(" GMT")
    assert 28 <= when.timestamp() - time.time() <= 31


def test_429_without_retry_after(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push("429_bare")
    response = track(client)
    assert response.status_code == 429
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [("500", 500, "Internal Server Error"), ("503", 503, "Service Unavailable")],
)
def test_server_errors(
    client: httpx.Client, emu: SegmentEmulator, kind: Any, status: int, message: str
) -> None:
    emu.faults.push(kind)
    response = track(client)
    assert response.status_code == status
    assert response.json() == {"success": False, "code": "server_error", "message": message}
    assert emu.received == []


def test_connection_reset_raises_in_the_client(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push("reset")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        track(client)
    assert emu.received == []
    assert emu.stats()["faults"] == {"reset": 1}
    assert track(client).status_code == 200  # the client recovers on a new connection


def test_connection_reset_sends_no_bytes(url: str, emu: SegmentEmulator) -> None:
    emu.faults.push("reset")
    host, port = url.removeprefix("http://").split(":")
    body = b'{"userId":"u1","event":"e","writeKey":"seg-key"}'
    request = (
        b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        assert sock.recv(1024) == b""  # orderly close, not a single response byte


def test_slow_response_then_success(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push(Fault("slow", delay=0.3))
    started = time.monotonic()
    response = track(client)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert len(emu.records()) == 1


def test_slow_response_times_out_but_is_still_ingested(url: str, emu: SegmentEmulator) -> None:
    emu.faults.push(Fault("slow", delay=0.4))
    with (
        httpx.Client(base_url=url, timeout=0.1, auth=(KEY, "")) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        track(c)
    assert len(emu.wait_for_records(1, timeout=3.0)) == 1  # the duplicate-on-retry hazard


def test_delay_applies_to_error_faults(client: httpx.Client, emu: SegmentEmulator) -> None:
    emu.faults.push(Fault("503", delay=0.2))
    started = time.monotonic()
    assert track(client).status_code == 503
    assert time.monotonic() - started >= 0.2


def test_control_endpoints(client: httpx.Client, emu: SegmentEmulator) -> None:
    configured = client.post(
        "/_emulator/faults", json={"script": [{"kind": "503"}, {"kind": "none"}, {"kind": "500"}]}
    )
    assert configured.status_code == 200
    assert [e["kind"] for e in configured.json()["script"]] == ["503", "none", "500"]
    assert [e["kind"] for e in client.get("/_emulator/faults").json()["script"]] == [
        "503",
        "none",
        "500",
    ]
    assert [track(client).status_code for _ in range(4)] == [503, 200, 500, 200]
    received = client.get("/_emulator/received").json()
    assert [r["status"] for r in received] == [200, 200]
    assert received[0]["body"] == TRACK
    assert received[0]["records"] == [dict(TRACK, type="track")]
    assert received[0]["headers"]["content-type"] == "application/json"
    assert client.get("/_emulator/stats").json() == {
        "requests": 4,
        "by_status": {"200": 2, "500": 1, "503": 1},
        "faults": {"500": 1, "503": 1},
        "rate_limited": 0,
        "received": 2,
        "records": 2,
        "evicted": 0,
    }
    assert client.post("/_emulator/reset").json() == {"status": "ok"}
    assert client.get("/_emulator/received").json() == []
    assert client.get("/_emulator/stats").json()["requests"] == 0


def test_control_endpoint_rejects_bad_config(client: httpx.Client) -> None:
    response = client.post("/_emulator/faults", json={"script": [{"kind": "teapot"}]})
    assert response.status_code == 400
    assert "unknown fault kind 'teapot'" in response.json()["error"]
    assert client.post("/_emulator/faults", content=b"[1]").status_code == 400
    assert client.post("/_emulator/faults", content=b"{bad").status_code == 400


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            b'{"seed": 123456789012345678901234567890}',
            "seed must be an integer within [0, 9223372036854775807], got 1.2345678901234568e+29",
        ),
        (b'{"seed": 1e400}', "number is infinity when parsed as double"),
        (
            b'{"script": [{"kind": "429", "retry_after": 100000000000}]}',
            "retry_after must be an integer within [0, 86400], got 100000000000",
        ),
        (
            b'{"script": [{"kind": "503", "count": 100000000}]}',
            "count must be an integer within [1, 1000000], got 100000000",
        ),
    ],
)
def test_hostile_plans_are_refused_and_the_emulator_keeps_working(
    client: httpx.Client, emu: SegmentEmulator, config: bytes, message: str
) -> None:
    """Issue 8 item 11: a huge seed or retry_after used to make every later request
    answer 500, even after a reset; a count of 10^8 grew memory without bound."""
    response = client.post("/_emulator/faults", content=config)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert client.get("/_emulator/faults").json() == {
        "seed": 0,
        "script": [],
        "random": [],
        "rate_limit": None,
    }
    assert track(client).status_code == 200


def test_the_largest_accepted_values_still_answer(
    client: httpx.Client, emu: SegmentEmulator
) -> None:
    configured = client.post(
        "/_emulator/faults",
        json={
            "seed": 2**63 - 1,
            "script": [
                {"kind": "429_date", "retry_after": 86_400},
                {"kind": "429", "retry_after": 86_400, "count": 1_000_000},
            ],
        },
    )
    assert configured.status_code == 200
    dated = track(client)
    assert dated.status_code == 429
    assert (
        86_390
        <= parsedate_to_datetime(dated.headers["retry-after"]).timestamp() - (time.time())
        <= 86_401
    )
    assert track(client).headers["retry-after"] == "86400"
    assert emu.faults.pending == 999_999
    assert client.get("/_emulator/faults").status_code == 200
    assert client.post("/_emulator/reset").json() == {"status": "ok"}
    assert client.get("/_emulator/faults").json()["seed"] == 0
    assert track(client).status_code == 200


def test_a_client_that_leaves_mid_body_is_not_stored(url: str, emu: SegmentEmulator) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            head(
                "POST", "/v1/track", {"Content-Type": "application/json", "Content-Length": "1000"}
            )
            + b'{"userId"'
        )
    deadline = time.monotonic() + 5
    while emu.stats()["by_status"] != {"499": 1} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.stats()["by_status"] == {"499": 1}  # nginx's "client closed request"
    assert emu.received == []
    with httpx.Client(base_url=url, auth=(KEY, "")) as c:
        assert track(c).status_code == 200


def test_control_endpoint_refuses_a_huge_plan_unread(url: str) -> None:
    response = exchange(
        url,
        head(
            "POST",
            "/_emulator/faults",
            {"Content-Type": "application/json", "Content-Length": str(10**9)},
        ),
    )
    assert response.status == 413
    assert response.json() == {"error": "the fault plan request body exceeds 65536 bytes"}


def test_random_faults_over_http_are_reproducible(client: httpx.Client) -> None:
    config = {"seed": 11, "random": [{"kind": "503", "probability": 0.5}]}

    def statuses() -> list[int]:
        client.post("/_emulator/faults", json=config)
        return [track(client).status_code for _ in range(20)]

    first = statuses()
    assert set(first) == {200, 503}
    assert statuses() == first


def test_record_fault_is_ignored_by_apis_without_per_record_errors(
    client: httpx.Client, emu: SegmentEmulator
) -> None:
    emu.faults.push("record_400")
    assert track(client).status_code == 200


def test_rate_limiter_answers_429_above_the_limit(
    client: httpx.Client, emu: SegmentEmulator
) -> None:
    client.post("/_emulator/faults", json={"rate_limit": {"per_minute": 5}})
    responses = [track(client) for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in responses[5:])
    assert len(emu.records()) == 5
    assert emu.stats()["rate_limited"] == 3


def test_rate_limiter_per_second_recovers(client: httpx.Client) -> None:
    client.post("/_emulator/faults", json={"rate_limit": {"per_second": 3}})
    burst = [track(client).status_code for _ in range(4)]
    assert burst == [200, 200, 200, 429]
    time.sleep(1.05)
    assert track(client).status_code == 200


def test_a_paced_client_never_hits_the_limit(client: httpx.Client, emu: SegmentEmulator) -> None:
    client.post("/_emulator/faults", json={"rate_limit": {"per_second": 10}})
    for _ in range(6):
        assert track(client).status_code == 200
        time.sleep(0.11)
    assert emu.stats()["rate_limited"] == 0


def test_concurrent_requests_are_all_recorded(client: httpx.Client, emu: SegmentEmulator) -> None:
    def send(i: int) -> int:  # httpx.Client is thread-safe and pools connections
        return client.post("/v1/track", json=dict(TRACK, properties={"i": i})).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses == [200] * 40
    assert sorted(r["properties"]["i"] for r in emu.records()) == list(range(40))


# -- serve() and the registry ----------------------------------------------------------------
def test_serve_stops_its_thread() -> None:
    before = set(threading.enumerate())
    with serve(SegmentEmulator(KEY)) as base:
        assert base.startswith("http://127.0.0.1:")
        assert httpx.get(f"{base}/_emulator/stats").status_code == 200
    assert set(threading.enumerate()) <= before


def test_serve_reports_a_busy_port() -> None:
    with serve(SegmentEmulator(KEY)) as base:
        port = int(base.rsplit(":", 1)[1])
        with (
            pytest.raises(RuntimeError, match="failed to start"),
            serve(SegmentEmulator(KEY), port=port),
        ):
            pass


def test_registry() -> None:
    assert sorted(EMULATORS) == ["amplitude", "mixpanel", "moengage", "segment"]
    emulator = build("amplitude", api_key="k")
    assert emulator.credentials() == {"api_key": "k", "region": "us"}
    with pytest.raises(ValueError, match="unknown emulator"):
        build("braze")
