"""Client-side rate limits, so that a healthy run meets no 429 at all.

Partners count requests in sliding windows measured where the requests *arrive*. A plain token
bucket with capacity = rate lets a full window's worth leave at once and then keeps the window
saturated, so any network jitter tips the partner's count over the limit. Each limit here is a
GCRA bucket (the generic cell rate algorithm: a token bucket kept as one "theoretical arrival
time") that paces requests evenly, allows only a small burst, and leaves room for jitter: in any
stretch of ``per_seconds * (1 + jitter)`` at most ``requests`` requests leave.

Pacing plans slots; a busy event loop can still wake a sender late, and a late request next to
an on-time one is exactly the jitter a partner's window punishes. So each bucket also keeps the
log of when requests really left, and a request whose slot came but whose window is full waits:
the guarantee holds for actual departures, not only for plans.

How much jitter to allow is a guess (3 % of the window: 30 ms a second). When a 429 shows the
guess too small for this network, ``widen`` makes the margin larger for the rest of the run.

>>> limiter = RateLimiter([RateLimit(200, 1.0), RateLimit(15_000, 60.0)])
>>> await limiter.acquire("transition")        # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio
from anyio.lowlevel import checkpoint
from moerules.engine.connector import RateLimit

__all__ = ["DEFAULT_JITTER", "RateLimiter", "TokenBucket"]

DEFAULT_JITTER = 0.03
MAX_JITTER = 0.15


class TokenBucket:
    """One limit as GCRA: sends are spaced ``interval`` apart with a burst of ``burst``.

    The spacing comes from counting: in a window of length ``L`` at most
    ``burst - 1 + ceil(L / interval)`` requests conform, so ``interval = L / (N + 1 - burst)``
    keeps that at ``N`` for ``L = per_seconds * (1 + jitter)``.
    """

    __slots__ = ("burst", "departures", "interval", "jitter", "limit", "paused_until", "span",
                 "tat", "tolerance")

    def __init__(self, limit: RateLimit, *, burst_fraction: float = 0.01,
                 jitter: float = DEFAULT_JITTER) -> None:
        if limit.requests < 1 or limit.per_seconds <= 0:
            raise ValueError(f"a rate limit needs requests >= 1 and a positive window: {limit}")
        self.limit = limit
        self.burst = max(1, math.floor(limit.requests * burst_fraction))
        self.jitter = jitter
        self._pace()
        self.tat = -math.inf  # theoretical arrival time of the next request
        self.paused_until = -math.inf
        self.departures: deque[float] = deque()

    def _pace(self) -> None:
        self.span = self.limit.per_seconds * (1.0 + self.jitter)
        self.interval = self.span / (self.limit.requests + 1 - self.burst)
        self.tolerance = (self.burst - 1) * self.interval

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

    def commit(self, at: float) -> None:
        self.tat = max(self.tat, at) + self.interval

    def full_for(self, now: float) -> float:
        """Seconds until a request may really leave (0: now), by the log of departures."""
        departures = self.departures
        while departures and departures[0] <= now - self.span:
            departures.popleft()
        if len(departures) < self.limit.requests:
            return 0.0
        return departures[-self.limit.requests] + self.span - now

    def depart(self, now: float) -> None:
        self.departures.append(now)


class RateLimiter:
    """Every bucket whose ``limit_key`` matches a request's (or is ``*``) must admit it.

    ``acquire`` reserves a slot in all of them at once and sleeps until it comes, so waiters are
    served in order without waking each other. ``pause`` holds a key back when the partner asks
    to (``Retry-After``); requests whose reserved slot falls inside the pause take a new one.
    """

    def __init__(self, limits: Sequence[RateLimit], *, burst_fraction: float = 0.01,
                 jitter: float = DEFAULT_JITTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = [TokenBucket(limit, burst_fraction=burst_fraction, jitter=jitter)
                        for limit in limits]
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

    def reserve(self, key: str) -> float:
        """Take the next slot for ``key``; returns the clock time at which it may be sent."""
        buckets = self._buckets(key)
        now = self.clock()
        at = max([now, self._paused.get(key, -math.inf), *(b.earliest(now) for b in buckets)])
        for bucket in buckets:
            bucket.commit(at)
        return at

    def depart(self, key: str) -> float:
        """Let a request whose slot came leave now (0.0); else the seconds it must still wait."""
        now = self.clock()
        buckets = self._buckets(key)
        wait = max([0.0, *(b.full_for(now) for b in buckets)])
        if wait > 0:
            return wait
        for bucket in buckets:
            bucket.depart(now)
        return 0.0

    async def acquire(self, key: str) -> None:
        """Wait until a request for ``key`` may leave."""
        while True:
            delay = self.reserve(key) - self.clock()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                await checkpoint()
            while self.paused_until(key) <= self.clock():
                wait = self.depart(key)
                if wait <= 0:
                    return
                await anyio.sleep(wait)
            # a pause came while it waited: its slot may lie inside the pause, take a new one

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
