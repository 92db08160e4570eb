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

Answers (reference §3, and what Amplitude's Python SDK does with them) become verdicts:

- 200: delivered.
- 400 naming events by index (``events_with_invalid_fields``, ``events_with_missing_fields``,
  ``events_with_invalid_id_lengths``, ``silenced_events``): Amplitude ingested nothing, so
  exactly those events are rejected and every other one is sent again.
- 400 ``Invalid API key`` or a missing ``api_key``: fatal (every request would fail alike);
  any other 400 (the whole request unreadable): rejected.
- 413: split.
- 429: Amplitude throttles users and devices, not the key, and a 429 ingests nothing. Events
  of users or devices over their daily quota are rejected; events of throttled users or
  devices wait ``throttle_pause_seconds`` (30 s, Amplitude's advice) on their own and are
  sent again, without pausing the key (``holds="items"``); every other event is sent again
  at once. A ``Retry-After`` (a proxy's: Amplitude documents none) holds the whole key.
- 408, 500, 502, 503, 504: retried (``insert_id`` makes a retry of a half-accepted request
  safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors.amplitude.settings import AmplitudeSettings
from moerules.engine.connector import (
    EVENT,
    ITEMS,
    BatchPolicy,
    Delivered,
    Fatal,
    Hold,
    Item,
    JsonArrayEncoder,
    Partial,
    RateLimit,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Split,
    Unencodable,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.retry import retry_after_seconds

__all__ = ["AmplitudeSink"]

# Ids Amplitude answers 400 for (reference §3, its HTTP V2 page), compared trimmed and
# ignoring case.
INVALID_IDS = frozenset(
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
SHORT_ID = "user_id shorter than min_id_length"
# The index maps of a 400 answer (the HTTP V2 page spells the missing-fields one both ways).
INDEX_MAPS = (
    "events_with_invalid_fields",
    "events_with_missing_fields",
    "events_missing_required_fields",
    "events_with_invalid_id_lengths",
)

# The event keys of Amplitude's HTTP V2 API besides user_id, event_type and
# event_properties; the first ones lead, in the order of Amplitude's example request.
EVENT_FIELDS: dict[str, str] = {
    "device_id": "device id (left out when Amplitude would refuse it)",
    "time": "event time in epoch milliseconds",
    "user_properties": "user properties object ($set when no operation is given)",
    "groups": "groups object (Accounts add-on)",
    "insert_id": "unique event id; Amplitude de-duplicates on it for 7 days",
    "app_version": "app version",
    "platform": "platform",
    "os_name": "OS name",
    "os_version": "OS version",
    "device_brand": "device brand",
    "device_manufacturer": "device manufacturer",
    "device_model": "device model",
    "carrier": "carrier",
    "country": "country",
    "region": "region",
    "city": "city",
    "dma": "designated market area",
    "language": "language",
    "price": "price",
    "quantity": "quantity",
    "revenue": "revenue",
    "productId": "product id",
    "revenueType": "revenue type",
    "location_lat": "latitude",
    "location_lng": "longitude",
    "ip": "IP address",
    "idfa": "iOS IDFA",
    "idfv": "iOS IDFV",
    "adid": "Android ad id",
    "android_id": "Android id",
    "event_id": "event counter",
    "session_id": "session start, ms",
}
_AFTER_PROPERTIES = ("user_properties", "groups", "insert_id")


class AmplitudeSink(Sink):
    """Sends mapped events to Amplitude's HTTP V2 API."""

    name: ClassVar[str] = "amplitude"
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT})
    settings_model: ClassVar[type[AmplitudeSettings]] = AmplitudeSettings
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS
    example_settings: ClassVar[dict[str, Any]] = {"api_key": "amplitude-example-api-key"}
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = (
        (
            200,
            b'{"code":200,"events_ingested":50,"payload_size_bytes":50,'
            b'"server_upload_time":1396381378123}',
            Delivered,
        ),
        (
            400,
            b'{"code":400,"error":"Request missing required field",'
            b'"events_with_invalid_fields":{"time":[0]},'
            b'"events_with_missing_fields":{"event_type":[0]}}',
            Partial,
        ),
        (400, b'{"code":400,"error":"Invalid API key: abc"}', Fatal),
        (
            400,
            b'{"code":400,"error":"Request missing required field","missing_field":"api_key"}',
            Fatal,
        ),
        (400, b'{"code":400,"error":"Invalid JSON request body"}', Reject),
        (413, b'{"code":413,"error":"Payload too large"}', Split),
        (
            429,
            b'{"code":429,"error":"Too many requests for some devices and users",'
            b'"eps_threshold":10,"throttled_devices":{"C8F9E604":11},'
            b'"throttled_users":{"datamonster@amplitude.com":12},'
            b'"throttled_events":[0]}',
            Partial,
        ),
        (
            429,
            b'{"code":429,"error":"Too many requests for some devices and users",'
            b'"throttled_users":{"user-00000":12},"throttled_events":[0],'
            b'"exceeded_daily_quota_users":{"user-00000":500001}}',
            Partial,
        ),
        (500, b"", Retry),
        (502, b"", Retry),
        (503, b"", Retry),
        (504, b"", Retry),
    )

    def __init__(self, settings: AmplitudeSettings | Mapping[str, Any]) -> None:
        """From checked settings, or a mapping checked here by the same model (pydantic's
        ValidationError when it is wrong)."""
        config = (
            settings
            if isinstance(settings, AmplitudeSettings)
            else (AmplitudeSettings.model_validate(settings))
        )
        super().__init__(config.model_dump())
        self.config = config
        self.url = f"{config.base_url}/2/httpapi"
        self.headers = {"Content-Type": "application/json"}
        head = b'{"api_key":' + orjson.dumps(config.api_key.get_secret_value()) + b',"events":['
        tail = b"]}"
        if config.min_id_length is not None:
            tail = b'],"options":' + orjson.dumps({"min_id_length": config.min_id_length}) + b"}"
        self._envelope = (head, tail)
        self.batch_policy = BatchPolicy(
            max_items=config.max_events_per_request,
            max_request_bytes=config.max_request_bytes,
            max_age=config.max_wait_seconds,
        )

    @classmethod
    def from_settings(cls, settings: AmplitudeSettings) -> AmplitudeSink:
        """The sink for settings already checked (how the engine builds it)."""
        return cls(settings)

    # -- encoding ----------------------------------------------------------------------------
    def element(self, item: Item) -> dict[str, Any]:
        """One Amplitude event."""
        min_length = self.config.id_length
        if len(item.identity) < min_length:
            raise Unencodable(
                f"user_id {item.identity!r} is shorter than min_id_length {min_length}: "
                "Amplitude would refuse it; lower destination.min_id_length to send it",
                SHORT_ID,
            )
        event: dict[str, Any] = {"user_id": item.identity}
        fields = item.fields
        device = fields.get("device_id")
        if (
            isinstance(device, str)
            and len(device) >= min_length
            and device.strip().lower() not in INVALID_IDS
        ):
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

    def request(self, _key: Any, body: bytes, items: list[Item]) -> WireRequest:
        return WireRequest(
            "POST", self.url, dict(self.headers), body, list(items), limit_key="httpapi"
        )

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(
            self.batch_policy,
            element=self.element,
            request=self.request,
            envelope=lambda _key: self._envelope,
        )

    def rate_limits(self) -> list[RateLimit]:
        config = self.config
        return [
            RateLimit(config.requests_per_second, 1.0),
            RateLimit(config.events_per_second, 1.0, counts=ITEMS),
        ]

    # -- answers -----------------------------------------------------------------------------
    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if 200 <= status < 300:
            return Delivered()
        body = response.json()
        body = body if isinstance(body, dict) else {}
        error = str(body.get("error") or "")
        reason = f"HTTP {status}: {error}" if error else f"HTTP {status}"
        if status == 400:
            return self._invalid(request, body, error, reason)
        if status == 413:
            return Split(reason)
        if status == 429:
            return self._throttled(request, response, body, reason)
        if status == 408 or status >= 500:
            return Retry(reason)
        if status in (401, 403):
            return Fatal(reason)
        return Reject(reason)

    def _invalid(
        self, request: WireRequest, body: dict[str, Any], error: str, reason: str
    ) -> Verdict:
        """400: a wrong key stops the run; named events are rejected, the rest sent again."""
        if error.startswith("Invalid API key") or body.get("missing_field") == "api_key":
            return Fatal(reason)
        why: dict[int, list[str]] = {}
        for key in INDEX_MAPS:
            found = body.get(key)
            if not isinstance(found, dict):
                continue
            kind = key.removeprefix("events_").replace("_", " ")
            for field, indices in found.items():
                for index in _indices(indices, len(request.items)):
                    why.setdefault(index, []).append(f"{field}: {kind}")
        for index in _indices(body.get("silenced_events"), len(request.items)):
            why.setdefault(index, []).append("silenced")
        if not why:
            return Reject(reason)
        rejected = {index: "; ".join(reasons) for index, reasons in why.items()}
        again = frozenset(range(len(request.items))) - rejected.keys()
        return Partial(rejected, again, reason=reason)

    def _throttled(
        self, request: WireRequest, response: Response, body: dict[str, Any], reason: str
    ) -> Verdict:
        """429: events over a daily quota rejected; events of throttled users and devices
        held back ``throttle_pause_seconds`` on their own; every other event sent again now.

        A 429 ingests none of the request's events, the throttled ones' neighbours included:
        Amplitude's Batch Event Upload page says "If you exceed that rate, the API rejects
        the upload and returns a 429 response", its HTTP V2 page "When a request goes over a
        limit, Amplitude rejects it with the status code in the table and doesn't ingest the
        rejected events", and its SDK ([A4] processor.py) sends the events that were not
        throttled again at once and the throttled ones after 30 s. So no event of a 429 is
        delivered; those of users and devices not named are resent without a wait.
        """
        # Amplitude documents no Retry-After; one given (a proxy's) speaks for the whole key
        header = retry_after_seconds(response.header("retry-after"))
        holds: Hold = "items" if header is None else "credential"
        pause = self.config.throttle_pause_seconds if header is None else header
        quota_users = _keys(body.get("exceeded_daily_quota_users"))
        quota_devices = _keys(body.get("exceeded_daily_quota_devices"))
        users = _keys(body.get("throttled_users"))
        devices = _keys(body.get("throttled_devices"))
        named = frozenset(_indices(body.get("throttled_events"), len(request.items)))
        rejected: dict[int, str] = {}
        later: set[int] = set()
        for index, item in enumerate(request.items):
            device = item.fields.get("device_id")
            if item.identity in quota_users:
                rejected[index] = f"user {item.identity!r} exceeded its daily quota"
            elif isinstance(device, str) and device in quota_devices:
                rejected[index] = f"device {device!r} exceeded its daily quota"
            elif (
                index in named
                or item.identity in users
                or (isinstance(device, str) and device in devices)
            ):
                later.add(index)
        if not rejected and not later:  # the answer names no one: the request waits whole
            return Retry(reason, after=pause, throttled=True, holds=holds)
        now = frozenset(range(len(request.items))) - rejected.keys() - later
        return Partial(
            rejected,
            frozenset(later),
            reason=reason,
            after=pause,
            throttled=True,
            holds=holds,
            resend=now,
        )


def _indices(value: Any, count: int) -> list[int]:
    """The valid event indices of an answer's list (anything else ignored)."""
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count]


def _keys(value: Any) -> frozenset[str]:
    """Ids named by an answer: a map id -> count, or a list of ids."""
    if isinstance(value, dict):
        return frozenset(str(k) for k in value)
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset()
