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
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from moerules.connectors._batching import BatchPolicy, JsonArrayEncoder, Unencodable
from moerules.connectors.mixpanel.settings import MixpanelSettings
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

__all__ = ["MixpanelSink"]

INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
MAX_PROPERTIES = 255  # "fewer than 255 properties"
MAX_RECORD_BYTES = 1_000_000
FUTURE_SLACK = 3600  # /import refuses times more than an hour ahead

EVENT_FIELDS: dict[str, str] = {
    "time": "event time, epoch seconds or milliseconds (required)",
    "insert_id": "$insert_id: at most 36 letters, digits or '-'; Mixpanel de-duplicates on it "
                 "(required)",
}


class MixpanelSink(Sink):
    """Sends mapped events to Mixpanel's /import API."""

    name: ClassVar[str] = "mixpanel"
    secret_settings: ClassVar[frozenset[str]] = frozenset(
        {"project_token", "service_account_secret"})
    settings_doc: ClassVar[dict[str, str]] = settings_doc(MixpanelSettings)
    event_fields: ClassVar[dict[str, str]] = EVENT_FIELDS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        parsed, self._problems = parse_settings(MixpanelSettings, settings, self.name)
        self.config = parsed or MixpanelSettings.model_construct()
        config = self.config
        self.url = f"{config.base_url}/import?strict=1"
        if config.service_account:
            user, password = config.service_account_username, config.service_account_secret
            self.url += f"&project_id={config.project_id}"
        else:
            user, password = config.project_token, ""
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self.policy = BatchPolicy(config.max_events_per_request, config.max_request_bytes,
                                  MAX_RECORD_BYTES)

    def check_settings(self) -> list[tuple[str, str]]:
        return list(self._problems)

    def element(self, item: EventOut | UserOut) -> dict[str, Any]:
        """One /import record."""
        if not isinstance(item, EventOut):
            raise Unencodable("Mixpanel's /import takes events only")
        fields = item.fields
        stamp = fields.get("time")
        insert_id = fields.get("insert_id")
        if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
            raise Unencodable(f"$insert_id {insert_id!r} is not 1-36 letters, digits or '-' "
                              "(Mixpanel refuses it; hash longer ids with {hash: md5})")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            seconds = stamp / 1000 if stamp > 1e11 else stamp
            if seconds > time.time() + FUTURE_SLACK:
                raise Unencodable(f"time {stamp} is more than an hour ahead of now "
                                  "(Mixpanel refuses it)")
        properties: dict[str, Any] = {"time": stamp, "distinct_id": item.identity,
                                      "$insert_id": insert_id}
        for key, value in item.attributes.items():
            properties.setdefault(key, value)
        if len(properties) >= MAX_PROPERTIES:
            raise Unencodable(f"{len(properties)} properties; Mixpanel takes fewer than "
                              f"{MAX_PROPERTIES}")
        return {"event": item.name, "properties": properties}

    def request(self, body: bytes, items: list[EventOut | UserOut]) -> WireRequest:
        return WireRequest("POST", self.url, dict(self.headers), body, list(items),
                           limit_key="import")

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(self.policy, element=self.element, request=self.request)

    def rate_limits(self) -> list[RateLimit]:
        return []

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        excerpt = body[:300].decode("utf-8", "replace")
        if 200 <= status < 300:
            return DeliveryOutcome(status, ok=True)
        if status == 429 or status >= 500:
            return DeliveryOutcome(status, retry=True,
                                   retry_after=retry_after_seconds(headers.get("retry-after")),
                                   error=f"HTTP {status}", excerpt=excerpt)
        return DeliveryOutcome(status, error=f"HTTP {status}", excerpt=excerpt)
