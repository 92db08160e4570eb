"""Deterministic fault injection for the partner emulators.

Clients must survive throttling, outages, slow answers, dropped connections and
partial rejections. A seeded plan makes each of those reproducible in a test.

The plan is configured by whoever runs the emulator (a test, or anybody who can reach
``/_emulator/faults``), so every input is bounded: a script of a hundred million faults
costs one entry (scripts are run-length encoded), numbers outside their range are refused
with a clear message, and a refused configuration leaves the plan exactly as it was.
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
    "echo",  # answer `status` (default 400) with the request echoed, headers included, as a
    # careless partner or proxy does: secrets must not reach any output from there
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
STATUS_OF_KIND: dict[str, int] = {
    "429": 429,
    "429_date": 429,
    "429_bare": 429,
    "500": 500,
    "503": 503,
}

# Bounds of every configurable number. Generous for any test, small enough that no
# configuration can exhaust memory or push a value past what HTTP headers and JSON carry.
MAX_SEED = 2**63 - 1
MAX_RETRY_AFTER = 86_400  # one day, in seconds
MAX_DELAY = 600.0  # a slower answer is a hang; use `reset` or a client timeout instead
MAX_COUNT = 1_000_000  # repetitions of one script entry
MAX_SCRIPT_ENTRIES = 1_000  # distinct script entries (after run-length encoding)
MAX_RANDOM_ENTRIES = 100
MAX_INDICES = 10_000  # record indices named by one record_400 fault
MAX_INDEX = 1_000_000
MAX_TEXT = 1_000  # characters of a path, field or message
MAX_RATE = 100_000  # requests per second or per minute of the plan's rate limiter

_FAULT_KEYS = frozenset(
    {
        "kind",
        "retry_after",
        "delay",
        "indices",
        "record_probability",
        "field",
        "message",
        "path",
        "count",
        "probability",
        "status",
    }
)
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
    echo_status: int = 400  # the status an `echo` fault answers with

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        bounded_int("retry_after", self.retry_after, 0, MAX_RETRY_AFTER)
        bounded_float("delay", self.delay, 0.0, MAX_DELAY)
        bounded_float("record_probability", self.record_probability, 0.0, 1.0)
        bounded_int("an echo fault's status", self.echo_status, 400, 599)
        if len(self.indices) > MAX_INDICES:
            raise ValueError(f"indices holds at most {MAX_INDICES} entries")
        for index in self.indices:
            bounded_int("each index", index, 0, MAX_INDEX)
        for name, text in (("path", self.path), ("field", self.field), ("message", self.message)):
            if text is not None and len(text) > MAX_TEXT:
                raise ValueError(f"{name} is longer than {MAX_TEXT} characters")

    @property
    def status(self) -> int | None:
        """HTTP status this fault answers with, or None when the request goes through."""
        return self.echo_status if self.kind == "echo" else STATUS_OF_KIND.get(self.kind)

    def matches(self, path: str) -> bool:
        return path.startswith(self.path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        unknown = set(data) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        kind = data.get("kind", "")
        if not isinstance(kind, str):
            raise ValueError("kind must be a string")
        raw_indices = data.get("indices", [])
        if not isinstance(raw_indices, list) or len(raw_indices) > MAX_INDICES:
            raise ValueError(f"indices must be a list of at most {MAX_INDICES} integers")
        indices = tuple(bounded_int("each index", i, 0, MAX_INDEX) for i in raw_indices)
        record_probability = bounded_float(
            "record_probability", data.get("record_probability", 0.0), 0.0, 1.0
        )
        if kind == "record_400" and not indices and record_probability == 0.0:
            indices = (0,)
        default_delay = 1.0 if kind == "slow" else 0.0
        return cls(
            kind=cast(FaultKind, kind),
            retry_after=bounded_int("retry_after", data.get("retry_after", 1), 0, MAX_RETRY_AFTER),
            delay=bounded_float("delay", data.get("delay", default_delay), 0.0, MAX_DELAY),
            indices=indices,
            record_probability=record_probability,
            field=_opt_text("field", data.get("field")),
            message=_opt_text("message", data.get("message")),
            path=_opt_text("path", data.get("path", "")) or "",
            echo_status=bounded_int("status", data.get("status", 400), 400, 599),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "path": self.path,
        }
        if self.kind == "record_400":
            out.update(
                indices=list(self.indices),
                record_probability=self.record_probability,
                field=self.field,
                message=self.message,
            )
        if self.kind == "echo":
            out["status"] = self.echo_status
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
        for name, value in (("per_second", self.per_second), ("per_minute", self.per_minute)):
            if value is not None:
                bounded_int(name, value, 1, MAX_RATE)
        if len(self.path) > MAX_TEXT:
            raise ValueError(f"path is longer than {MAX_TEXT} characters")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimit:
        unknown = set(data) - _LIMIT_KEYS
        if unknown:
            raise ValueError(f"unknown rate_limit keys: {sorted(unknown)}")
        per_second, per_minute = data.get("per_second"), data.get("per_minute")
        header = data.get("retry_after_header", True)
        if not isinstance(header, bool):
            raise ValueError("retry_after_header must be true or false")
        return cls(
            per_second=None
            if per_second is None
            else bounded_int("per_second", per_second, 1, MAX_RATE),
            per_minute=None
            if per_minute is None
            else bounded_int("per_minute", per_minute, 1, MAX_RATE),
            retry_after_header=header,
            path=_opt_text("path", data.get("path", "")) or "",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_second": self.per_second,
            "per_minute": self.per_minute,
            "retry_after_header": self.retry_after_header,
            "path": self.path,
        }


class Decision(NamedTuple):
    """What the plan chose for one request and why (script, random or rate_limit)."""

    fault: Fault
    source: Literal["script", "random", "rate_limit"]


@dataclass
class _Window:
    """Admission times of the last second and the last minute (at most MAX_RATE each)."""

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


@dataclass
class _Entry:
    """A script entry: `fault` for the next `remaining` matching requests."""

    fault: Fault
    remaining: int


@dataclass
class _State:
    seed: int
    script: list[_Entry] = field(default_factory=list)
    random: list[tuple[Fault, float]] = field(default_factory=list)
    limit: RateLimit | None = None

    def add_script(self, fault: Fault, count: int) -> None:
        bounded_int("count", count, 1, MAX_COUNT)
        last = self.script[-1] if self.script else None
        if last is not None and last.fault == fault and last.remaining + count <= MAX_COUNT:
            last.remaining += count
            return
        if len(self.script) >= MAX_SCRIPT_ENTRIES:
            raise ValueError(f"a script holds at most {MAX_SCRIPT_ENTRIES} entries")
        self.script.append(_Entry(fault, count))

    def add_random(self, fault: Fault, probability: float) -> None:
        probability = bounded_float("probability", probability, 0.0, 1.0)
        if len(self.random) >= MAX_RANDOM_ENTRIES:
            raise ValueError(f"at most {MAX_RANDOM_ENTRIES} random faults")
        total = sum(p for _, p in self.random) + probability
        if total > 1.0 + 1e-9:
            raise ValueError(f"random fault probabilities sum to {total} > 1")
        self.random.append((fault, probability))

    def copy(self) -> _State:
        return _State(
            self.seed,
            [_Entry(e.fault, e.remaining) for e in self.script],
            list(self.random),
            self.limit,
        )


class FaultPlan:
    """Script of next faults, random faults and an optional rate limiter; thread-safe.

    Order per request: the first script entry matching the path is consumed; else the
    rate limiter may answer 429; else one random draw may pick a random fault.
    """

    def __init__(self, seed: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._initial_seed = bounded_int("seed", seed, 0, MAX_SEED)
        self._state = _State(self._initial_seed)
        self._rng = random.Random(self._initial_seed)
        self._window = _Window()

    # -- Python configuration -------------------------------------------------------------
    def push(self, fault: Fault | FaultKind, count: int = 1) -> FaultPlan:
        """Inject `fault` into the next `count` requests (whose path matches)."""
        item = Fault(fault) if isinstance(fault, str) else fault
        with self._lock:
            self._state.add_script(item, count)
        return self

    def add_random(self, fault: Fault | FaultKind, probability: float) -> FaultPlan:
        item = Fault(fault) if isinstance(fault, str) else fault
        with self._lock:
            self._state.add_random(item, probability)
        return self

    def set_rate_limit(self, limit: RateLimit | None) -> FaultPlan:
        with self._lock:
            self._state.limit = limit
            self._window = _Window()
        return self

    def reseed(self, seed: int) -> None:
        seed = bounded_int("seed", seed, 0, MAX_SEED)
        with self._lock:
            self._state.seed = seed
            self._rng = random.Random(seed)

    def clear(self) -> None:
        """Drop every fault and the rate limit; re-seed so runs repeat exactly."""
        with self._lock:
            self._state = _State(self._state.seed)
            self._window = _Window()
            self._rng = random.Random(self._state.seed)

    def reset(self) -> None:
        """Back to the plan as constructed: no faults, no limit, the initial seed."""
        with self._lock:
            self._state = _State(self._initial_seed)
            self._window = _Window()
            self._rng = random.Random(self._initial_seed)

    @property
    def pending(self) -> int:
        """Script entries not consumed yet (each repetition counts)."""
        with self._lock:
            return sum(e.remaining for e in self._state.script)

    # -- JSON configuration (control endpoint) ----------------------------------------------
    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply a JSON config; replaces the plan unless `append` is true. See to_config().

        The whole config is checked before anything changes: a refused config (ValueError)
        leaves the plan as it was.
        """
        unknown = set(config) - _PLAN_KEYS
        if unknown:
            raise ValueError(f"unknown fault-plan keys: {sorted(unknown)}")
        append = config.get("append", False)
        if not isinstance(append, bool):
            raise ValueError("append must be true or false")
        script = [
            (Fault.from_dict(e), _count(e))
            for e in _dicts(config.get("script", []), MAX_SCRIPT_ENTRIES)
        ]
        randoms = [
            (Fault.from_dict(e), _probability(e))
            for e in _dicts(config.get("random", []), MAX_RANDOM_ENTRIES)
        ]
        raw_limit = config.get("rate_limit")
        if raw_limit is not None and not isinstance(raw_limit, Mapping):
            raise ValueError("rate_limit must be an object or null")
        limit = None if raw_limit is None else RateLimit.from_dict(raw_limit)
        seed = bounded_int("seed", config["seed"], 0, MAX_SEED) if "seed" in config else None
        with self._lock:
            state = self._state.copy() if append else _State(self._state.seed)
            if seed is not None:
                state.seed = seed
            for fault, count in script:
                state.add_script(fault, count)
            for fault, probability in randoms:
                state.add_random(fault, probability)
            if "rate_limit" in config or not append:
                state.limit = limit
                self._window = _Window()
            if seed is not None or not append:
                self._rng = random.Random(state.seed)
            self._state = state

    def to_config(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            return {
                "seed": state.seed,
                "script": [dict(e.fault.to_dict(), count=e.remaining) for e in state.script],
                "random": [dict(f.to_dict(), probability=p) for f, p in state.random],
                "rate_limit": None if state.limit is None else state.limit.to_dict(),
            }

    # -- per-request decisions -------------------------------------------------------------
    def decide(self, path: str) -> Decision | None:
        """Choose the fault for one request to `path`, or None to answer normally."""
        with self._lock:
            script = self._state.script
            for i, entry in enumerate(script):
                if entry.fault.matches(path):
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        del script[i]
                    return Decision(entry.fault, "script")
            limit = self._state.limit
            if limit is not None and path.startswith(limit.path):
                now = self._clock()
                wait = self._window.retry_after(limit, now)
                if wait is not None:
                    kind: FaultKind = "429" if limit.retry_after_header else "429_bare"
                    return Decision(Fault(kind, retry_after=max(1, math.ceil(wait))), "rate_limit")
                self._window.admit(now)
            candidates = [(f, p) for f, p in self._state.random if f.matches(path)]
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
                chosen.update(
                    i for i in range(count) if self._rng.random() < fault.record_probability
                )
        return sorted(chosen)


# -- input checks, shared with the emulators' constructors ------------------------------------
def bounded_int(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int within [low, high]; integral floats pass (JSON has one number type)."""
    number = value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise ValueError(f"{name} must be an integer within [{low}, {high}], got {_show(value)}")
    return number


def bounded_float(name: str, value: Any, low: float, high: float) -> float:
    """`value` as a finite float within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number within [{low}, {high}], got {_show(value)}")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be a number within [{low}, {high}], got {_show(value)}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _opt_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name} is longer than {MAX_TEXT} characters")
    return value


def _dicts(value: Any, most: int) -> Iterable[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise ValueError("script and random must be lists of objects")
    if len(value) > most:
        raise ValueError(f"at most {most} entries per list")
    return cast(list[Mapping[str, Any]], value)


def _count(entry: Mapping[str, Any]) -> int:
    return bounded_int("count", entry.get("count", 1), 1, MAX_COUNT)


def _probability(entry: Mapping[str, Any]) -> float:
    if "probability" not in entry:
        raise ValueError("random faults need a probability")
    return bounded_float("probability", entry["probability"], 0.0, 1.0)
