"""The partners' own usage limits: so many requests, events or users per window.

Unlike the fault plan's rate limiter (a test's knob), these model what the partner
enforces, counting what a request carries: MoEngage's 60,000 users and 60,000 events per
minute across bulk requests, Amplitude's events per second per user. Windows are
constructor arguments so a test can shrink a minute to a fraction of a second.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


class SlidingWindow:
    """At most `limit` units within any `window` seconds (a rolling window).

    Memory is one entry per admitted take while it is inside the window, so at most
    `limit` entries. Not thread-safe on its own; `Quotas` serialises access.
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or not window > 0:
            raise ValueError("a usage limit needs limit >= 1 and a window > 0 seconds")
        self.limit = limit
        self.window = window
        self._taken: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        while self._taken and self._taken[0][0] <= now - self.window:
            self._used -= self._taken.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self._used

    def wait(self, units: int, now: float) -> float | None:
        """Seconds until `units` more fit, or None when they fit now."""
        self._expire(now)
        if self._used + units <= self.limit:
            return None
        if units > self.limit:  # never fits: the client must split the request
            return self.window
        excess = self._used + units - self.limit
        freed = 0
        for at, taken in self._taken:
            freed += taken
            if freed >= excess:
                return max(at + self.window - now, 0.001)
        return self.window  # pragma: no cover - freed always reaches excess

    def take(self, units: int, now: float) -> None:
        if units > 0:
            self._taken.append((now, units))
            self._used += units

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest use leaves the window (the whole window when idle)."""
        self._expire(now)
        return self._taken[0][0] + self.window - now if self._taken else self.window


@dataclass(frozen=True)
class Breach:
    """A limit the request would exceed: its name, limit, window and wait in seconds."""

    name: str
    limit: int
    window: float
    retry_after: float


class Quotas:
    """A named set of sliding windows checked and charged together, all or nothing."""

    def __init__(self, limits: Mapping[str, tuple[int, float]], clock: Callable[[], float]) -> None:
        if not callable(clock):
            raise TypeError("clock must be a function returning seconds")
        self._specs = dict(limits)
        self._clock = clock
        self._lock = threading.Lock()
        self._windows = {
            name: SlidingWindow(limit, window) for name, (limit, window) in self._specs.items()
        }

    def charge(self, usage: Mapping[str, int]) -> Breach | None:
        """Take `usage` (units per limit name) if every window has room; else change
        nothing and return the breach that frees up last."""
        with self._lock:
            now = self._clock()
            breaches = [
                Breach(name, w.limit, w.window, wait)
                for name, units in usage.items()
                if (w := self._windows.get(name)) is not None
                and (wait := w.wait(units, now)) is not None
            ]
            if breaches:
                return max(breaches, key=lambda b: b.retry_after)
            for name, units in usage.items():
                window = self._windows.get(name)
                if window is not None:
                    window.take(units, now)
            return None

    def headroom(self, name: str) -> tuple[int, int, int] | None:
        """(limit, remaining, seconds until reset) of one window, for x-ratelimit-* headers."""
        with self._lock:
            window = self._windows.get(name)
            if window is None:
                return None
            now = self._clock()
            remaining = max(0, window.limit - window.used(now))
            return window.limit, remaining, max(1, math.ceil(window.reset_in(now)))

    def reset(self) -> None:
        with self._lock:
            self._windows = {
                name: SlidingWindow(limit, window) for name, (limit, window) in self._specs.items()
            }


class PerKeyWindows:
    """A sliding window per key (a user or device id), forgetting idle keys.

    Memory: the keys used within the last window, at most doubled by idle ones between
    sweeps.
    """

    def __init__(self, limit: int, window: float, *, sweep_every: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._sweep_every = sweep_every
        self._next_sweep = sweep_every
        self._windows: dict[str, SlidingWindow] = {}

    def over(self, usage: Mapping[str, int], now: float) -> dict[str, int]:
        """Keys whose window would exceed the limit with `usage` added: key -> units."""
        found: dict[str, int] = {}
        for key, units in usage.items():
            window = self._windows.get(key)
            used = window.used(now) if window is not None else 0
            if used + units > self.limit:
                found[key] = used + units
        return found

    def take(self, usage: Mapping[str, int], now: float) -> None:
        for key, units in usage.items():
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = SlidingWindow(self.limit, self.window)
            window.take(units, now)
        if len(self._windows) > self._next_sweep:
            self._windows = {k: w for k, w in self._windows.items() if w.used(now) > 0}
            # sweep again only once the map has doubled, so a busy window costs O(1) a take
            self._next_sweep = max(self._sweep_every, 2 * len(self._windows))

    def clear(self) -> None:
        self._windows.clear()


class SeenKeys:
    """The de-duplication keys (insert_id, messageId...) seen within `window` seconds,
    remembering at most `most` of them (the oldest are forgotten first)."""

    def __init__(self, window: float, *, most: int = 1_000_000) -> None:
        self.window = window
        self.most = most
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, key: str, now: float) -> bool:
        """True (and remembered) when `key` was not seen within the window."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > now - self.window and len(self._seen) < self.most:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def clear(self) -> None:
        self._seen.clear()
