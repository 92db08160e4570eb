"""Mixpanel `/import` (and `/engage`) emulator (reference §5).

`/import?strict=1` is a partial-success API: valid records are ingested, the others come
back in `failed_records` with a 400. Clients must not retry that 400 wholesale.
"""

from __future__ import annotations

import re
import time
import zlib
from typing import Any
from urllib.parse import parse_qs

import orjson
from moerules.connectors.emulation.base import Emulator, media_type, parse_basic_auth
from moerules.connectors.emulation.faults import FaultPlan
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

PHRASES = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
PLACEHOLDER_DISTINCT_IDS = frozenset({
    "anon", "anonymous", "null", "nil", "none", "undefined", "unknown", "<nil>", "[]", "{}",
    "00000000-0000-0000-0000-000000000000"})
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
EARLIEST = 31_536_000  # 1971-01-01T00:00:00Z in epoch seconds
MAX_EVENT_BYTES = 1_000_000
MAX_PROPERTIES = 255
ENGAGE_OPS = frozenset({"$set", "$set_once", "$add", "$append", "$union", "$remove", "$unset",
                        "$delete"})


def error(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "error": message, "status": PHRASES.get(status, "Error")}


class MixpanelEmulator(Emulator):
    """`POST /import` (service account + project_id, project token, or API secret)."""

    name = "mixpanel"

    def __init__(self, project_token: str | None = "test-mixpanel-token", *,
                 project_id: str = "1234567",
                 service_account: tuple[str, str] | None = ("test-sa.user", "test-sa-secret"),
                 api_secret: str | None = None,
                 max_events: int = 2000,
                 max_body_bytes: int = 10 * 1024 * 1024,
                 faults: FaultPlan | None = None) -> None:
        self.project_token = project_token
        self.project_id = project_id
        self.service_account = service_account
        self.api_secret = api_secret
        self.max_events = max_events
        self.max_body_bytes = max_body_bytes
        super().__init__(faults=faults)

    def routes(self) -> list[BaseRoute]:
        return [Route("/import", self._import, methods=["POST"]),
                Route("/engage", self._engage, methods=["POST"])]

    def credentials(self) -> dict[str, str]:
        creds = {"project_id": self.project_id}
        if self.service_account is not None:
            user, secret = self.service_account
            creds["service_account"] = f"Basic {user}:{secret} + ?project_id={self.project_id}"
        if self.project_token is not None:
            creds["project_token"] = f"Basic {self.project_token}: (empty password)"
        if self.api_secret is not None:
            creds["api_secret"] = f"Basic {self.api_secret}: (empty password)"
        return creds

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return error(429, "Project exceeded rate limits. Please retry the request with "
                              "exponential backoff.")
        return error(status, PHRASES.get(status, "Server Error"))

    # -- /import ---------------------------------------------------------------------------
    async def _import(self, request: Request) -> Response:
        raw = await request.body()
        denied = self._check_auth(request)
        if denied is not None:
            return self.respond(request, denied[0], error(*denied))
        events, problem = self._parse(request, raw)
        if problem is not None:
            return self.respond(request, problem[0], error(*problem), body=events)
        if len(events) > self.max_events:
            return self.respond(request, 413, error(
                413, f"request contains {len(events)} events; the limit is {self.max_events}"),
                body=events)
        strict = request.query_params.get("strict") == "1"
        failed = {i: f for i, e in enumerate(events) if (f := check_event(e)) is not None}
        fault, failing = self.failing_records(request, len(events))
        for i in failing:
            failed.setdefault(i, (fault.field if fault and fault.field else "properties",
                                  fault.message if fault and fault.message
                                  else "record rejected"))
        kept = [e for i, e in enumerate(events) if i not in failed]
        if not failed or not strict:
            return self.respond(request, 200, {"code": 200, "num_records_imported": len(kept),
                                               "status": "OK"},
                                body=events, records=kept, rejected=sorted(failed))
        failed_records = [{"index": i, "insert_id": _insert_id(events[i]), "field": field,
                           "message": message} for i, (field, message) in sorted(failed.items())]
        body = dict(error(400, "some data points in the request failed validation"),
                    num_records_imported=len(kept), failed_records=failed_records)
        return self.respond(request, 400, body, body=events, records=kept,
                            rejected=sorted(failed))

    def _check_auth(self, request: Request) -> tuple[int, str] | None:
        auth = parse_basic_auth(request.headers.get("authorization"))
        if auth is None:
            return 401, "missing or invalid Authorization header; use HTTP Basic auth"
        project_id = request.query_params.get("project_id")
        if self.service_account is not None and tuple(auth) == self.service_account:
            if project_id is None:
                return 400, "project_id is required when authenticating with a service account"
            if project_id != self.project_id:
                return 401, "service account has no access to this project"
            return None
        secrets = {s for s in (self.project_token, self.api_secret) if s is not None}
        if auth.password == "" and auth.username in secrets:
            if project_id is not None and project_id != self.project_id:
                return 401, "project_id does not match the credentials"
            return None
        return 401, "Invalid credentials"

    def _parse(self, request: Request, raw: bytes) -> tuple[list[Any], tuple[int, str] | None]:
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            try:
                raw = _gunzip(raw, self.max_body_bytes + 1)
            except zlib.error:
                return [], (400, "could not decompress the gzip body")
        elif encoding not in ("", "identity"):
            return [], (400, f"unsupported Content-Encoding {encoding!r}")
        if len(raw) > self.max_body_bytes:
            return [], (413, f"request body exceeds {self.max_body_bytes} bytes")
        kind = media_type(request)
        try:
            if kind == "application/x-ndjson":
                return [orjson.loads(line) for line in raw.splitlines() if line.strip()], None
            if kind == "application/json":
                parsed = orjson.loads(raw)
                return (parsed if isinstance(parsed, list) else [parsed]), None
        except orjson.JSONDecodeError as exc:
            return [], (400, f"could not parse the body as JSON: {exc}")
        return [], (400, "Content-Type must be application/json or application/x-ndjson")

    # -- /engage ---------------------------------------------------------------------------
    async def _engage(self, request: Request) -> Response:
        """Profile updates: 200 even when invalid; the body says whether they applied."""
        raw = await request.body()
        try:
            if media_type(request) == "application/x-www-form-urlencoded":
                raw = parse_qs(raw.decode()).get("data", [""])[0].encode()
            updates = orjson.loads(raw)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return self.respond(request, 400, {"status": 0, "error": "invalid JSON body"})
        if isinstance(updates, dict):
            updates = [updates]
        if not isinstance(updates, list) or len(updates) > self.max_events:
            return self.respond(request, 400, {
                "status": 0, "error": f"send a list of at most {self.max_events} updates"},
                body=updates)
        for i, update in enumerate(updates):
            problem = self._check_update(update)
            if problem is not None:
                return self.respond(request, 200, {"status": 0, "error": f"update {i}: {problem}"},
                                    body=updates)
        return self.respond(request, 200, {"status": 1, "error": None}, body=updates,
                            records=updates)

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
        return "properties.distinct_id", f"'properties.distinct_id' is invalid: {distinct_id!r}"
    insert_id = props.get("$insert_id")
    if insert_id is None:
        return "properties.$insert_id", "'properties.$insert_id' is required"
    if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
        return "properties.$insert_id", ("'properties.$insert_id' must be at most 36 "
                                         "alphanumeric or '-' characters")
    if len(props) >= MAX_PROPERTIES:
        return "properties", f"too many properties (limit {MAX_PROPERTIES - 1})"
    if len(orjson.dumps(event)) > MAX_EVENT_BYTES:
        return "", "record exceeds 1 MB"
    return None


def _check_time(value: Any) -> str | None:
    if value is None:
        return "'properties.time' is required"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "'properties.time' must be a number of seconds or milliseconds since epoch"
    seconds = value / 1000 if value > 1e11 else value
    if seconds < EARLIEST:
        return "'properties.time' must be after 1971-01-01"
    if seconds > time.time() + 3600:
        return "'properties.time' must not be more than 1 hour in the future"
    return None


def _insert_id(event: Any) -> Any:
    props = event.get("properties") if isinstance(event, dict) else None
    return props.get("$insert_id") if isinstance(props, dict) else None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes, so a gzip bomb costs nothing."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, limit)
    if not inflater.eof and not inflater.unconsumed_tail and len(out) < limit:
        raise zlib.error("truncated gzip stream")
    return out
