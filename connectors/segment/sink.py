"""Segment's HTTP Tracking API as a sink (reference §4).

One request is ``POST {host}/v1/batch`` with ``Content-Type: application/json``, the write key
as HTTP Basic user with an empty password (``base64("KEY:")``) and the body
``{"batch":[...],"writeKey":"KEY"}``: auth as Segment's own Python library sends it (reference
§4 [G3]). At most 2,500 messages and 500 KB per batch, 32 KB per message. Each message is
``{"type":"track","userId":...,"event":...,"properties":{...},"timestamp":...,
"messageId":...}``: ``userId`` is the bundle's identity, ``event`` the event name,
``properties`` its attributes; ``timestamp`` and ``messageId`` (and ``anonymousId``,
``context``, ``integrations``) come from the rule's ``fields``.

The library also stamps ``sentAt`` with the clock; this sink does not, so a dry run's
requests are the same on every run (``timestamp`` carries the event's own time).

Answers become verdicts as Segment's library treats them: 2xx delivered; 429 and 5xx retried
(after ``Retry-After``, or ``X-RateLimit-Reset``, when given); 401/403 fatal (a wrong write key
fails every request alike); 413 split; every other 4xx rejected, never retried. Segment answers
200 even for messages it drops later, so a 200 is all a sender can know.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors.segment.settings import SegmentSettings
from moerules.engine.connector import (
    EVENT,
    BatchPolicy,
    Delivered,
    Fatal,
    Item,
    JsonArrayEncoder,
    RateLimit,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.retry import retry_after_seconds

__all__ = ["SegmentSink"]

EVENT_FIELDS: dict[str, str] = {
    "timestamp": "ISO-8601 time of the event",
    "messageId": "unique id (under 100 characters); Segment de-duplicates on it",
    "anonymousId": "anonymous id, besides or instead of userId",
    "context": "context object (ip, device, library, traits...)",
    "integrations": "which destinations get the message, e.g. {All: false, Mixpanel: true}",
}


class SegmentSink(Sink):
    """Sends mapped events to Segment as ``track`` messages of ``/v1/batch``."""

    name: ClassVar[str] = "segment"
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT})
    settings_model: ClassVar[type[SegmentSettings]] = SegmentSettings
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS
    example_settings: ClassVar[dict[str, Any]] = {"write_key": "segment-example-write-key"}
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = (
        (200, b'{"success":true}', Delivered),
        (400, b'{"success":false,"code":"invalid_json","message":"invalid JSON body"}', Reject),
        (401, b'{"success":false,"code":"invalid_write_key","message":"invalid write key"}', Fatal),
        (413, b"", Split),
        (429, b"", Retry),
        (500, b"", Retry),
        (502, b"", Retry),
        (503, b"", Retry),
    )

    def __init__(self, settings: SegmentSettings | Mapping[str, Any]) -> None:
        """From checked settings, or a mapping checked here by the same model (pydantic's
        ValidationError when it is wrong)."""
        config = (
            settings
            if isinstance(settings, SegmentSettings)
            else (SegmentSettings.model_validate(settings))
        )
        super().__init__(config.model_dump())
        self.config = config
        key = config.write_key.get_secret_value()
        self.url = f"{config.base_url}/v1/batch"
        token = base64.b64encode(f"{key}:".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self._envelope = (b'{"batch":[', b'],"writeKey":' + orjson.dumps(key) + b"}")
        self.batch_policy = BatchPolicy(
            max_items=config.max_events_per_request,
            max_request_bytes=config.max_request_bytes,
            max_item_bytes=config.max_message_bytes,
            max_age=config.max_wait_seconds,
        )

    @classmethod
    def from_settings(cls, settings: SegmentSettings) -> SegmentSink:
        """The sink for settings already checked (how the engine builds it)."""
        return cls(settings)

    def element(self, item: Item) -> dict[str, Any]:
        """One ``track`` message."""
        message: dict[str, Any] = {
            "type": "track",
            "userId": item.identity,
            "event": item.name,
            "properties": item.attributes,
        }
        message.update(item.fields)
        return message

    def request(self, _key: Any, body: bytes, items: list[Item]) -> WireRequest:
        return WireRequest(
            "POST", self.url, dict(self.headers), body, list(items), limit_key="batch"
        )

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(
            self.batch_policy,
            element=self.element,
            request=self.request,
            envelope=lambda _key: self._envelope,
        )

    def rate_limits(self) -> list[RateLimit]:
        return [RateLimit(self.config.requests_per_second, 1.0)]

    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if 200 <= status < 300:
            return Delivered()
        body = response.json()
        body = body if isinstance(body, dict) else {}
        what = ": ".join(str(body[k]) for k in ("code", "message") if body.get(k))
        reason = f"HTTP {status}" + (f" {what}" if what else "")
        if status == 429:
            return Retry(reason, after=_retry_after(response), throttled=True)
        if status >= 500:
            return Retry(reason, after=retry_after_seconds(response.header("retry-after")))
        if status in (401, 403):
            return Fatal(reason)
        if status == 413:
            return Split(reason)
        return Reject(reason)


def _retry_after(response: Response) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else ``X-RateLimit-Reset`` (epoch s)."""
    after = retry_after_seconds(response.header("retry-after"))
    if after is not None:
        return after
    reset = response.header("x-ratelimit-reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None
