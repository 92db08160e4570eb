"""Amplitude's HTTP V2 API as a sink (reference §3).

One request is ``POST {host}/2/httpapi`` with ``Content-Type: application/json`` and the body
``{"api_key":"KEY","events":[...],"options":{"min_id_length":N}}`` (``options`` only when
``min_id_length`` is set): the key travels in the body, there is no auth header. At most
2,000 events and 1 MB per request. Each event is ``{user_id, device_id?, event_type, time?,
event_properties, user_properties?, insert_id?, ...}``: ``user_id`` is the bundle's identity,
``event_type`` the event name, ``event_properties`` its attributes; the other keys are the
rule's ``fields``, in the order of Amplitude's own example.

Amplitude refuses ids shorter than ``min_id_length`` (5 unless the request says otherwise):
an event whose ``user_id`` is too short is refused here, before sending, with the reason; a
``device_id`` Amplitude would refuse (too short, or a placeholder such as "null") is left out,
as Amplitude itself would remove it, so it never costs the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors._batching import BatchPolicy, JsonArrayEncoder, Unencodable
from moerules.connectors.amplitude.settings import AmplitudeSettings
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

__all__ = ["AmplitudeSink"]

# Ids Amplitude answers 400 for (reference §3, its HTTP V2 page), compared trimmed and
# ignoring case.
INVALID_IDS = frozenset({"anonymous", "nil", "none", "null", "n/a", "na", "undefined",
                         "unknown", '""', "00000000-0000-0000-0000-000000000000", "{}",
                         "lmy47d", "0", "-1"})

# The event keys of Amplitude's HTTP V2 API besides user_id, event_type and
# event_properties; the first ones lead, in the order of Amplitude's example request.
EVENT_FIELDS: dict[str, str] = {
    "device_id": "device id (left out when Amplitude would refuse it)",
    "time": "event time in epoch milliseconds",
    "user_properties": "user properties object ($set when no operation is given)",
    "groups": "groups object (Accounts add-on)",
    "insert_id": "unique event id; Amplitude de-duplicates on it for 7 days",
    "app_version": "app version", "platform": "platform", "os_name": "OS name",
    "os_version": "OS version", "device_brand": "device brand",
    "device_manufacturer": "device manufacturer", "device_model": "device model",
    "carrier": "carrier", "country": "country", "region": "region", "city": "city",
    "dma": "designated market area", "language": "language", "price": "price",
    "quantity": "quantity", "revenue": "revenue", "productId": "product id",
    "revenueType": "revenue type", "location_lat": "latitude", "location_lng": "longitude",
    "ip": "IP address", "idfa": "iOS IDFA", "idfv": "iOS IDFV", "adid": "Android ad id",
    "android_id": "Android id", "event_id": "event counter", "session_id": "session start, ms",
}
_AFTER_PROPERTIES = ("user_properties", "groups", "insert_id")


class AmplitudeSink(Sink):
    """Sends mapped events to Amplitude's HTTP V2 API."""

    name: ClassVar[str] = "amplitude"
    required_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})
    secret_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})
    settings_doc: ClassVar[dict[str, str]] = settings_doc(AmplitudeSettings)
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        parsed, self._problems = parse_settings(AmplitudeSettings, settings, self.name)
        # an invalid configuration never runs (validate refuses it); defaults keep the
        # object usable for the error report
        self.config = parsed or AmplitudeSettings.model_construct(
            api_key=str(settings.get("api_key", "")))
        self.url = f"{self.config.base_url}/2/httpapi"
        self.headers = {"Content-Type": "application/json"}
        head = b'{"api_key":' + orjson.dumps(self.config.api_key) + b',"events":['
        tail = b"]}"
        if self.config.min_id_length is not None:
            tail = b'],"options":' + orjson.dumps(
                {"min_id_length": self.config.min_id_length}) + b"}"
        self.envelope = (head, tail)
        self.policy = BatchPolicy(self.config.max_events_per_request,
                                  self.config.max_request_bytes)

    def check_settings(self) -> list[tuple[str, str]]:
        return list(self._problems)

    def element(self, item: EventOut | UserOut) -> dict[str, Any]:
        """One Amplitude event."""
        if not isinstance(item, EventOut):
            raise Unencodable("Amplitude's HTTP V2 API takes events only")
        min_length = self.config.id_length
        if len(item.identity) < min_length:
            raise Unencodable(
                f"user_id {item.identity!r} is shorter than min_id_length {min_length}: "
                "Amplitude would refuse it; lower destination.min_id_length to send it")
        event: dict[str, Any] = {"user_id": item.identity}
        fields = item.fields
        device = fields.get("device_id")
        if isinstance(device, str) and len(device) >= min_length and \
                device.strip().lower() not in INVALID_IDS:
            event["device_id"] = device
        event["event_type"] = item.name
        if "time" in fields:
            event["time"] = fields["time"]
        event["event_properties"] = item.attributes
        for key in _AFTER_PROPERTIES:
            if key in fields:
                event[key] = fields[key]
        for key, value in fields.items():
            if key not in event and key != "device_id":
                event[key] = value
        return event

    def request(self, body: bytes, items: list[EventOut | UserOut]) -> WireRequest:
        return WireRequest("POST", self.url, dict(self.headers), body, list(items),
                           limit_key="httpapi")

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(self.policy, element=self.element, request=self.request,
                                envelope=self.envelope)

    def rate_limits(self) -> list[RateLimit]:
        return [RateLimit(self.config.requests_per_second, 1.0)]

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        excerpt = body[:300].decode("utf-8", "replace")
        if 200 <= status < 300:
            return DeliveryOutcome(status, ok=True)
        if status in (408, 429) or status >= 500:
            return DeliveryOutcome(status, retry=True,
                                   retry_after=retry_after_seconds(headers.get("retry-after")),
                                   error=f"HTTP {status}", excerpt=excerpt)
        return DeliveryOutcome(status, error=f"HTTP {status}", excerpt=excerpt)
