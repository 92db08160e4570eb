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
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors._batching import BatchPolicy, JsonArrayEncoder, Unencodable
from moerules.connectors.segment.settings import SegmentSettings
from moerules.connectors.typed_settings import parse_settings, settings_doc
from moerules.engine.connector import (
    DeliveryOutcome,
    EventOut,
    RateLimit,
    Sink,
    SinkEncoder,
    UserOut,
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
    required_settings: ClassVar[frozenset[str]] = frozenset({"write_key"})
    secret_settings: ClassVar[frozenset[str]] = frozenset({"write_key"})
    settings_doc: ClassVar[dict[str, str]] = settings_doc(SegmentSettings)
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        parsed, self._problems = parse_settings(SegmentSettings, settings, self.name)
        self.config = parsed or SegmentSettings.model_construct(
            write_key=str(settings.get("write_key", "")))
        self.url = f"{self.config.base_url}/v1/batch"
        token = base64.b64encode(f"{self.config.write_key}:".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self.envelope = (b'{"batch":[', b'],"writeKey":' + orjson.dumps(
            self.config.write_key) + b"}")
        self.policy = BatchPolicy(self.config.max_events_per_request,
                                  self.config.max_request_bytes, self.config.max_message_bytes)

    def check_settings(self) -> list[tuple[str, str]]:
        return list(self._problems)

    def element(self, item: EventOut | UserOut) -> dict[str, Any]:
        """One ``track`` message."""
        if not isinstance(item, EventOut):
            raise Unencodable("this sink sends track messages only")
        message: dict[str, Any] = {"type": "track", "userId": item.identity, "event": item.name,
                                   "properties": item.attributes}
        message.update(item.fields)
        return message

    def request(self, body: bytes, items: list[EventOut | UserOut]) -> WireRequest:
        return WireRequest("POST", self.url, dict(self.headers), body, list(items),
                           limit_key="batch")

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(self.policy, element=self.element, request=self.request,
                                envelope=self.envelope)

    def rate_limits(self) -> list[RateLimit]:
        return [RateLimit(self.config.requests_per_second, 1.0)]

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        excerpt = body[:300].decode("utf-8", "replace")
        if 200 <= status < 300:
            return DeliveryOutcome(status, ok=True)
        if status == 429 or status >= 500:
            return DeliveryOutcome(status, retry=True,
                                   retry_after=retry_after_seconds(headers.get("retry-after")),
                                   error=f"HTTP {status}", excerpt=excerpt)
        return DeliveryOutcome(status, error=f"HTTP {status}", excerpt=excerpt)
