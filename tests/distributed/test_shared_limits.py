"""One rate limit across workers in a real Redis: no sliding window ever over any limit,
nothing sent while Redis is away, and sending again once a Redis restarted empty is back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from moerules.connectors.emulation import RateLimit as WindowLimit
from moerules.connectors.emulation import serve
from moerules.engine.connector import ITEMS, Item, RateLimit, Sink, WireRequest
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.shared_limits import SharedRateLimiter, connect, workspace_scope
from redis.asyncio import Redis

from tests.distributed.servers import Server
from tests.engine.runtime.conftest import FAST, KEY, WS, TimedEmulator, compiled, write_input


def request(items: int) -> WireRequest:
    carried = [Item("event", f"u{i}", "e", {}, {}, None, (i, -1), "r") for i in range(items)]
    return WireRequest("POST", "http://127.0.0.1/x", {}, b"{}", carried, "default")


def client(server: Server) -> Redis:
    return connect(f"redis://127.0.0.1:{server.port}")


def most_in_window(sent: Sequence[tuple[float, int]], window: float) -> int:
    """The most units in any stretch of ``window`` seconds (each send starts one)."""
    most = 0
    for i, (start, _) in enumerate(sent):
        most = max(most, sum(units for at, units in sent[i:] if at < start + window))
    return most


@pytest.mark.anyio
async def test_three_workers_never_exceed_any_window(redis: Server) -> None:
    # a limit in requests and one in items: a request of n items costs 1 and n
    limits = [RateLimit(20, 1.0), RateLimit(60, 2.0, counts=ITEMS)]
    sent: list[tuple[float, int, int]] = []  # (when, requests, items)
    workers = [SharedRateLimiter(client(redis), "ws-1", limits) for _ in range(3)]
    run_for = 4.0
    start = time.monotonic()

    async def worker(limiter: SharedRateLimiter, seed: int) -> None:
        sizes = [1 + (seed * 7 + k * 3) % 5 for k in range(1000)]
        for size in sizes:
            await limiter.acquire(request(size))
            now = time.monotonic()
            if now - start > run_for:
                return
            sent.append((now, 1, size))

    async with anyio.create_task_group() as tg:
        for n, limiter in enumerate(workers):
            for k in range(3):  # three senders in each worker
                tg.start_soon(worker, limiter, n * 3 + k)
    sent.sort()
    assert most_in_window([(at, r) for at, r, _ in sent], 1.0) <= 20
    assert most_in_window([(at, i) for at, _, i in sent], 2.0) <= 60
    # and the limits are used, not just kept: items bind (60 per 2 s, about 3 per request)
    items = sum(i for _, _, i in sent)
    assert items >= 0.85 * 30 * run_for, items
    calls = sum(w.calls for w in workers)
    # one call per try: each admission (the nine senders' last ones came after the end) and
    # each refusal that made a sender wait
    assert calls == len(sent) + 9 + sum(w.waits for w in workers)
    for w in workers:
        await w.redis.aclose()


@pytest.mark.anyio
async def test_a_request_over_any_limit_is_charged_to_none(redis: Server) -> None:
    limits = [RateLimit(100, 10.0), RateLimit(5, 10.0, counts=ITEMS)]
    limiter = SharedRateLimiter(client(redis), "ws-2", limits, burst_fraction=1.0)
    assert await limiter.try_acquire(request(4)) == 0.0
    wait = await limiter.try_acquire(request(4))  # items refuse: 8 > 5
    assert wait > 1.0
    # the requests limit was not charged for the refused one: one request in its log
    raw = await limiter.redis.hget("moerules:limits:{ws-2}:*:requests:100/10", "sum")
    assert raw is not None and int(raw) == 1
    assert await limiter.try_acquire(request(1)) == 0.0  # 5 items: fits exactly
    await limiter.redis.aclose()


@pytest.mark.anyio
async def test_redis_away_sends_nothing_then_continues_after_an_empty_restart(
    redis: Server,
) -> None:
    limits = [RateLimit(10, 1.0)]
    limiter = SharedRateLimiter(client(redis), "ws-3", limits, retry_wait=0.05, retry_cap=0.2)
    await limiter.acquire(request(1))
    redis.kill()
    admitted = anyio.Event()

    async def send() -> None:
        await limiter.acquire(request(1))
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.sleep(1.0)
        assert not admitted.is_set()  # fail closed: nothing leaves while Redis is away
        assert limiter.unreachable >= 3
        redis.start()  # the same port, empty
        restarted = time.monotonic()
        with anyio.fail_after(10):
            await admitted.wait()
    # a veteran saw the empty Redis: the window counted as full for one span (1.03 s) before
    # anything was sent again, since the partner may still count what left before
    assert time.monotonic() - restarted >= 1.0
    assert await limiter.redis.exists("moerules:limits:{ws-3}:alive") == 1
    log = await limiter.redis.zrange("moerules:limits:{ws-3}:*:requests:10/1:log", 0, -1)
    assert len(log) == 1  # the reset entry has left the window; this request is in it
    await limiter.redis.aclose()


def test_a_run_delivers_through_the_shared_limit(redis: Server, tmp_path: Path) -> None:
    emu = TimedEmulator(WS, KEY)
    with serve(emu) as url:
        limit = 30
        emu.faults.set_rate_limit(WindowLimit(per_second=limit))
        write_input(tmp_path / "in.jsonl", 60)
        made: list[SharedRateLimiter] = []

        def shared(sink: Sink) -> SharedRateLimiter:
            made.append(
                SharedRateLimiter(
                    connect(f"redis://127.0.0.1:{redis.port}"),
                    workspace_scope(sink),
                    sink.rate_limits(),
                )
            )
            return made[0]

        report = deliver(
            compiled(
                url,
                "destination.max_request_bytes=1024",
                f"destination.requests_per_second={limit}",
            ),
            str(tmp_path / "in.jsonl"),
            state_dir=tmp_path,
            quiet=True,
            options=FAST,
            limiter=shared,
        )
        assert emu.stats()["rate_limited"] == 0 and report.throttled == 0
        assert report.ledger.delivered["event"] == 180 and report.requests > 20
        assert made[0].calls >= report.requests  # every request asked Redis
        arrivals = sorted(emu.arrivals)
        assert max(sum(1 for b in arrivals if a - 1.0 < b <= a) for a in arrivals) <= limit
