"""Acknowledged means delivered: kill -9 after the 2xx, a burst past the spool's limit, a
graceful stop with work in flight, a quiet stream that must still flush on time."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
from moerules.connectors.emulation import Fault, MoEngageEmulator
from moerules.connectors.moengage.sink import DEFAULT_MAX_AGE

from tests.engine.service.conftest import (
    AUTH,
    BUNDLE,
    JSON,
    ServiceProcess,
    accepted_ids,
    endpoint,
    payloads,
    wait_until,
)

DEPTH = f'moerules_spool_depth{{bundle="{BUNDLE}"}}'


def expected(first: int, last: int, events: int = 2) -> set[str]:
    return {f"user:c-{n}" for n in range(first, last + 1)} | {
        f"event:{n}-{i}" for n in range(first, last + 1) for i in range(events)
    }


def test_kill_9_between_acknowledgement_and_delivery(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    """Every payload answered 202 is delivered after a restart, exactly once here: nothing
    reached the partner before the crash (its every answer was 503)."""
    emu, url = emulator
    emu.faults.push(Fault("503"), count=100_000)
    # one try, then a long backoff: the crash comes while the payloads wait to be sent again
    first = start_service("--set", endpoint(url), "--backoff-base", "60", "--backoff-cap", "60")
    for payload in payloads(1, 20):
        assert first.post(payload).status_code == 202
    assert wait_until(
        lambda: emu.stats()["by_status"].get("503", 0) >= 1, timeout=DEFAULT_MAX_AGE + 10
    ), "no delivery was tried"
    first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert accepted_ids(emu) == {}
    emu.faults.clear()
    second = start_service("--set", endpoint(url))
    recovered = second.wait_event("spool recovered")
    assert recovered["messages"] == 20
    assert wait_until(lambda: set(accepted_ids(emu)) == expected(1, 20), timeout=30)
    assert set(accepted_ids(emu).values()) == {1}  # exactly once
    assert wait_until(lambda: second.metrics()[DEPTH] == 0)


def test_kill_9_at_random_points_delivers_everything_at_least_once(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    """Payloads keep coming and deliveries are under way at each kill; the MoEngage Data API
    does not de-duplicate, so a payload in flight at a kill may arrive twice, never zero times."""
    emu, url = emulator
    args = (
        "--set",
        endpoint(url),
        "--set",
        "destination.max_request_bytes=1024",
        "--set",
        "destination.requests_per_second=5",
        "--concurrency",
        "2",
    )
    rng = random.Random(13)
    sent = 0
    for _ in range(3):
        service = start_service(*args)
        before = len(emu.received)
        with httpx.Client(auth=AUTH, headers=JSON, timeout=30) as client:
            for payload in payloads(sent + 1, sent + 30):
                response = client.post(service.route(), content=orjson.dumps(payload))
                assert response.status_code == 202
        sent += 30

        def arrived(b: int = before) -> bool:
            return len(emu.received) >= b + 2

        assert wait_until(arrived, timeout=20), service.log_text()
        time.sleep(rng.uniform(0.0, 0.5))
        service.kill()
        assert set(accepted_ids(emu)) != expected(1, sent), "nothing was left at the kill"
    final = start_service(*args)
    assert wait_until(lambda: set(accepted_ids(emu)) == expected(1, sent), timeout=60)
    assert wait_until(lambda: final.metrics()[DEPTH] == 0)
    counts = accepted_ids(emu)
    assert min(counts.values()) == 1


def test_a_burst_past_capacity_gets_429_and_loses_nothing(
    start_service: Callable[..., ServiceProcess], emulator: tuple[MoEngageEmulator, str]
) -> None:
    emu, url = emulator
    emu.faults.push(Fault("slow", delay=0.3), count=100_000)  # a partner slower than the burst
    service = start_service(
        "--set",
        endpoint(url),
        "--max-spool-messages",
        "10",
        "--retry-after",
        "1",
        "--concurrency",
        "1",
        "--set",
        "destination.max_request_bytes=1024",
    )
    batches = payloads(1, 80)
    statuses: dict[int, list[int]] = {}
    lock = threading.Lock()
    client = httpx.Client(auth=AUTH, headers=JSON, timeout=30)

    def post_until_accepted(number: int) -> None:
        """As a partner does: on 429, wait Retry-After and send the same payload again."""
        while True:
            response = client.post(service.route(), content=orjson.dumps(batches[number - 1]))
            with lock:
                statuses.setdefault(number, []).append(response.status_code)
            if response.status_code == 202:
                return
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == "too many payloads waiting"
            time.sleep(0.2)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post_until_accepted, range(1, 81)))
    client.close()
    throttled = sum(codes.count(429) for codes in statuses.values())
    assert throttled > 0, "the burst never met the limit"
    assert all(codes[-1] == 202 for codes in statuses.values())
    emu.faults.clear()
    assert wait_until(lambda: set(accepted_ids(emu)) == expected(1, 80), timeout=60)
    assert set(accepted_ids(emu).values()) == {1}
    metrics = service.metrics()
    assert (
        metrics[
            f'moerules_ingest_requests_total{{bundle="{BUNDLE}",partner="mparticle",status="429"}}'
        ]
        == throttled
    )
    assert (
        metrics[
            f'moerules_ingest_requests_total{{bundle="{BUNDLE}",partner="mparticle",status="202"}}'
        ]
        == 80
    )


def test_a_quiet_stream_is_flushed_on_time(
    start_service: Callable[..., ServiceProcess], emulator: tuple[MoEngageEmulator, str]
) -> None:
    """One payload and then silence: the batch leaves when its max_age is reached, not when
    a request fills up or the service stops."""
    emu, url = emulator
    service = start_service("--set", endpoint(url))
    posted = time.monotonic()
    assert service.post(payloads(1, 1)[0]).status_code == 202
    assert wait_until(lambda: bool(accepted_ids(emu)), timeout=DEFAULT_MAX_AGE + 10)
    waited = time.monotonic() - posted
    assert waited >= DEFAULT_MAX_AGE * 0.8, "sent before its batch was old enough"
    assert set(accepted_ids(emu)) == expected(1, 1)
    assert service.process.poll() is None  # still serving: no stop flushed it


def test_sigterm_drains_within_the_deadline_and_keeps_the_rest(
    start_service: Callable[..., ServiceProcess],
    emulator: tuple[MoEngageEmulator, str],
    tmp_path: Path,
) -> None:
    emu, url = emulator
    emu.faults.push(Fault("503"), count=100_000)  # nothing can be delivered for now
    service = start_service(
        "--set",
        endpoint(url),
        "--drain-timeout",
        "1",
        "--backoff-base",
        "0.2",
        "--backoff-cap",
        "0.2",
        "--max-attempts",
        "1000",
    )
    for payload in payloads(1, 5):
        assert service.post(payload).status_code == 202
    assert wait_until(
        lambda: emu.stats()["by_status"].get("503", 0) >= 1, timeout=DEFAULT_MAX_AGE + 10
    )
    stopped_at = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=20) == 0
    assert time.monotonic() - stopped_at < 8
    stopping = service.wait_event("stopping")
    assert stopping["reason"] == "SIGTERM"
    assert service.wait_event("stopped")["spooled"] == {BUNDLE: 5}
    emu.faults.clear()
    again = start_service("--set", endpoint(url))
    assert wait_until(lambda: set(accepted_ids(emu)) == expected(1, 5), timeout=30)
    assert again.wait_event("spool recovered")["messages"] == 5


def test_sigterm_with_nothing_pending_exits_at_once(
    start_service: Callable[..., ServiceProcess], emulator: tuple[MoEngageEmulator, str]
) -> None:
    emu, url = emulator
    service = start_service("--set", endpoint(url))
    assert service.post(payloads(1, 1)[0]).status_code == 202
    service.signal(signal.SIGINT)  # before the batch's max_age: the stop flushes it
    assert service.wait(timeout=20) == 0
    assert set(accepted_ids(emu)) == expected(1, 1)
    assert service.wait_event("stopped")["spooled"] == {BUNDLE: 0}


def test_a_refused_key_pauses_delivery_and_keeps_accepting(
    start_service: Callable[..., ServiceProcess], emulator: tuple[MoEngageEmulator, str]
) -> None:
    """401 from the partner is fatal for a run; the service keeps the payloads, keeps
    accepting, and tries again later (here: after the partner's key was put right)."""
    emu, url = emulator
    right_key = emu.data_api_key
    emu.data_api_key = "rotated-key-the-service-does-not-know"
    service = start_service("--set", endpoint(url))
    assert service.post(payloads(1, 1)[0]).status_code == 202
    stopped = service.wait_event("delivery stopped", timeout=DEFAULT_MAX_AGE + 10)
    assert stopped["bundle"] == BUNDLE and "401" in stopped["reason"]
    metrics = service.metrics()
    assert metrics[f'moerules_delivery_up{{bundle="{BUNDLE}"}}'] == 0
    assert metrics[DEPTH] == 1
    assert service.post(payloads(2, 2)[0]).status_code == 202  # still accepting
    emu.data_api_key = right_key
    assert wait_until(lambda: set(accepted_ids(emu)) == expected(1, 2), timeout=30)
    assert wait_until(lambda: service.metrics()[DEPTH] == 0)
    assert service.metrics()[f'moerules_delivery_up{{bundle="{BUNDLE}"}}'] == 1
