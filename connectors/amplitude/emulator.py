"""Amplitude HTTP V2 and Batch ingestion emulator (partner-apis.md §3).

Amplitude refuses a whole request when any event is invalid and names the bad events
by index, so clients can drop exactly those; it throttles per user and per device with
a 429 that names them. The emulator reproduces both contracts with the documented
bodies (amplitude-dev-center docs/analytics/apis/http-v2-api.md [A1] and
batch-event-upload-api.md [A2]).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from moerules.connectors.emulation.base import Emulator
from moerules.connectors.emulation.faults import FaultPlan, bounded_float, bounded_int
from moerules.connectors.emulation.intake import BodyTooLarge, host_name, media_type
from moerules.connectors.emulation.limits import PerKeyWindows, SeenKeys
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# [A1] "Invalid IDs": these result in a 400.
PLACEHOLDER_IDS = frozenset(
    {
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        '""',
        "00000000-0000-0000-0000-000000000000",
        "{}",
        "lmy47d",
        "0",
        "-1",
    }
)
# [A1] event_type: "The following event names are reserved for Amplitude use".
RESERVED_EVENT_TYPES = frozenset(
    {
        "[Amplitude] Start Session",
        "[Amplitude] End Session",
        "[Amplitude] Revenue",
        "[Amplitude] Revenue (Verified)",
        "[Amplitude] Revenue (Unverified)",
        "[Amplitude] Merged User",
    }
)
DEFAULT_MIN_ID_LENGTH = 5  # [A1] "Device IDs and User IDs minimum length"
MAX_DEPTH = 40  # [A1] "Object depth may not exceed 40 layers"
HTTPAPI_MAX_BYTES = 1_000_000  # [A1] "under 1 MB ... you get a 413 error"
BATCH_MAX_BYTES = 20_000_000  # [A2] 20 MB
MAX_EVENTS = 2000  # [A1][A2] events per request
# §3 hosts: an API key belongs to one region; the other region's host does not know it.
REGION_HOSTS = {
    "us": frozenset({"api2.amplitude.com", "api.amplitude.com"}),
    "eu": frozenset({"api.eu.amplitude.com"}),
}
INSERT_ID_WINDOW = 7 * 86_400.0  # [A1] insert_id de-duplicates within 7 days
MAX_TRACKED_IDS = 1_000_000  # ids counted for the daily quota; beyond, new ids are not


@dataclass(frozen=True)
class AmplitudeLimits:
    """Amplitude's per-user and per-device throttles; None turns one off.

    [A1]: HTTP V2 throttles users and devices above 10 events per second ("measured as an
    average over a recent time window"; its Considerations say 30 for devices: the
    stricter figure is the default). [A2]: Batch allows 1,000 per second averaged over
    30 s, and 500,000 events a day per id. Shrink `window` and `day` to test a client.
    """

    eps_threshold: int | None = 10
    batch_eps_threshold: int | None = 1000
    window: float = 30.0
    daily_quota: int | None = 500_000
    day: float = 86_400.0

    def __post_init__(self) -> None:
        for name in ("eps_threshold", "batch_eps_threshold", "daily_quota"):
            value = getattr(self, name)
            if value is not None:
                bounded_int(name, value, 1, 100_000_000)
        bounded_float("window", self.window, 0.001, 86_400.0)
        bounded_float("day", self.day, 0.001, 7 * 86_400.0)


class _EventProblems:
    """The index maps of Amplitude's 400 body."""

    def __init__(self) -> None:
        self.missing: defaultdict[str, list[int]] = defaultdict(list)
        self.invalid: defaultdict[str, list[int]] = defaultdict(list)
        self.id_lengths: defaultdict[str, list[int]] = defaultdict(list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.invalid or self.id_lengths)

    def body(self) -> dict[str, Any]:
        # [A1] error values; the id-length body is the one RudderStack records Amplitude
        # answering (rudder-transformer src/v0/destinations/am/transform.js).
        if self.missing:
            error = "Request missing required field"
        elif self.invalid:
            error = "Invalid field values on some events"
        else:
            error = "Invalid id length for user_id or device_id"
        out: dict[str, Any] = {"code": 400, "error": error}
        for key, found in (
            ("events_with_missing_fields", self.missing),
            ("events_with_invalid_fields", self.invalid),
            ("events_with_invalid_id_lengths", self.id_lengths),
        ):
            if found:
                out[key] = dict(found)
        return out


def _bad_request(error: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return 400, {"code": 400, "error": error, **extra}


class AmplitudeEmulator(Emulator):
    """`POST /2/httpapi` (1 MB) and `POST /batch` (20 MB), both at most 2,000 events."""

    name = "amplitude"
    fault_reads_body = True  # an injected 429 names the request's users, like the real one

    def __init__(
        self,
        api_key: str = "test-amplitude-key",
        *,
        region: str = "us",
        max_body_bytes: int = HTTPAPI_MAX_BYTES,
        batch_max_body_bytes: int = BATCH_MAX_BYTES,
        max_events: int = MAX_EVENTS,
        limits: AmplitudeLimits | Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        max_received: int = 100_000,
    ) -> None:
        if region not in REGION_HOSTS:
            raise ValueError(f"region must be one of {sorted(REGION_HOSTS)}")
        self.api_key = api_key
        self.region = region
        self.max_body_bytes = bounded_int("max_body_bytes", max_body_bytes, 1, 256 * 2**20)
        self.batch_max_body_bytes = bounded_int(
            "batch_max_body_bytes", batch_max_body_bytes, 1, 256 * 2**20
        )
        self.max_events = bounded_int("max_events", max_events, 1, 100_000)
        self.limits = (
            AmplitudeLimits(**limits)
            if isinstance(limits, Mapping)
            else limits
            if limits is not None
            else AmplitudeLimits()
        )
        if not isinstance(self.limits, AmplitudeLimits):
            raise TypeError("limits must be a AmplitudeLimits or an object of its fields")
        if not callable(clock):
            raise TypeError("clock must be a function returning seconds")
        self._clock = clock
        self._usage_lock = threading.Lock()
        self._windows: dict[str, PerKeyWindows] = {}
        self._daily: Counter[str] = Counter()
        self._day_index = 0
        self._seen = SeenKeys(INSERT_ID_WINDOW)
        super().__init__(faults=faults, max_received=max_received)
        self.reset_state()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/2/httpapi", self._httpapi, methods=["POST"]),
            Route("/batch", self._batch, methods=["POST"]),
        ]

    def credentials(self) -> dict[str, str]:
        return {"api_key": self.api_key, "region": self.region}

    def body_limit(self, path: str) -> int:
        return self.batch_max_body_bytes if path == "/batch" else self.max_body_bytes

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return throttled_body(raw, self.limits.eps_threshold or 10)
        messages = {500: "Internal Server Error", 503: "Service Unavailable"}
        return {"code": status, "error": messages.get(status, "Server Error")}

    def reset_state(self) -> None:
        with self._usage_lock:
            limits = self.limits
            self._windows = {}
            for path, threshold in (
                ("/2/httpapi", limits.eps_threshold),
                ("/batch", limits.batch_eps_threshold),
            ):
                if threshold is not None:
                    self._windows[path] = PerKeyWindows(
                        max(1, math.floor(threshold * limits.window)), limits.window
                    )
            self._daily = Counter()
            self._day_index = 0
            self._seen.clear()

    async def _httpapi(self, request: Request) -> Response:
        return await self._upload(request)

    async def _batch(self, request: Request) -> Response:
        return await self._upload(request)

    async def _upload(self, request: Request) -> Response:
        path = request.url.path
        # [A1] "Validation on Content-type header (must be set to application/json)"; the
        # error text is the emulator's own.
        if media_type(request) != "application/json":
            return self.respond(
                request,
                400,
                {"code": 400, "error": "Invalid request: Content-Type must be application/json"},
            )
        try:
            raw = await self.read_body(request, self.body_limit(path))
        except BodyTooLarge:
            return self.respond(request, 413, {"code": 413, "error": "Payload too large"})
        if not raw.strip():
            return self.respond(request, 400, {"code": 400, "error": "Missing request body"})
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.respond(request, 400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(payload, dict):
            return self.respond(
                request, 400, {"code": 400, "error": "Invalid JSON request body"}, body=payload
            )
        problem = self._check_request(request, payload)
        if problem is not None:
            status, error = problem
            return self.respond(request, status, error, body=payload)
        events: list[dict[str, Any]] = payload["events"]
        min_length = int((payload.get("options") or {}).get("min_id_length", DEFAULT_MIN_ID_LENGTH))
        problems = validate_events(events, min_length)
        fault, failing = self.failing_records(request, len(events))
        if fault is not None and failing:
            problems.invalid[fault.field or "event_type"].extend(failing)
        if problems:
            body = problems.body()
            if fault is not None and failing and fault.message:
                body["error"] = fault.message
            return self.respond(request, 400, body, body=payload)
        throttled = self._throttle(path, events)
        if throttled is not None:
            with self._lock:
                self._stats.rate_limited += 1
            return self.respond(request, 429, throttled, body=payload)
        records, duplicates = self._deduplicate(events)
        return self.respond(
            request,
            200,
            {
                "code": 200,
                "events_ingested": len(events),
                "payload_size_bytes": len(raw),
                "server_upload_time": int(time.time() * 1000),
            },
            body=payload,
            records=records,
            rejected=sorted(duplicates),
            reasons=duplicates,
        )

    def _check_request(
        self, request: Request, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        key = payload.get("api_key")
        if not key:
            return _bad_request("Request missing required field", missing_field="api_key")
        wrong_region = any(
            host_name(request) in hosts
            for region, hosts in REGION_HOSTS.items()
            if region != self.region
        )
        if key != self.api_key or wrong_region:
            # The SDK recognises this answer by its prefix ([A4] processor.py); the key is
            # echoed back, as Amplitude does: a client must not log it unscrubbed.
            return _bad_request(f"Invalid API key: {str(key)[:200]}")
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            return _bad_request("Request missing required field", missing_field="events")
        if len(events) > self.max_events:
            return 413, {"code": 413, "error": "Payload too large"}
        if not all(isinstance(e, dict) for e in events):
            return _bad_request("Invalid event JSON")
        options = payload.get("options")
        if options is not None:
            length = options.get("min_id_length") if isinstance(options, dict) else None
            if not isinstance(options, dict) or (
                length is not None
                and (isinstance(length, bool) or not isinstance(length, int) or length < 1)
            ):
                return _bad_request("Invalid options: min_id_length must be a positive integer")
        return None

    def _throttle(self, path: str, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The 429 for users and devices over their rate or daily quota, or None (and the
        events are counted). A 429 ingests nothing: the SDK resends the events that were
        not throttled at once ([A4] processor.py)."""
        users = Counter(str(e["user_id"]) for e in events if e.get("user_id"))
        devices = Counter(str(e["device_id"]) for e in events if e.get("device_id"))
        usage = {
            **{f"user:{k}": v for k, v in users.items()},
            **{f"device:{k}": v for k, v in devices.items()},
        }
        with self._usage_lock:
            now = self._clock()
            window = self._windows.get(path)
            over_rate = window.over(usage, now) if window is not None else {}
            over_day = self._over_daily_quota(usage, now)
            if not over_rate and not over_day:
                if window is not None:
                    window.take(usage, now)
                self._count_daily(usage)
                return None
        eps = {k: math.ceil(v / self.limits.window) for k, v in over_rate.items()}
        threshold = (
            self.limits.eps_threshold if path == "/2/httpapi" else self.limits.batch_eps_threshold
        )
        body: dict[str, Any] = {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": threshold,
            "throttled_devices": _unprefixed(eps, "device:"),
            "throttled_users": _unprefixed(eps, "user:"),
        }
        if over_day:
            body["exceeded_daily_quota_users"] = _unprefixed(over_day, "user:")
            body["exceeded_daily_quota_devices"] = _unprefixed(over_day, "device:")
        hit = set(over_rate) | set(over_day)
        body["throttled_events"] = [
            i
            for i, e in enumerate(events)
            if f"user:{e.get('user_id')}" in hit or f"device:{e.get('device_id')}" in hit
        ]
        return body

    def _over_daily_quota(self, usage: dict[str, int], now: float) -> dict[str, int]:
        quota = self.limits.daily_quota
        if quota is None:
            return {}
        day = int(now // self.limits.day)
        if day != self._day_index:
            self._day_index, self._daily = day, Counter()
        return {k: self._daily[k] + v for k, v in usage.items() if self._daily[k] + v > quota}

    def _count_daily(self, usage: dict[str, int]) -> None:
        if self.limits.daily_quota is None:
            return
        for key, units in usage.items():
            if key in self._daily or len(self._daily) < MAX_TRACKED_IDS:
                self._daily[key] += units

    def _deduplicate(self, events: list[dict[str, Any]]) -> tuple[list[Any], dict[int, str]]:
        """[A1]: "We will ignore subsequent events sent with the same insert_id within the
        past 7 days" (the answer still counts them as ingested)."""
        records: list[Any] = []
        duplicates: dict[int, str] = {}
        with self._usage_lock:
            now = self._clock()
            for i, event in enumerate(events):
                insert_id = event.get("insert_id")
                if (
                    isinstance(insert_id, str)
                    and insert_id
                    and not self._seen.first_time(insert_id, now)
                ):
                    duplicates[i] = f"duplicate insert_id {insert_id[:100]!r}: ignored"
                else:
                    records.append(event)
        return records, duplicates


def _unprefixed(found: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in found.items() if k.startswith(prefix)}


def _too_deep(value: Any) -> bool:
    """Nesting deeper than MAX_DEPTH objects/arrays, without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def validate_events(events: list[dict[str, Any]], min_id_length: int) -> _EventProblems:
    problems = _EventProblems()
    for i, event in enumerate(events):
        event_type = event.get("event_type")
        if event_type is None:
            problems.missing["event_type"].append(i)
        elif (
            not isinstance(event_type, str) or not event_type or event_type in RESERVED_EVENT_TYPES
        ):
            problems.invalid["event_type"].append(i)
        ids = {k: event[k] for k in ("user_id", "device_id") if event.get(k) not in (None, "")}
        if not ids:
            problems.missing["user_id"].append(i)
        for key, value in ids.items():
            if not isinstance(value, str) or value.strip().lower() in PLACEHOLDER_IDS:
                problems.invalid[key].append(i)
            elif len(value) < min_id_length:
                # [A1] says a short id is removed from the event; RudderStack records
                # Amplitude rejecting the request even when the other id is fine.
                problems.id_lengths[key].append(i)
        stamp = event.get("time")
        if stamp is not None and (
            isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0
        ):
            problems.invalid["time"].append(i)  # [A1]: milliseconds; anything else is a 400
        for key in ("event_properties", "user_properties"):
            if key in event and (not isinstance(event[key], dict) or _too_deep(event[key])):
                problems.invalid[key].append(i)
    return problems


def throttled_body(raw: bytes, threshold: int) -> dict[str, Any]:
    """An injected 429, shaped like [A1]'s: every event of the request is throttled."""
    try:
        payload = orjson.loads(raw)
        events = [e for e in payload.get("events", []) if isinstance(e, dict)]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        events = []
    users = Counter(str(e["user_id"]) for e in events if e.get("user_id") is not None)
    devices = Counter(str(e["device_id"]) for e in events if e.get("device_id") is not None)
    return {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": threshold,
        "throttled_devices": dict(devices),
        "throttled_users": dict(users),
        "throttled_events": list(range(len(events))),
    }
