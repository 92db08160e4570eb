"""Segment HTTP Tracking API emulator (partner-apis.md §4).

"Segment returns a 200 response for all API requests except errors caused by large
payloads and JSON errors (which return 400 responses)" (segment-docs http-api [G1]).
So a message Segment will not ingest (no userId nor anonymousId, a track without an
event, an unknown write key) is answered 200 like any other, and recorded here as
rejected with the discard reason Segment's Delivery Overview gives it. Segment does not
document its error bodies; the emulator's carry the `code` and `message` the official
library reads ([G3] request.py).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from moerules.connectors.emulation.base import Emulator
from moerules.connectors.emulation.faults import FaultPlan, bounded_float, bounded_int
from moerules.connectors.emulation.intake import (
    BodyTooLarge,
    check_declared_length,
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

CALLS = ("track", "identify", "page", "screen", "group", "alias")
# Field each call needs besides userId/anonymousId (Segment's spec); for group and alias
# the discard codes are the emulator's own.
REQUIRED_FIELD = {"track": "event", "group": "groupId", "alias": "previousId"}
# §4 [G2]: EU workspaces must use the EU host; "data sent to the US host silently
# disappears" (and the other way round).
REGION_HOSTS = {
    "us": frozenset({"api.segment.io"}),
    "eu": frozenset({"events.eu1.segmentapis.com"}),
}
MESSAGE_MAX_BYTES = 32 * 1024  # [G1]: 32 KB per call or per event in a batch
BATCH_MAX_BYTES = 500 * 1024  # [G1]: 500 KB per batch request
BATCH_MAX_MESSAGES = 2500  # [G1]: more is answered 200 and dropped
DEDUP_WINDOW = 86_400.0  # messageId de-duplication; Segment's look-back is about a day


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


class SegmentEmulator(Emulator):
    """`POST /v1/{track,identify,page,screen,group,alias,batch}` for one write key."""

    name = "segment"

    def __init__(
        self,
        write_key: str = "test-segment-write-key",
        *,
        region: str = "us",
        max_message_bytes: int = MESSAGE_MAX_BYTES,
        max_batch_bytes: int = BATCH_MAX_BYTES,
        max_batch_messages: int = BATCH_MAX_MESSAGES,
        requests_per_second: int | None = 1000,
        second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        max_received: int = 100_000,
    ) -> None:
        if region not in REGION_HOSTS:
            raise ValueError(f"region must be one of {sorted(REGION_HOSTS)}")
        self.write_key = write_key
        self.region = region
        self.max_message_bytes = bounded_int("max_message_bytes", max_message_bytes, 1, 64 * 2**20)
        self.max_batch_bytes = bounded_int("max_batch_bytes", max_batch_bytes, 1, 64 * 2**20)
        self.max_batch_messages = bounded_int(
            "max_batch_messages", max_batch_messages, 1, 1_000_000
        )
        # §4: "Stay below 1,000 req/s per workspace"; a 429 carries Retry-After and
        # X-RateLimit-Reset.
        limits = (
            {}
            if requests_per_second is None
            else {
                "requests": (
                    bounded_int("requests_per_second", requests_per_second, 1, 10**7),
                    bounded_float("second", second, 0.001, 3600.0),
                )
            }
        )
        self._quotas = Quotas(limits, clock)
        self._clock = clock
        self._seen_lock = threading.Lock()
        self._seen = SeenKeys(DEDUP_WINDOW)
        super().__init__(faults=faults, max_received=max_received)

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/{call}", self._call, methods=["POST"])]

    def credentials(self) -> dict[str, str]:
        return {
            "auth": f"Basic {self.write_key}: (empty password) or writeKey in the body",
            "region": self.region,
        }

    def body_limit(self, path: str) -> int:
        return self.max_batch_bytes if path == "/v1/batch" else self.max_message_bytes

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return error("rate_limited", "Too Many Requests")
        return error(
            "server_error", "Internal Server Error" if status == 500 else "Service Unavailable"
        )

    def fault_headers(self, status: int, retry_after: int) -> dict[str, str]:
        if status != 429:
            return {}
        return {"X-RateLimit-Reset": str(int(time.time()) + retry_after)}

    def reset_state(self) -> None:
        self._quotas.reset()
        with self._seen_lock:
            self._seen.clear()

    async def _call(self, request: Request) -> Response:
        call = request.path_params["call"]
        if call not in (*CALLS, "batch"):
            return self.respond(request, 404, error("not_found", f"unknown endpoint /v1/{call}"))
        breach = self._quotas.charge({"requests": 1})
        if breach is not None:
            with self._lock:
                self._stats.rate_limited += 1
            wait = max(1, -int(-breach.retry_after // 1))
            return self.respond(
                request,
                429,
                error("rate_limited", "Too Many Requests"),
                headers={
                    "Retry-After": str(wait),
                    "X-RateLimit-Reset": str(int(time.time()) + wait),
                },
            )
        if media_type(request) != "application/json":  # [G1]: required; the answer is ours
            return self.respond(
                request, 400, error("invalid_content_type", "Content-Type must be application/json")
            )
        encoding = content_encoding(request)
        if encoding not in ("", "gzip"):  # [G3]: the library may gzip its batches
            return self.respond(
                request,
                400,
                error(
                    "invalid_content_encoding", f"unsupported Content-Encoding {encoding[:40]!r}"
                ),
            )
        limit = self.body_limit(request.url.path)
        too_large = error("max_request_size_exceeded", f"request body exceeds {limit} bytes")
        try:
            check_declared_length(request, limit)
            raw = await self.read_body(request, limit)
            if encoding == "gzip":
                raw = gunzip(raw, limit)
        except BodyTooLarge:
            return self.respond(request, 400, too_large)
        except zlib.error:
            return self.respond(request, 400, error("invalid_gzip", "could not decompress"))
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.respond(request, 400, error("invalid_json", "invalid JSON body"))
        if not isinstance(payload, dict):
            return self.respond(
                request, 400, error("invalid_json", "body must be an object"), body=payload
            )
        key = self._write_key(request, payload)
        if not key:  # an empty key is refused at the edge (segmentio/analytics-go#205)
            return self.respond(
                request, 400, error("missing_write_key", "no write key"), body=payload
            )
        messages, problem = self._messages(call, payload)
        if problem is not None:
            return self.respond(request, 400, problem, body=payload)
        reasons = self._discards(request, key, messages)
        records = [m for i, m in enumerate(messages) if i not in reasons]
        return self.respond(
            request,
            200,
            {"success": True},
            body=payload,
            records=records,
            rejected=sorted(reasons),
            reasons=reasons,
        )

    def _write_key(self, request: Request, payload: dict[str, Any]) -> str:
        auth = parse_basic_auth(request.headers.get("authorization"))
        if auth is not None:
            return auth.username
        key = payload.get("writeKey")
        return key if isinstance(key, str) else ""

    def _messages(
        self, call: str, payload: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """The messages of the request, or the 400 that refuses it whole."""
        if call != "batch":
            message = {k: v for k, v in payload.items() if k != "writeKey"}
            message["type"] = call
            return [message], None
        batch = payload.get("batch")
        if not isinstance(batch, list):
            return [], error("invalid_batch", "batch must be a list of messages")
        for i, item in enumerate(batch):
            # [G1]: "a limit of 32KB per event in the batch ... Segment returns a 400"
            if len(orjson.dumps(item)) > self.max_message_bytes:
                return [], error(
                    "max_message_size_exceeded",
                    f"batch[{i}] exceeds {self.max_message_bytes} bytes",
                )
        return [
            merge_batch_fields(payload, item) if isinstance(item, dict) else item for item in batch
        ], None

    def _discards(self, request: Request, key: str, messages: list[Any]) -> dict[int, str]:
        """Index -> Delivery Overview discard reason, for what Segment drops after its 200."""
        everything = range(len(messages))
        if key != self.write_key:
            return dict.fromkeys(everything, "project_not_found")
        if any(
            host_name(request) in hosts
            for region, hosts in REGION_HOSTS.items()
            if region != self.region
        ):
            return dict.fromkeys(everything, "wrong_region")
        if len(messages) > self.max_batch_messages:  # §4: 200, but the events are dropped
            return dict.fromkeys(everything, "too_many_messages")
        reasons: dict[int, str] = {}
        with self._seen_lock:
            now = self._clock()
            for i, message in enumerate(messages):
                reason = discard_reason(message)
                message_id = message.get("messageId") if isinstance(message, dict) else None
                if (
                    reason is None
                    and isinstance(message_id, str)
                    and message_id
                    and not self._seen.first_time(message_id, now)
                ):
                    reason = "duplicate_message_id"
                if reason is not None:
                    reasons[i] = reason
        return reasons


def discard_reason(message: Any) -> str | None:
    """Why Segment drops `message` on ingest (Delivery Overview "Failed on Ingest" codes),
    or None when it is ingested."""
    if not isinstance(message, dict) or message.get("type") not in CALLS:
        return "invalid_type"  # the emulator's own code
    if not any(_present(message.get(k)) for k in ("userId", "anonymousId")):
        return "no_user_anon_id"
    kind = message["type"]
    if kind == "track":
        if "event" not in message:
            return "event_not_defined"
        if not isinstance(message["event"], str) or not message["event"].strip():
            return "event_not_string"
    if "properties" in message and not isinstance(message["properties"], dict):
        return "properties_not_object"
    if "traits" in message and not isinstance(message["traits"], dict):
        return "traits_not_object"
    if (
        kind in ("page", "screen")
        and "name" in message
        and (not isinstance(message["name"], str) or not message["name"].strip())
    ):
        return "name_not_string"
    required = REQUIRED_FIELD.get(kind)
    if kind in ("group", "alias") and required is not None and not _present(message.get(required)):
        return f"missing_{required}"
    return None


def merge_batch_fields(payload: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Batch-level context and integrations apply to every item (item keys win) [G1]."""
    merged = dict(item)
    for key in ("context", "integrations"):
        shared = payload.get(key)
        if isinstance(shared, dict):
            own = item.get(key)
            merged[key] = {**shared, **own} if isinstance(own, dict) else dict(shared)
    return merged


def _present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int | float) and not isinstance(value, bool)
