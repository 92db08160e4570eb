"""Amplitude HTTP V2 (and Batch) ingestion emulator (reference §3).

Amplitude rejects a whole request when any event is invalid and names the bad events
by index, so clients can drop exactly those; the emulator reproduces that contract.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import orjson
from moerules.connectors.emulation.base import Emulator, media_type
from moerules.connectors.emulation.faults import FaultPlan
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

PLACEHOLDER_IDS = frozenset({"anonymous", "null", "none", "nil", "undefined", "unknown", "0",
                             "-1", "00000000-0000-0000-0000-000000000000"})
DEFAULT_MIN_ID_LENGTH = 5
EPS_THRESHOLD = 30


class _EventProblems:
    """The three index maps of Amplitude's 400 body."""

    def __init__(self) -> None:
        self.missing: defaultdict[str, list[int]] = defaultdict(list)
        self.invalid: defaultdict[str, list[int]] = defaultdict(list)
        self.id_lengths: defaultdict[str, list[int]] = defaultdict(list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.invalid or self.id_lengths)

    def body(self) -> dict[str, Any]:
        if self.missing:
            error = "Some events are missing required fields"
        elif self.invalid:
            error = "Invalid field values on some events"
        else:
            error = "Invalid id length for user_id or device_id"
        out: dict[str, Any] = {"code": 400, "error": error}
        for key, found in (("events_with_missing_fields", self.missing),
                           ("events_with_invalid_fields", self.invalid),
                           ("events_with_invalid_id_lengths", self.id_lengths)):
            if found:
                out[key] = dict(found)
        return out


class AmplitudeEmulator(Emulator):
    """`POST /2/httpapi` (1 MB) and `POST /batch` (20 MB), both ≤ 2,000 events."""

    name = "amplitude"

    def __init__(self, api_key: str = "test-amplitude-key", *,
                 max_body_bytes: int = 1_000_000,
                 batch_max_body_bytes: int = 20_000_000,
                 max_events: int = 2000,
                 faults: FaultPlan | None = None) -> None:
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.batch_max_body_bytes = batch_max_body_bytes
        self.max_events = max_events
        super().__init__(faults=faults)

    def routes(self) -> list[BaseRoute]:
        return [Route("/2/httpapi", self._httpapi, methods=["POST"]),
                Route("/batch", self._batch, methods=["POST"])]

    def credentials(self) -> dict[str, str]:
        return {"api_key": self.api_key}

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return throttled_body(raw)
        messages = {500: "Internal Server Error", 503: "Service Unavailable"}
        return {"code": status, "error": messages.get(status, "Server Error")}

    async def _httpapi(self, request: Request) -> Response:
        return await self._upload(request, self.max_body_bytes)

    async def _batch(self, request: Request) -> Response:
        return await self._upload(request, self.batch_max_body_bytes)

    async def _upload(self, request: Request, max_bytes: int) -> Response:
        raw = await request.body()
        if media_type(request) != "application/json":
            return self.respond(request, 400, {
                "code": 400, "error": "Invalid request: Content-Type must be application/json"})
        if len(raw) > max_bytes:
            return self.respond(request, 413, {"code": 413, "error": "Payload too large"})
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.respond(request, 400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(payload, dict):
            return self.respond(request, 400, {"code": 400, "error": "Invalid JSON request body"},
                                body=payload)
        problem = self._check_request(payload)
        if problem is not None:
            status, error = problem
            return self.respond(request, status, error, body=payload)
        events: list[Any] = payload["events"]
        min_length = int((payload.get("options") or {}).get("min_id_length",
                                                            DEFAULT_MIN_ID_LENGTH))
        problems = validate_events(events, min_length)
        fault, failing = self.failing_records(request, len(events))
        if fault is not None and failing:
            problems.invalid[fault.field or "event_type"].extend(failing)
        if problems:
            body = problems.body()
            if fault is not None and failing and fault.message:
                body["error"] = fault.message
            return self.respond(request, 400, body, body=payload)
        return self.respond(request, 200, {
            "code": 200, "events_ingested": len(events), "payload_size_bytes": len(raw),
            "server_upload_time": int(time.time() * 1000)}, body=payload, records=events)

    def _check_request(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        key = payload.get("api_key")
        if not key:
            return 400, {"code": 400, "error": "Request missing required field",
                         "missing_field": "api_key"}
        if key != self.api_key:
            return 400, {"code": 400, "error": f"Invalid API key: {key}"}
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            return 400, {"code": 400, "error": "Request missing required field",
                         "missing_field": "events"}
        if len(events) > self.max_events:
            return 413, {"code": 413, "error": "Payload too large"}
        options = payload.get("options")
        if options is not None:
            length = options.get("min_id_length") if isinstance(options, dict) else None
            if not isinstance(options, dict) or (length is not None and (
                    isinstance(length, bool) or not isinstance(length, int) or length < 1)):
                return 400, {"code": 400, "error": "Invalid options: min_id_length must be a "
                                                   "positive integer"}
        return None


def validate_events(events: list[Any], min_id_length: int) -> _EventProblems:
    problems = _EventProblems()
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            problems.invalid["event"].append(i)
            continue
        event_type = event.get("event_type")
        if event_type is None:
            problems.missing["event_type"].append(i)
        elif not isinstance(event_type, str) or not event_type:
            problems.invalid["event_type"].append(i)
        ids = {k: event[k] for k in ("user_id", "device_id") if event.get(k) not in (None, "")}
        if not ids:
            problems.missing["user_id"].append(i)
        for key, value in ids.items():
            if not isinstance(value, str) or value.strip().lower() in PLACEHOLDER_IDS:
                problems.invalid[key].append(i)
            elif len(value) < min_id_length:
                problems.id_lengths[key].append(i)
        stamp = event.get("time")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)
                                  or stamp < 0):
            problems.invalid["time"].append(i)
        for key in ("event_properties", "user_properties"):
            if key in event and not isinstance(event[key], dict):
                problems.invalid[key].append(i)
    return problems


def throttled_body(raw: bytes) -> dict[str, Any]:
    """Amplitude's 429 body; every event of the request is reported as throttled."""
    try:
        payload = orjson.loads(raw)
        events = [e for e in payload.get("events", []) if isinstance(e, dict)]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        events = []
    users = Counter(str(e["user_id"]) for e in events if e.get("user_id") is not None)
    devices = Counter(str(e["device_id"]) for e in events if e.get("device_id") is not None)
    return {"code": 429, "error": "Too many requests for some devices and users",
            "eps_threshold": EPS_THRESHOLD, "throttled_devices": dict(devices),
            "throttled_users": dict(users), "throttled_events": list(range(len(events)))}
