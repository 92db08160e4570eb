"""Mixpanel `/import` (and `/engage`) emulator (partner-apis.md §5).

`/import?strict=1` is a partial-success API: valid records are ingested, the others come
back in `failed_records` with a 400 (docs.mixpanel.com reference/import-events [X1] and
troubleshooting/errors/400-bad-request [X2]). Clients must not retry that 400 wholesale.
Auth, content type, encoding and declared size are checked before the body is read; the
body is read, and gunzipped, as a stream capped at 10 MB.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson
from moerules.connectors.emulation.base import Emulator
from moerules.connectors.emulation.faults import FaultPlan, bounded_float, bounded_int
from moerules.connectors.emulation.intake import (
    BodyTooLarge,
    content_encoding,
    gunzip,
    host_name,
    media_type,
    parse_basic_auth,
)
from moerules.connectors.emulation.limits import Quotas, SeenKeys
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# [X2] "placeholder values that usually indicate an implementation mistake"
PLACEHOLDER_DISTINCT_IDS = frozenset(
    {
        "anon",
        "anonymous",
        "null",
        "nil",
        "none",
        "n/a",
        "undefined",
        "unknown",
        "<nil>",
        "[]",
        "{}",
        "00000000-0000-0000-0000-000000000000",
    }
)
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")  # [X2]: at most 36 characters
EARLIEST = 31_536_000  # [X2]: after 1971-01-01T00:00:00Z, in epoch seconds
MAX_EVENT_BYTES = 1_000_000  # [X1]: 1 MB per event
MAX_PROPERTIES = 255  # [X1]: fewer than 255 properties
MAX_BODY_BYTES = 10 * 1024 * 1024  # [X1]: 10 MB uncompressed; gzip does not raise it
MAX_EVENTS = 2000  # [X1]
BYTES_PER_MINUTE = 2 * 1024**3  # [X2]: 2 GB of uncompressed JSON a minute per project
IMPORT_TYPES = ("application/json", "application/x-ndjson")
ENGAGE_OPS = frozenset(
    {"$set", "$set_once", "$add", "$append", "$union", "$remove", "$unset", "$delete"}
)
# §5 hosts [X3]: "Events sent to the wrong residency host are not ingested"; what that
# host answers is UNCONFIRMED, so the emulator answers as usual and drops the records.
RESIDENCY_HOSTS = {
    "us": frozenset({"api.mixpanel.com"}),
    "eu": frozenset({"api-eu.mixpanel.com"}),
    "in": frozenset({"api-in.mixpanel.com"}),
}
DEDUP_WINDOW = 7 * 86_400.0


def error(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "error": message, "status": PHRASES.get(status, "Error")}


class Refusal(Exception):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


class MixpanelEmulator(Emulator):
    """`POST /import` (service account + project_id, project token, or API secret) and
    `POST /engage`, for one project in one residency."""

    name = "mixpanel"

    def __init__(
        self,
        project_token: str | None = "test-mixpanel-token",
        *,
        project_id: str = "1234567",
        service_account: Sequence[str] | None = ("test-sa.user", "test-sa-secret"),
        api_secret: str | None = None,
        residency: str = "us",
        max_events: int = MAX_EVENTS,
        max_body_bytes: int = MAX_BODY_BYTES,
        bytes_per_minute: int | None = BYTES_PER_MINUTE,
        minute: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        max_received: int = 100_000,
    ) -> None:
        if residency not in RESIDENCY_HOSTS:
            raise ValueError(f"residency must be one of {sorted(RESIDENCY_HOSTS)}")
        self.project_token = project_token
        self.project_id = project_id
        if service_account is not None and (
            isinstance(service_account, str) or len(service_account) != 2
        ):
            raise ValueError("service_account is a pair: [username, secret]")
        self.service_account = (
            None if service_account is None else (str(service_account[0]), str(service_account[1]))
        )
        self.api_secret = api_secret
        self.residency = residency
        self.max_events = bounded_int("max_events", max_events, 1, 100_000)
        self.max_body_bytes = bounded_int("max_body_bytes", max_body_bytes, 1, 256 * 2**20)
        limits = (
            {}
            if bytes_per_minute is None
            else {
                "bytes": (
                    bounded_int("bytes_per_minute", bytes_per_minute, 1, 2**40),
                    bounded_float("minute", minute, 0.001, 86_400.0),
                )
            }
        )
        self._quotas = Quotas(limits, clock)
        self._clock = clock
        self._seen_lock = threading.Lock()
        self._seen = SeenKeys(DEDUP_WINDOW)
        super().__init__(faults=faults, max_received=max_received)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/import", self._import, methods=["POST"]),
            Route("/engage", self._engage, methods=["POST"]),
        ]

    def credentials(self) -> dict[str, str]:
        creds = {"project_id": self.project_id, "residency": self.residency}
        if self.service_account is not None:
            user, secret = self.service_account
            creds["service_account"] = f"Basic {user}:{secret} + ?project_id={self.project_id}"
        if self.project_token is not None:
            creds["project_token"] = f"Basic {self.project_token}: (empty password)"
        if self.api_secret is not None:
            creds["api_secret"] = f"Basic {self.api_secret}: (empty password)"
        return creds

    def body_limit(self, path: str) -> int:
        return self.max_body_bytes

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return rate_limited()
        return error(status, PHRASES.get(status, "Server Error"))

    def reset_state(self) -> None:
        self._quotas.reset()
        with self._seen_lock:
            self._seen.clear()

    # -- /import ---------------------------------------------------------------------------
    async def _import(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            events, raw_size = await self._read_events(request)
            if len(events) > self.max_events:
                raise Refusal(
                    413,
                    f"request contains {len(events)} events; the limit is {self.max_events}",
                    events,
                )
            if self._quotas.charge({"bytes": raw_size}) is not None:
                with self._lock:
                    self._stats.rate_limited += 1
                return self.respond(request, 429, rate_limited(), body=events)
        except Refusal as refusal:
            return self.respond(
                request, refusal.status, error(refusal.status, refusal.message), body=refusal.body
            )
        strict = request.query_params.get("strict") == "1"
        failed = {i: f for i, e in enumerate(events) if (f := check_event(e)) is not None}
        fault, failing = self.failing_records(request, len(events))
        for i in failing:
            failed.setdefault(
                i,
                (
                    fault.field if fault and fault.field else "properties",
                    fault.message if fault and fault.message else "record rejected",
                ),
            )
        kept = len(events) - len(failed)
        reasons = {i: f"{field}: {message}" for i, (field, message) in failed.items()}
        records = self._ingest(request, events, reasons)
        if not failed or not strict:
            # Without strict=1 Mixpanel does not report failures [X1]; they are not ingested.
            return self.respond(
                request,
                200,
                {"code": 200, "num_records_imported": kept, "status": "OK"},
                body=events,
                records=records,
                rejected=sorted(reasons),
                reasons=reasons,
            )
        failed_records = [
            {"index": i, "insert_id": _insert_id(events[i]), "field": field, "message": message}
            for i, (field, message) in sorted(failed.items())
        ]
        body = dict(
            error(400, "some data points in the request failed validation"),
            num_records_imported=kept,
            failed_records=failed_records,
        )
        return self.respond(
            request,
            400,
            body,
            body=events,
            records=records,
            rejected=sorted(reasons),
            reasons=reasons,
        )

    def _check_auth(self, request: Request) -> None:
        """[X1]: a service account (Basic user:secret, with ?project_id), the project token
        as username with an empty password, or the legacy API secret the same way. The
        messages are the emulator's own."""
        auth = parse_basic_auth(request.headers.get("authorization"))
        if auth is None:
            raise Refusal(401, "missing or invalid Authorization header; use HTTP Basic auth")
        project_id = request.query_params.get("project_id")
        if self.service_account is not None and tuple(auth) == self.service_account:
            if project_id is None:
                raise Refusal(
                    400, "project_id is required when authenticating with a service account"
                )
            if project_id != self.project_id:
                raise Refusal(401, "service account has no access to this project")
            return
        secrets = {s for s in (self.project_token, self.api_secret) if s is not None}
        if auth.password == "" and auth.username in secrets:
            if project_id is not None and project_id != self.project_id:
                raise Refusal(401, "project_id does not match the credentials")
            return
        raise Refusal(401, "Invalid credentials")

    async def _read_events(self, request: Request) -> tuple[list[Any], int]:
        """The records and the uncompressed size; headers first, then the capped body."""
        kind = media_type(request)
        if kind not in IMPORT_TYPES:
            raise Refusal(400, "Content-Type must be application/json or application/x-ndjson")
        encoding = content_encoding(request)
        if encoding not in ("", "gzip"):
            raise Refusal(400, f"unsupported Content-Encoding {encoding[:40]!r}")
        too_large = f"request body exceeds {self.max_body_bytes} bytes"
        try:
            raw = await self.read_body(request, self.max_body_bytes)
            if encoding == "gzip":
                raw = gunzip(raw, self.max_body_bytes)
        except BodyTooLarge:
            raise Refusal(413, too_large) from None
        except zlib.error:
            raise Refusal(400, "could not decompress the gzip body") from None
        try:
            if kind == "application/x-ndjson":
                events = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                parsed = orjson.loads(raw)
                events = parsed if isinstance(parsed, list) else [parsed]
        except orjson.JSONDecodeError as exc:
            raise Refusal(400, f"could not parse the body as JSON: {exc}") from None
        return events, len(raw)

    def _ingest(self, request: Request, events: list[Any], reasons: dict[int, str]) -> list[Any]:
        """The records Mixpanel keeps: not failed, sent to the project's residency, and not
        a duplicate ("$insert_id ... is what makes retrying an /import request safe" [X2];
        the key is event, distinct_id, time to the second and $insert_id)."""
        if any(
            host_name(request) in hosts
            for residency, hosts in RESIDENCY_HOSTS.items()
            if residency != self.residency
        ):
            for i in range(len(events)):
                reasons.setdefault(i, "wrong residency host: not ingested")
            return []
        records: list[Any] = []
        with self._seen_lock:
            now = self._clock()
            for i, event in enumerate(events):
                if i in reasons:
                    continue
                props = event["properties"]
                stamp = props["time"] / 1000 if props["time"] > 1e11 else props["time"]
                key = orjson.dumps(
                    [event["event"], str(props["distinct_id"]), int(stamp), props["$insert_id"]]
                ).decode()
                if self._seen.first_time(key, now):
                    records.append(event)
                else:
                    reasons[i] = (
                        f"duplicate of an imported event ($insert_id {props['$insert_id']!r})"
                    )
        return records

    # -- /engage ---------------------------------------------------------------------------
    async def _engage(self, request: Request) -> Response:
        """Profile updates: 200 even when invalid; the body says whether they applied [X4]."""
        try:
            raw = await self.read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            return self.respond(
                request, 413, error(413, f"request body exceeds {self.max_body_bytes} bytes")
            )
        try:
            if media_type(request) == "application/x-www-form-urlencoded":
                raw = parse_qs(raw.decode()).get("data", [""])[0].encode()
            updates = orjson.loads(raw)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return self.respond(request, 400, {"status": 0, "error": "invalid JSON body"})
        if isinstance(updates, dict):
            updates = [updates]
        if not isinstance(updates, list) or len(updates) > self.max_events:
            return self.respond(
                request,
                400,
                {"status": 0, "error": f"send a list of at most {self.max_events} updates"},
                body=updates,
            )
        for i, update in enumerate(updates):
            problem = self._check_update(update)
            if problem is not None:
                return self.respond(
                    request, 200, {"status": 0, "error": f"update {i}: {problem}"}, body=updates
                )
        return self.respond(
            request, 200, {"status": 1, "error": None}, body=updates, records=updates
        )

    def _check_update(self, update: Any) -> str | None:
        if not isinstance(update, dict):
            return "must be an object"
        if self.project_token is None or update.get("$token") != self.project_token:
            return "invalid $token"
        if update.get("$distinct_id") in (None, ""):
            return "$distinct_id is required"
        ops = [k for k in update if k in ENGAGE_OPS]
        if len(ops) != 1:
            return f"exactly one operation of {sorted(ENGAGE_OPS)} is required"
        return None


def rate_limited() -> dict[str, Any]:
    # [X2] 429-rate-limit-exceeded: the body; no Retry-After header is documented.
    return error(
        429, "Project exceeded rate limits. Please retry the request with exponential backoff."
    )


def check_event(event: Any) -> tuple[str, str] | None:
    """(field, message) of the first problem of an /import record, or None."""
    if not isinstance(event, dict):
        return "", "each record must be a JSON object"
    if not isinstance(event.get("event"), str) or not event["event"].strip():
        return "event", "'event' must be a non-empty string"
    props = event.get("properties")
    if not isinstance(props, dict):
        return "properties", "'properties' must be an object"
    problem = _check_time(props.get("time"))
    if problem is not None:
        return "properties.time", problem
    distinct_id = props.get("distinct_id")
    if distinct_id is None:
        return "properties.distinct_id", "'properties.distinct_id' is required"
    if isinstance(distinct_id, bool) or not isinstance(distinct_id, str | int):
        return "properties.distinct_id", "'properties.distinct_id' must be a string"
    if str(distinct_id).strip().lower() in PLACEHOLDER_DISTINCT_IDS:
        return "properties.distinct_id", (
            f"'properties.distinct_id' is invalid: {str(distinct_id)[:100]!r}"
        )
    insert_id = props.get("$insert_id")
    if insert_id is None:
        return "properties.$insert_id", "'properties.$insert_id' is required"
    if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
        return "properties.$insert_id", (
            "'properties.$insert_id' must be at most 36 alphanumeric or '-' characters"
        )
    if len(props) >= MAX_PROPERTIES:
        return "properties", f"too many properties (limit {MAX_PROPERTIES - 1})"
    if len(orjson.dumps(event)) > MAX_EVENT_BYTES:
        return "", "record exceeds 1 MB"
    return None


def _check_time(value: Any) -> str | None:
    if value is None:
        return "'properties.time' is required"
    if isinstance(value, bool) or not isinstance(value, int | float):
        # [X2]'s example message for this failure
        return "'properties.time' is invalid: must be specified as seconds since epoch"
    seconds = value / 1000 if value > 1e11 else value
    if seconds < EARLIEST:
        return "'properties.time' must be after 1971-01-01"
    if seconds > time.time() + 3600:
        return "'properties.time' must not be more than 1 hour in the future"
    return None


def _insert_id(event: Any) -> Any:
    props = event.get("properties") if isinstance(event, dict) else None
    return props.get("$insert_id") if isinstance(props, dict) else None
