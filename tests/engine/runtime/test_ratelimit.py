"""Rate limits: the partner's sliding window never sees more than the configured limit."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from moerules.connectors.emulation import FaultPlan, serve
from moerules.connectors.emulation import RateLimit as WindowLimit
from moerules.connectors.moengage import sink as sink_module
from moerules.connectors.moengage.emulator import MoEngageLimits
from moerules.engine.connector import EVENT, ITEMS, USER, Item, RateLimit, WireRequest
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.ratelimit import RateLimiter

from tests.engine.runtime.conftest import (
    FAST,
    KEY,
    WS,
    TimedEmulator,
    compiled,
    delivered,
    expected_ids,
    write_input,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttled_at_partner(arrivals: list[float], limit: WindowLimit) -> int:
    """How many of ``arrivals`` the emulator's own sliding-window limiter would refuse."""
    clock = FakeClock()
    plan = FaultPlan(clock=clock).set_rate_limit(limit)
    refused = 0
    for at in sorted(arrivals):
        clock.now = at
        refused += plan.decide("/v1/transition/WS") is not None
    return refused


def greedy_slots(limiter: RateLimiter, keys: list[str], count: int) -> list[float]:
    """Slots for ``count`` requests all waiting at once: the densest traffic there can be."""
    return [limiter.reserve(keys[i % len(keys)]) for i in range(count)]


@pytest.mark.parametrize("per_second", [1, 5, 20, 200, 500])
def test_paced_requests_pass_a_sliding_window_despite_jitter(per_second: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(per_second, 1.0)], clock=clock)
    slots = greedy_slots(limiter, ["transition"], per_second * 10)
    rng = random.Random(per_second)
    arrivals = [s + rng.uniform(0.0, 0.0299) for s in slots]  # up to 30 ms of network jitter
    assert throttled_at_partner(arrivals, WindowLimit(per_second=per_second)) == 0
    sustained = (len(slots) - 1) / (slots[-1] - slots[0]) if len(slots) > 1 else 0.0
    assert sustained >= 0.95 * per_second


def test_naive_bucket_would_be_throttled() -> None:
    """Why the pacing: a bucket of capacity = rate spends its burst, then refills into 429s."""
    arrivals = [0.0] * 20 + [0.05 * i for i in range(1, 21)]
    assert throttled_at_partner(arrivals, WindowLimit(per_second=20)) > 0


def departures_with_late_wakeups(*, check_departures: bool) -> list[float]:
    """4 senders at 50/s; one wakeup in ten comes up to 80 ms late (a busy event loop)."""
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(50, 1.0)], clock=clock)
    rng = random.Random(5)

    def wake(slot: float) -> float:
        return slot + (rng.uniform(0.0, 0.08) if rng.random() < 0.1 else 0.0)

    wakeups = [wake(limiter.reserve("k")) for _ in range(4)]
    departures: list[float] = []
    while len(departures) < 1000:
        wakeups.sort()
        clock.now = wakeups.pop(0)
        wait = limiter.depart("k") if check_departures else 0.0
        if wait > 0:
            wakeups.append(clock.now + wait)  # sleeps, then tries again
            continue
        departures.append(clock.now)
        wakeups.append(wake(limiter.reserve("k")))
    return departures


def test_late_wakeups_cannot_crowd_the_window() -> None:
    """Pacing plans slots; the log of real departures keeps the limit when senders run late."""
    paced_only = departures_with_late_wakeups(check_departures=False)
    assert throttled_at_partner(paced_only, WindowLimit(per_second=50)) > 0
    departures = departures_with_late_wakeups(check_departures=True)
    assert throttled_at_partner(departures, WindowLimit(per_second=50)) == 0
    assert len(departures) / (departures[-1] - departures[0]) >= 0.95 * 50


def test_moengage_default_limits_per_second_and_per_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(500, 1.0), RateLimit(15_000, 60.0)], clock=clock)
    slots = greedy_slots(limiter, ["transition", "event", "customer"], 40_000)
    rng = random.Random(1)
    arrivals = [s + rng.uniform(0.0, 0.0299) for s in slots]
    assert throttled_at_partner(arrivals, WindowLimit(per_second=500, per_minute=15_000)) == 0
    per_minute = sum(1 for s in slots if 60.0 <= s < 120.0)
    assert 0.95 * 15_000 <= per_minute <= 15_000


def test_every_matching_bucket_must_admit() -> None:
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(10, 1.0, "event"), RateLimit(4, 1.0, "*")], clock=clock)
    slots = greedy_slots(limiter, ["event", "customer"], 40)
    assert throttled_at_partner(slots, WindowLimit(per_second=4)) == 0
    only_events = RateLimiter(
        [RateLimit(10, 1.0, "event"), RateLimit(4, 1.0, "customer")], clock=FakeClock()
    )
    event_slots = greedy_slots(only_events, ["event"], 50)
    assert throttled_at_partner(event_slots, WindowLimit(per_second=10)) == 0
    assert throttled_at_partner(event_slots, WindowLimit(per_second=4)) > 0  # not limited by 4


def test_a_429_widens_the_margin() -> None:
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(100, 1.0)], clock=clock)
    before = limiter.buckets[0].rate
    limiter.widen("transition")
    assert limiter.buckets[0].rate < before
    for _ in range(20):
        limiter.widen("transition")
    slots = greedy_slots(limiter, ["transition"], 500)
    late = [s + 0.1 for s in slots[::2]] + slots[1::2]  # 100 ms of jitter on every other one
    assert throttled_at_partner(late, WindowLimit(per_second=100)) == 0
    assert limiter.buckets[0].rate >= 0.85 * 100


def test_pause_holds_back_every_key_sharing_a_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter([RateLimit(100, 1.0)], clock=clock)
    limiter.pause("transition", 2.0)
    assert limiter.reserve("event") >= 2.0
    assert limiter.reserve("transition") >= 2.0
    unlimited = RateLimiter([], clock=clock)
    unlimited.pause("a", 1.0)
    assert unlimited.reserve("a") == 1.0
    assert unlimited.reserve("b") == 0.0


@pytest.mark.anyio
async def test_acquire_takes_a_new_slot_after_a_pause() -> None:
    limiter = RateLimiter([RateLimit(1, 0.05)])
    await limiter.acquire("k")  # takes the only slot; the next one is ~50 ms away
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, "k")
        await anyio.sleep(0.01)
        limiter.pause("k", 0.3)  # arrives while the waiter sleeps towards its slot
    assert time.monotonic() - started >= 0.29


def test_rate_at_the_emulator_never_exceeds_the_limit(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    limit = 30
    emu.faults.set_rate_limit(WindowLimit(per_second=limit))
    write_input(tmp_path / "in.jsonl", 100)
    report = deliver(
        compiled(
            url, "destination.max_request_bytes=1024", f"destination.requests_per_second={limit}"
        ),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert emu.stats()["rate_limited"] == 0 and report.throttled == 0
    arrivals = sorted(emu.arrivals)
    assert len(arrivals) == report.requests > limit
    busiest = max(sum(1 for b in arrivals if a - 1.0 < b <= a) for a in arrivals)
    assert busiest <= limit
    burst = 1  # the bucket's burst at 30/s; afterwards the pace is steady
    sustained = (len(arrivals) - burst) / (arrivals[-1] - arrivals[0])
    assert sustained >= 0.9 * limit


def test_item_limits_cost_each_request_what_it_carries() -> None:
    clock = FakeClock()
    users = RateLimit(100, 10.0, "transition", counts=ITEMS, kind=USER)
    limiter = RateLimiter([users, RateLimit(1000, 1.0)], clock=clock)
    carrying = WireRequest(
        "POST",
        "u",
        {},
        b"",
        [Item(USER, f"c{n}", "", {}, {}, None, (n, -1), "user") for n in range(25)],
        limit_key="transition",
    )
    no_users = WireRequest(
        "POST",
        "u",
        {},
        b"",
        [Item(EVENT, "c", "E", {}, {}, None, (1, 0), "r")],
        limit_key="transition",
    )
    departures: list[float] = []
    for _ in range(8):  # 200 users: two windows' worth
        at = limiter.reserve("transition", carrying)
        clock.now = at
        while (wait := limiter.depart("transition", carrying)) > 0:
            clock.now += wait
        departures.append(clock.now)
    span = users.per_seconds * 1.03
    assert max(sum(25 for b in departures if b <= a < b + span) for a in departures) <= 100
    assert departures[-1] > span  # the users' limit made them wait
    # a request with no users takes nothing from the users' bucket: it goes at once
    assert limiter.reserve("transition", no_users) <= clock.now + 0.01


def test_a_healthy_run_meets_no_429_from_per_minute_item_caps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9.2: the Data API caps users and events per minute across all requests. Paced by
    requests alone, a run of small requests is refused; paced by what requests carry, never.
    (The emulator's minute is scaled down to 2 s so that the test takes seconds.)"""
    caps = MoEngageLimits(bulk_users_per_minute=30, bulk_events_per_minute=90, minute=2.0)
    write_input(tmp_path / "in.jsonl", 40)  # 40 users and 120 events
    sets = ("destination.max_request_bytes=2048",)

    def run(
        limits: tuple[tuple[str, str, int, float], ...], state: str
    ) -> tuple[int, Any, set[str]]:
        monkeypatch.setattr(sink_module, "ENDPOINT_LIMITS", limits)
        emu = TimedEmulator(WS, KEY, limits=caps)
        with serve(emu) as url:
            report = deliver(
                compiled(url, *sets),
                str(tmp_path / "in.jsonl"),
                state_dir=tmp_path / state,
                quiet=True,
                options=FAST,
            )
        assert report.balanced(), report.to_dict()
        return report.statuses["429"], report, set(delivered(emu))

    refused, report, _ = run((), "unpaced")  # requests/s only: the caps are met head-on
    assert refused > 0 and report.throttled == refused, report.to_dict()
    refused, report, got = run(
        (("transition", USER, 30, 2.0), ("transition", EVENT, 90, 2.0)), "paced"
    )
    assert refused == 0 and report.throttled == 0 and report.retries == 0
    assert got == expected_ids(1, 40) and not report.dead_lettered
