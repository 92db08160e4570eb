"""Mixpanel's ``/import`` API as a sink (reference §5.1).

One request is ``POST {host}/import?strict=1`` (``&project_id=ID`` with a service account)
with ``Content-Type: application/json``, HTTP Basic auth (``service-account-user:secret``, or
the project token as user with an empty password) and a JSON array of records
``{"event":NAME,"properties":{"time":...,"distinct_id":...,"$insert_id":...,...}}``: the
identity is ``distinct_id``, the event's attributes follow the three keys /import requires
(which they never override). At most 2,000 records and 10 MB per request, 1 MB and fewer than
255 properties per record. ``strict=1`` makes Mixpanel validate every record and name the
ones it refused.

Records Mixpanel is documented to refuse are refused here, before sending, with the reason:
a ``$insert_id`` longer than 36 characters or with characters other than letters, digits and
``-``; a ``time`` more than an hour ahead of now; too many properties; over 1 MB.

Answers become verdicts (reference §5.1, Mixpanel's error pages): 200 delivered; 400 with
``failed_records`` is a partial success: exactly those records are rejected, the others were
imported; any other 400 rejects the request (Mixpanel: never retry a 400); 401/403 fatal;
413 split; 429 and 5xx retried with backoff (no Retry-After is documented; one given is
obeyed).

Bodies are sent gzip-compressed (``gzip: true``, /import accepts ``Content-Encoding: gzip``):
the request keeps the readable body, which a dry run prints, and the sender compresses it.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from moerules.connectors.mixpanel.settings import MixpanelSettings
from moerules.engine.connector import (
    BYTES,
    EVENT,
    BatchPolicy,
    Delivered,
    Fatal,
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

__all__ = ["MixpanelSink"]

INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
MAX_PROPERTIES = 255  # "fewer than 255 properties"
MAX_RECORD_BYTES = 1_000_000
FUTURE_SLACK = 3600  # /import refuses times more than an hour ahead
BAD_INSERT_ID = "event_uuid is not a Mixpanel $insert_id"
FUTURE_TIME = "event time more than an hour ahead"
TOO_MANY_PROPERTIES = "too many properties for Mixpanel"

EVENT_FIELDS: dict[str, str] = {
    "time": "event time, epoch seconds or milliseconds (required)",
    "insert_id": "$insert_id: at most 36 letters, digits or '-'; Mixpanel de-duplicates on it "
    "(required)",
}


class MixpanelSink(Sink):
    """Sends mapped events to Mixpanel's /import API."""

    name: ClassVar[str] = "mixpanel"
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT})
    settings_model: ClassVar[type[MixpanelSettings]] = MixpanelSettings
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS
    example_settings: ClassVar[dict[str, Any]] = {"project_token": "mixpanel-example-token"}
    example_fields: ClassVar[dict[str, dict[str, Any]]] = {
        EVENT: {"time": 1_700_000_000, "insert_id": "conformance-0001"}
    }
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = (
        (200, b'{"code":200,"num_records_imported":2,"status":"OK"}', Delivered),
        (
            400,
            b'{"code":400,"error":"some data points in the request failed validation",'
            b'"num_records_imported":0,"status":"Bad Request","failed_records":[{"index":0,'
            b'"insert_id":"x","field":"properties.time","message":"\'properties.time\' is '
            b'invalid"}]}',
            Partial,
        ),
        (
            400,
            b'{"code":400,"error":"could not parse the body as JSON","status":"Bad Request"}',
            Reject,
        ),
        (401, b'{"code":401,"error":"Invalid credentials","status":"Unauthorized"}', Fatal),
        (413, b'{"code":413,"error":"request body too large","status":"Payload Too Large"}', Split),
        (
            429,
            b'{"code":429,"error":"Project exceeded rate limits. Please retry the request '
            b'with exponential backoff.","status":"Too Many Requests"}',
            Retry,
        ),
        (500, b"", Retry),
        (502, b"", Retry),
        (503, b"", Retry),
        (504, b"", Retry),
    )

    def __init__(self, settings: MixpanelSettings | Mapping[str, Any]) -> None:
        """From checked settings, or a mapping checked here by the same model (pydantic's
        ValidationError when it is wrong)."""
        config = (
            settings
            if isinstance(settings, MixpanelSettings)
            else (MixpanelSettings.model_validate(settings))
        )
        super().__init__(config.model_dump())
        self.config = config
        self.url = f"{config.base_url}/import?strict=1"
        if config.service_account:
            user = config.service_account_username or ""
            secret = config.service_account_secret
            password = secret.get_secret_value() if secret is not None else ""
            self.url += f"&project_id={quote(config.project_id or '', safe='${}')}"
        else:
            token = config.project_token
            user, password = (token.get_secret_value() if token is not None else ""), ""
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {basic}"}
        self._encoding: Literal["gzip"] | None = "gzip" if config.gzip else None
        # max_request_bytes measures the body before compression: "2000 events and 10MB
        # uncompressed per request" (Mixpanel's /import page, reference §5.1: "gzip does not
        # raise this limit")
        self.batch_policy = BatchPolicy(
            max_items=config.max_events_per_request,
            max_request_bytes=config.max_request_bytes,
            max_item_bytes=MAX_RECORD_BYTES,
            max_age=config.max_wait_seconds,
        )

    @classmethod
    def from_settings(cls, settings: MixpanelSettings) -> MixpanelSink:
        """The sink for settings already checked (how the engine builds it)."""
        return cls(settings)

    def element(self, item: Item) -> dict[str, Any]:
        """One /import record: time, distinct_id and $insert_id first (a field the rule left
        out is left out, for Mixpanel's strict check to name), then the attributes."""
        fields = item.fields
        properties: dict[str, Any] = {}
        if "time" in fields:
            stamp = fields["time"]
            if isinstance(stamp, int | float) and not isinstance(stamp, bool):
                seconds = stamp / 1000 if stamp > 1e11 else stamp
                if seconds > time.time() + FUTURE_SLACK:
                    raise Unencodable(
                        f"time {stamp} is more than an hour ahead of now (Mixpanel refuses it)",
                        FUTURE_TIME,
                    )
            properties["time"] = stamp
        properties["distinct_id"] = item.identity
        if "insert_id" in fields:
            insert_id = fields["insert_id"]
            if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
                raise Unencodable(
                    f"$insert_id {insert_id!r} is not 1-36 letters, digits or "
                    "'-' (Mixpanel refuses it; hash longer ids with "
                    "{hash: md5})",
                    BAD_INSERT_ID,
                )
            properties["$insert_id"] = insert_id
        for key, value in item.attributes.items():
            properties.setdefault(key, value)
        if len(properties) >= MAX_PROPERTIES:
            raise Unencodable(
                f"{len(properties)} properties; Mixpanel takes fewer than {MAX_PROPERTIES}",
                TOO_MANY_PROPERTIES,
            )
        return {"event": item.name, "properties": properties}

    def request(self, _key: Any, body: bytes, items: list[Item]) -> WireRequest:
        return WireRequest(
            "POST",
            self.url,
            dict(self.headers),
            body,
            list(items),
            limit_key="import",
            content_encoding=self._encoding,
        )

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(self.batch_policy, element=self.element, request=self.request)

    def rate_limits(self) -> list[RateLimit]:
        # 2 GB of uncompressed JSON a minute per project, on a rolling window
        return [RateLimit(self.config.bytes_per_minute, 60.0, counts=BYTES)]

    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if 200 <= status < 300:
            return Delivered()
        body = response.json()
        body = body if isinstance(body, dict) else {}
        reason = f"HTTP {status}" + (f": {body['error']}" if body.get("error") else "")
        if status == 400:
            failed = _failed_records(body.get("failed_records"), len(request.items))
            if failed:  # strict=1: the other records were imported
                return Partial(failed, reason=reason)
            return Reject(reason)
        if status == 413:
            return Split(reason)
        if status == 429:
            return Retry(
                reason, after=retry_after_seconds(response.header("retry-after")), throttled=True
            )
        if status >= 500:
            return Retry(reason, after=retry_after_seconds(response.header("retry-after")))
        if status in (401, 403):
            return Fatal(reason)
        return Reject(reason)


def _failed_records(value: Any, count: int) -> dict[int, str]:
    """``failed_records`` as index -> "field: message" (entries without a valid index
    ignored)."""
    out: dict[int, str] = {}
    if not isinstance(value, list):
        return out
    for record in value:
        if not isinstance(record, dict):
            continue
        index = record.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count:
            field = record.get("field") or "record"
            out[index] = f"{field}: {record.get('message') or 'refused'}"
    return out
