"""Client-side rate limits, so that a healthy run meets no 429 at all.

Partners count requests in sliding windows measured where the requests *arrive*. A plain token
bucket with capacity = rate lets a full window's worth leave at once and then keeps the window
saturated, so any network jitter tips the partner's count over the limit. Each limit here is a
GCRA bucket (the generic cell rate algorithm: a token bucket kept as one "theoretical arrival
time") that paces requests evenly, allows only a small burst, and leaves room for jitter: in any
stretch of ``per_seconds * (1 + jitter)`` at most ``amount`` units leave.

Pacing plans slots; a busy event loop can still wake a sender late, and a late request next to
an on-time one is exactly the jitter a partner's window punishes. So each bucket also keeps the
log of when requests really left, and a request whose slot came but whose window is full waits:
the guarantee holds for actual departures, not only for plans.

How much jitter to allow is a guess (3 % of the window: 30 ms a second). When a 429 shows the
guess too small for this network, ``widen`` makes the margin larger for the rest of the run.

A limit counts what the partner counts (``RateLimit.counts``): requests, items (of one kind,
when it says so) or body bytes. A request costs each bucket its own number of units (a bulk
request of 300 events and 200 users takes 1 from a requests bucket, 300 from an events
bucket, 200 from a users bucket), and leaves only when every bucket admits it.

>>> limiter = RateLimiter([RateLimit(200, 1.0), RateLimit(60_000, 60.0, counts=ITEMS)])
>>> await limiter.acquire(request)        # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
from anyio.lowlevel import checkpoint
from moerules.engine.connector import RateLimit, WireRequest

__all__ = ["DEFAULT_JITTER", "Limiter", "RateLimiter", "TokenBucket"]

DEFAULT_JITTER = 0.03
MAX_JITTER = 0.15


class Limiter(Protocol):
    """What the sender needs of a limiter: this process's ``RateLimiter``, or one shared by
    every worker of a workspace (engine/runtime/shared_limits.py)."""

    async def acquire(self, target: WireRequest | str) -> None: ...

    def widen(self, key: str) -> None: ...

    def pause(self, key: str, seconds: float) -> None: ...

    async def aclose(self) -> None:
        """Let go of what it holds (a shared limiter's connection) at the end of a run."""


class TokenBucket:
    """One limit as GCRA: units are spaced ``interval`` apart with a burst of ``burst``.

    The spacing comes from counting: in a window of length ``L`` at most
    ``burst - 1 + ceil(L / interval)`` units conform, so ``interval = L / (N + 1 - burst)``
    keeps that at ``N`` for ``L = per_seconds * (1 + jitter)``. A request of ``n`` units
    moves the theoretical arrival time on by ``n`` intervals.
    """

    __slots__ = (
        "burst",
        "departures",
        "in_window",
        "interval",
        "jitter",
        "limit",
        "paused_until",
        "span",
        "tat",
        "tolerance",
    )

    def __init__(
        self, limit: RateLimit, *, burst_fraction: float = 0.01, jitter: float = DEFAULT_JITTER
    ) -> None:
        if limit.amount < 1 or limit.per_seconds <= 0:
            raise ValueError(f"a rate limit needs an amount >= 1 and a positive window: {limit}")
        self.limit = limit
        self.burst = max(1, math.floor(limit.amount * burst_fraction))
        self.jitter = jitter
        self._pace()
        self.tat = -math.inf  # theoretical arrival time of the next request
        self.paused_until = -math.inf
        self.departures: deque[tuple[float, int]] = deque()  # (when, units)
        self.in_window = 0  # units of the departures kept

    def _pace(self) -> None:
        self.span = self.limit.per_seconds * (1.0 + self.jitter)
        self.interval = self.span / (self.limit.amount + 1 - self.burst)
        self.tolerance = (self.burst - 1) * self.interval

    def cost(self, request: WireRequest | None) -> int:
        """Units ``request`` takes (1 with no request), never more than a whole window."""
        units = 1 if request is None else self.limit.cost(request)
        return min(units, self.limit.amount)

    def widen(self, step: float = 0.02, most: float = MAX_JITTER) -> None:
        """Allow more jitter (a slower pace): the partner counted more than this bucket did."""
        self.jitter = min(most, self.jitter + step)
        self._pace()

    @property
    def rate(self) -> float:
        """Sustained requests per second this bucket lets through."""
        return 1.0 / self.interval

    def earliest(self, now: float) -> float:
        return max(now, self.tat - self.tolerance, self.paused_until)

    def commit(self, at: float, units: int = 1) -> None:
        self.tat = max(self.tat, at) + units * self.interval

    def full_for(self, now: float, units: int = 1) -> float:
        """Seconds until ``units`` may really leave (0: now), by the log of departures."""
        departures, span = self.departures, self.span
        # "when + span <= now", written as the wait below computes it: no float gap between
        while departures and departures[0][0] + span - now <= 0:
            self.in_window -= departures.popleft()[1]
        excess = self.in_window + units - self.limit.amount
        if excess <= 0:
            return 0.0
        for when, sent in departures:  # the oldest departures that must leave the window
            excess -= sent
            if excess <= 0:
                return when + span - now
        return span  # not reached: units never exceed the amount

    def depart(self, now: float, units: int = 1) -> None:
        self.departures.append((now, units))
        self.in_window += units


class RateLimiter:
    """Every bucket whose ``limit_key`` matches a request's (or is ``*``) must admit it.

    ``acquire`` reserves a slot in all of them at once and sleeps until it comes, so waiters are
    served in order without waking each other. ``pause`` holds a key back when the partner asks
    to (``Retry-After``); requests whose reserved slot falls inside the pause take a new one.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit],
        *,
        burst_fraction: float = 0.01,
        jitter: float = DEFAULT_JITTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = [
            TokenBucket(limit, burst_fraction=burst_fraction, jitter=jitter) for limit in limits
        ]
        self.clock = clock
        self._by_key: dict[str, list[TokenBucket]] = {}
        self._paused: dict[str, float] = {}

    def _buckets(self, key: str) -> list[TokenBucket]:
        found = self._by_key.get(key)
        if found is None:
            found = [b for b in self.buckets if b.limit.limit_key in ("*", key)]
            self._by_key[key] = found
        return found

    def paused_until(self, key: str) -> float:
        pauses = [b.paused_until for b in self._buckets(key)]
        return max([self._paused.get(key, -math.inf), *pauses])

    def _costs(self, key: str, request: WireRequest | None) -> list[tuple[TokenBucket, int]]:
        """The buckets ``request`` (one request unit when None) takes units from, and how many."""
        costs = [(b, b.cost(request)) for b in self._buckets(key)]
        return [(b, units) for b, units in costs if units > 0]

    def reserve(self, key: str, request: WireRequest | None = None) -> float:
        """Take the next slot for ``key``; returns the clock time at which it may be sent."""
        costs = self._costs(key, request)
        now = self.clock()
        at = max([now, self._paused.get(key, -math.inf), *(b.earliest(now) for b, _ in costs)])
        for bucket, units in costs:
            bucket.commit(at, units)
        return at

    def depart(self, key: str, request: WireRequest | None = None) -> float:
        """Let a request whose slot came leave now (0.0); else the seconds it must still wait."""
        now = self.clock()
        costs = self._costs(key, request)
        wait = max([0.0, *(b.full_for(now, units) for b, units in costs)])
        if wait > 0:
            return wait
        for bucket, units in costs:
            bucket.depart(now, units)
        return 0.0

    async def acquire(self, target: WireRequest | str) -> None:
        """Wait until ``target`` (a request, or one request for a limit key) may leave."""
        request = None if isinstance(target, str) else target
        key = target if isinstance(target, str) else target.limit_key
        while True:
            delay = self.reserve(key, request) - self.clock()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                await checkpoint()
            while self.paused_until(key) <= self.clock():
                wait = self.depart(key, request)
                if wait <= 0:
                    return
                await anyio.sleep(wait)
            # a pause came while it waited: its slot may lie inside the pause, take a new one

    async def aclose(self) -> None:
        """Nothing to let go of: the buckets live in this process."""

    def widen(self, key: str) -> None:
        """A 429 came although the pace kept to the limits: leave more room from now on."""
        for bucket in self._buckets(key):
            bucket.widen()

    def pause(self, key: str, seconds: float) -> None:
        """Send nothing for ``key`` (and what shares its buckets) for ``seconds``."""
        until = self.clock() + seconds
        self._paused[key] = max(self._paused.get(key, -math.inf), until)
        for bucket in self._buckets(key):
            bucket.paused_until = max(bucket.paused_until, until)
