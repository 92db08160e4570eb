"""Deterministic fault injection for the partner emulators.

Clients must survive throttling, outages, slow answers, dropped connections and
partial rejections. A seeded plan makes each of those reproducible in a test.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast, get_args

FaultKind = Literal[
    "none",  # answer normally (a gap in a script)
    "slow",  # sleep `delay` seconds, then answer normally
    "429",  # 429 with Retry-After in seconds
    "429_date",  # 429 with Retry-After as an HTTP date
    "429_bare",  # 429 without Retry-After
    "500",
    "503",
    "reset",  # close the connection without any HTTP response
    "record_400",  # reject some records of the request (per-record failure)
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
STATUS_OF_KIND: dict[str, int] = {"429": 429, "429_date": 429, "429_bare": 429, "500": 500,
                                  "503": 503}

_FAULT_KEYS = frozenset({"kind", "retry_after", "delay", "indices", "record_probability", "field",
                         "message", "path", "count", "probability"})
_LIMIT_KEYS = frozenset({"per_second", "per_minute", "retry_after_header", "path"})
_PLAN_KEYS = frozenset({"seed", "append", "script", "random", "rate_limit"})


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; `delay` applies before any kind, not only `slow`."""

    kind: FaultKind
    retry_after: int = 1
    delay: float = 0.0
    indices: tuple[int, ...] = ()
    record_probability: float = 0.0
    field: str | None = None
    message: str | None = None
    path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.retry_after < 0 or self.delay < 0:
            raise ValueError("retry_after and delay must be >= 0")
        if not 0.0 <= self.record_probability <= 1.0:
            raise ValueError("record_probability must be within [0, 1]")

    @property
    def status(self) -> int | None:
        """HTTP status this fault answers with, or None when the request goes through."""
        return STATUS_OF_KIND.get(self.kind)

    def matches(self, path: str) -> bool:
        return path.startswith(self.path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        unknown = set(data) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        kind = str(data.get("kind", ""))
        indices = tuple(int(i) for i in data.get("indices", ()))
        record_probability = float(data.get("record_probability", 0.0))
        if kind == "record_400" and not indices and record_probability == 0.0:
            indices = (0,)
        default_delay = 1.0 if kind == "slow" else 0.0
        return cls(
            kind=cast(FaultKind, kind),
            retry_after=int(data.get("retry_after", 1)),
            delay=float(data.get("delay", default_delay)),
            indices=indices,
            record_probability=record_probability,
            field=_opt_str(data.get("field")),
            message=_opt_str(data.get("message")),
            path=str(data.get("path", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "retry_after": self.retry_after,
                               "delay": self.delay, "path": self.path}
        if self.kind == "record_400":
            out.update(indices=list(self.indices), record_probability=self.record_probability,
                       field=self.field, message=self.message)
        return out


@dataclass(frozen=True)
class RateLimit:
    """A sliding-window limit like the partners' (requests per second and/or per minute)."""

    per_second: int | None = None
    per_minute: int | None = None
    retry_after_header: bool = True
    path: str = ""

    def __post_init__(self) -> None:
        if self.per_second is None and self.per_minute is None:
            raise ValueError("a rate limit needs per_second and/or per_minute")
        for value in (self.per_second, self.per_minute):
            if value is not None and value < 1:
                raise ValueError("rate limits must be >= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimit:
        unknown = set(data) - _LIMIT_KEYS
        if unknown:
            raise ValueError(f"unknown rate_limit keys: {sorted(unknown)}")
        per_second, per_minute = data.get("per_second"), data.get("per_minute")
        return cls(
            per_second=None if per_second is None else int(per_second),
            per_minute=None if per_minute is None else int(per_minute),
            retry_after_header=bool(data.get("retry_after_header", True)),
            path=str(data.get("path", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"per_second": self.per_second, "per_minute": self.per_minute,
                "retry_after_header": self.retry_after_header, "path": self.path}


class Decision(NamedTuple):
    """What the plan chose for one request and why (script, random or rate_limit)."""

    fault: Fault
    source: Literal["script", "random", "rate_limit"]


@dataclass
class _Window:
    """Admission times of the last second and the last minute."""

    second: deque[float] = field(default_factory=deque)
    minute: deque[float] = field(default_factory=deque)

    def retry_after(self, limit: RateLimit, now: float) -> float | None:
        """Seconds until a request may pass, or None when it may pass now."""
        while self.second and self.second[0] <= now - 1.0:
            self.second.popleft()
        while self.minute and self.minute[0] <= now - 60.0:
            self.minute.popleft()
        waits: list[float] = []
        if limit.per_second is not None and len(self.second) >= limit.per_second:
            waits.append(self.second[-limit.per_second] + 1.0 - now)
        if limit.per_minute is not None and len(self.minute) >= limit.per_minute:
            waits.append(self.minute[-limit.per_minute] + 60.0 - now)
        return max(waits) if waits else None

    def admit(self, now: float) -> None:
        self.second.append(now)
        self.minute.append(now)


class FaultPlan:
    """Script of next faults, random faults and an optional rate limiter; thread-safe.

    Order per request: the first script entry matching the path is consumed; else the
    rate limiter may answer 429; else one random draw may pick a random fault.
    """

    def __init__(self, seed: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._seed = seed
        self._rng = random.Random(seed)
        self._script: list[Fault] = []
        self._random: list[tuple[Fault, float]] = []
        self._limit: RateLimit | None = None
        self._window = _Window()

    # -- Python configuration -------------------------------------------------------------
    def push(self, fault: Fault | FaultKind, count: int = 1) -> FaultPlan:
        """Inject `fault` into the next `count` requests (whose path matches)."""
        item = Fault(fault) if isinstance(fault, str) else fault
        with self._lock:
            self._script.extend([item] * count)
        return self

    def add_random(self, fault: Fault | FaultKind, probability: float) -> FaultPlan:
        item = Fault(fault) if isinstance(fault, str) else fault
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            total = sum(p for _, p in self._random) + probability
            if total > 1.0 + 1e-9:
                raise ValueError(f"random fault probabilities sum to {total} > 1")
            self._random.append((item, probability))
        return self

    def set_rate_limit(self, limit: RateLimit | None) -> FaultPlan:
        with self._lock:
            self._limit = limit
            self._window = _Window()
        return self

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._seed = seed
            self._rng = random.Random(seed)

    def clear(self) -> None:
        """Drop every fault and the rate limit; re-seed so runs repeat exactly."""
        with self._lock:
            self._script.clear()
            self._random.clear()
            self._limit = None
            self._window = _Window()
            self._rng = random.Random(self._seed)

    @property
    def pending(self) -> int:
        """Script entries not consumed yet."""
        with self._lock:
            return len(self._script)

    # -- JSON configuration (control endpoint) ----------------------------------------------
    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply a JSON config; replaces the plan unless `append` is true. See to_config()."""
        unknown = set(config) - _PLAN_KEYS
        if unknown:
            raise ValueError(f"unknown fault-plan keys: {sorted(unknown)}")
        script = [(Fault.from_dict(e), _count(e)) for e in _dicts(config.get("script", []))]
        randoms = [(Fault.from_dict(e), _probability(e)) for e in _dicts(config.get("random", []))]
        raw_limit = config.get("rate_limit")
        if raw_limit is not None and not isinstance(raw_limit, Mapping):
            raise ValueError("rate_limit must be an object or null")
        limit = None if raw_limit is None else RateLimit.from_dict(raw_limit)
        if not config.get("append", False):
            self.clear()
        if "seed" in config:
            self.reseed(int(config["seed"]))
        for fault, count in script:
            self.push(fault, count)
        for fault, probability in randoms:
            self.add_random(fault, probability)
        if "rate_limit" in config or not config.get("append", False):
            self.set_rate_limit(limit)

    def to_config(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seed": self._seed,
                "script": [dict(f.to_dict(), count=1) for f in self._script],
                "random": [dict(f.to_dict(), probability=p) for f, p in self._random],
                "rate_limit": None if self._limit is None else self._limit.to_dict(),
            }

    # -- per-request decisions -------------------------------------------------------------
    def decide(self, path: str) -> Decision | None:
        """Choose the fault for one request to `path`, or None to answer normally."""
        with self._lock:
            for i, fault in enumerate(self._script):
                if fault.matches(path):
                    del self._script[i]
                    return Decision(fault, "script")
            limit = self._limit
            if limit is not None and path.startswith(limit.path):
                now = self._clock()
                wait = self._window.retry_after(limit, now)
                if wait is not None:
                    kind: FaultKind = "429" if limit.retry_after_header else "429_bare"
                    return Decision(Fault(kind, retry_after=max(1, math.ceil(wait))),
                                    "rate_limit")
                self._window.admit(now)
            candidates = [(f, p) for f, p in self._random if f.matches(path)]
            if not candidates:
                return None
            draw = self._rng.random()
            for fault, probability in candidates:
                if draw < probability:
                    return Decision(fault, "random")
                draw -= probability
            return None

    def failing_records(self, fault: Fault, count: int) -> list[int]:
        """Indices (< count) of the records a record_400 fault rejects, in order."""
        chosen = {i for i in fault.indices if 0 <= i < count}
        if fault.record_probability > 0.0:
            with self._lock:
                chosen.update(i for i in range(count)
                              if self._rng.random() < fault.record_probability)
        return sorted(chosen)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dicts(value: Any) -> Iterable[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise ValueError("script and random must be lists of objects")
    return cast(list[Mapping[str, Any]], value)


def _count(entry: Mapping[str, Any]) -> int:
    count = int(entry.get("count", 1))
    if count < 1:
        raise ValueError("count must be >= 1")
    return count


def _probability(entry: Mapping[str, Any]) -> float:
    if "probability" not in entry:
        raise ValueError("random faults need a probability")
    return float(entry["probability"])

