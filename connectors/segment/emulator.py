"""Segment HTTP Tracking API emulator (reference §4).

Segment answers 200 to almost anything; only auth, size, JSON and missing user ids
fail. Error bodies are the emulator's own (Segment does not document them).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from moerules.connectors.emulation.base import Emulator, media_type, parse_basic_auth
from moerules.connectors.emulation.faults import FaultPlan
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

CALLS = ("track", "identify", "page", "screen", "group", "alias")
# Field each call needs besides userId/anonymousId.
REQUIRED_FIELD = {"track": "event", "group": "groupId", "alias": "previousId"}


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


class SegmentEmulator(Emulator):
    """`POST /v1/{track,identify,page,screen,group,alias,batch}`."""

    name = "segment"

    def __init__(self, write_key: str = "test-segment-write-key", *,
                 max_message_bytes: int = 32 * 1024,
                 max_batch_bytes: int = 500 * 1024,
                 max_batch_messages: int = 2500,
                 faults: FaultPlan | None = None) -> None:
        self.write_key = write_key
        self.max_message_bytes = max_message_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_messages = max_batch_messages
        super().__init__(faults=faults)

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/{call}", self._call, methods=["POST"])]

    def credentials(self) -> dict[str, str]:
        return {"auth": f"Basic {self.write_key}: (empty password) or writeKey in the body"}

    def error_body(self, status: int, raw: bytes) -> Any:
        if status == 429:
            return error("rate_limited", "Too Many Requests")
        return error("server_error", "Internal Server Error" if status == 500
                     else "Service Unavailable")

    def fault_headers(self, status: int, retry_after: int) -> dict[str, str]:
        if status != 429:
            return {}
        return {"X-RateLimit-Reset": str(int(time.time()) + retry_after)}

    async def _call(self, request: Request) -> Response:
        call = request.path_params["call"]
        raw = await request.body()
        if call not in (*CALLS, "batch"):
            return self.respond(request, 404, error("not_found", f"unknown endpoint /v1/{call}"))
        if media_type(request) != "application/json":
            return self.respond(request, 400, error("invalid_content_type",
                                                    "Content-Type must be application/json"))
        limit = self.max_batch_bytes if call == "batch" else self.max_message_bytes
        if len(raw) > limit:
            return self.respond(request, 400, error(
                "max_request_size_exceeded", f"request body exceeds {limit} bytes"))
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.respond(request, 400, error("invalid_json", "invalid JSON body"))
        if not isinstance(payload, dict):
            return self.respond(request, 400, error("invalid_json", "body must be an object"),
                                body=payload)
        if not self._authorized(request, payload):
            return self.respond(request, 401, error("invalid_write_key", "invalid write key"),
                                body=payload)
        messages, problem = self._messages(call, payload)
        if problem is not None:
            return self.respond(request, 400, problem, body=payload)
        if len(messages) > self.max_batch_messages:  # documented: 200, events dropped
            return self.respond(request, 200, {"success": True}, body=payload,
                                rejected=range(len(messages)))
        return self.respond(request, 200, {"success": True}, body=payload, records=messages)

    def _authorized(self, request: Request, payload: dict[str, Any]) -> bool:
        auth = parse_basic_auth(request.headers.get("authorization"))
        if auth is not None and auth.username == self.write_key and auth.password == "":
            return True
        return payload.get("writeKey") == self.write_key

    def _messages(self, call: str,
                  payload: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if call != "batch":
            message = {k: v for k, v in payload.items() if k != "writeKey"}
            message["type"] = call
            problem = check_message(message, 0)
            return [message], problem
        batch = payload.get("batch")
        if not isinstance(batch, list):
            return [], error("invalid_batch", "batch must be a list of messages")
        messages = []
        for i, item in enumerate(batch):
            if not isinstance(item, dict) or item.get("type") not in CALLS:
                return [], error("invalid_type", f"batch[{i}].type must be one of {CALLS}")
            if len(orjson.dumps(item)) > self.max_message_bytes:
                return [], error("max_message_size_exceeded",
                                 f"batch[{i}] exceeds {self.max_message_bytes} bytes")
            problem = check_message(item, i)
            if problem is not None:
                return [], problem
            messages.append(merge_batch_fields(payload, item))
        return messages, None


def check_message(message: dict[str, Any], index: int) -> dict[str, Any] | None:
    if not any(_present(message.get(k)) for k in ("userId", "anonymousId")):
        return error("no_user_anon_id", f"message {index} has neither userId nor anonymousId")
    required = REQUIRED_FIELD.get(str(message.get("type")))
    if required is not None and not _present(message.get(required)):
        return error(f"missing_{required}", f"message {index} ({message['type']}) needs "
                                            f"{required}")
    return None


def merge_batch_fields(payload: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Batch-level context and integrations apply to every item (item keys win)."""
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
