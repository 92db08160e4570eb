"""The MoEngage Data API as a sink (reference §1).

Requests go to ``https://api-{dc}.moengage.com/v1/...`` with Basic auth (workspace ID and
Data API key) and ``MOE-APPKEY``. In ``bulk`` mode (the default) events and user updates
travel in ``transition`` requests; ``single`` mode uses the event and customer endpoints.
Routed events carry ``project_code`` in the query string; user attributes always stay at
portfolio level. Every request body stays within ``max_request_bytes`` (100 KB: the
strictest limit the docs give).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
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

__all__ = ["DATA_CENTERS", "MoEngageDataSink"]

DATA_CENTERS = {
    "01": "https://api-01.moengage.com", "02": "https://api-02.moengage.com",
    "03": "https://api-03.moengage.com", "04": "https://api-04.moengage.com",
    "05": "https://api-05.moengage.com", "06": "https://api-06.moengage.com",
    "101": "https://api-101.moengage.com",
}
DEFAULT_MAX_BYTES = 100 * 1024


def _data_center(value: Any) -> str:
    """``"02"``, ``2`` and ``"DC-02"`` all name data center 02 (YAML reads 02 as a number)."""
    text = str(value).strip().upper().removeprefix("DC-").removeprefix("DC")
    return text.zfill(2) if text.isdigit() and len(text) < 2 else text


class _Pending:
    """One request being filled: its elements as serialised pieces, joined once when the
    request closes, and the items they carry."""

    __slots__ = ("chunks", "items", "open", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []  # the elements' bytes in order, commas included
        self.items: list[EventOut | UserOut] = []
        self.size = 0
        self.open: bytes | None = None  # the customer whose event element takes more actions

    def new_element(self) -> None:
        """End the open event element, if any, and separate the next element."""
        if self.open is not None:
            self.chunks.append(_TAIL_COMMA)
        elif self.chunks:
            self.chunks.append(b",")

    def body(self, head: bytes = b"", end: bytes = b"") -> bytes:
        """The elements, between ``head`` and ``end``: one join, one copy."""
        chunks = self.chunks
        if self.open is not None:
            chunks.append(_TAIL)
        if head:
            chunks.insert(0, head)
        chunks.append(end)
        return b"".join(chunks)


_EVENT_HEAD = b'{"type":"event","customer_id":'
_ACTIONS = b',"actions":['
_TAIL = b"]}"
_TAIL_COMMA = b"]},"
_TRANSITION_HEAD = b'{"type":"transition","elements":['
_EVENT_GROW = len(_EVENT_HEAD) + len(_ACTIONS) + len(_TAIL) + 1  # + customer + action


class _Encoder(SinkEncoder):
    def __init__(self, sink: MoEngageDataSink) -> None:
        self.sink = sink
        self.pending: dict[str | None, _Pending] = {}
        # what each event needs, looked up once: the room for elements in one body
        self._bulk = sink.bulk
        self._room = sink.max_bytes - (len(_TRANSITION_HEAD) + 2 if sink.bulk else 0)
        self._identity: str | None = None  # the last event's identity, its JSON, and
        self._customer = b""                # the head of an event element for it
        self._head = b""

    def add(self, item: EventOut | UserOut) -> list[WireRequest]:
        if isinstance(item, UserOut):
            sink = self.sink
            piece = orjson.dumps({"type": "customer", "customer_id": item.identity,
                                  "attributes": item.attributes})
            if sink.bulk:
                return self._add_customer(piece, item)
            return [sink.request("customer", None, piece, [item])]
        requests, failed = self.add_events([item])
        if failed:
            raise TypeError(failed[0][1])
        return requests

    def add_events(self, items: list[EventOut]) -> tuple[list[WireRequest],
                                                          list[tuple[EventOut, str]]]:
        """Events join their project's request: the last element when it is the same
        customer's (a batch's events), else a new element. A request closes when the next
        piece would not fit, and in single mode also when a new element would start."""
        pending_by_project, room, bulk, dumps = self.pending, self._room, self._bulk, orjson.dumps
        customer, head = self._customer, self._head
        out: list[WireRequest] = []
        failed: list[tuple[EventOut, str]] = []
        for item in items:
            fields = item.fields
            try:
                piece = dumps(
                    {"action": item.name, "attributes": item.attributes, **fields} if fields
                    else {"action": item.name, "attributes": item.attributes})
            except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                failed.append((item, str(exc)))
                continue
            if item.identity is not self._identity:  # a batch's events share one identity
                self._identity = item.identity
                customer = self._customer = dumps(item.identity)
                head = self._head = _EVENT_HEAD + customer + _ACTIONS
            pending = pending_by_project.get(item.project)
            if pending is None:
                pending = pending_by_project[item.project] = _Pending()
            merge = pending.open == customer
            grow = len(piece) + 1 if merge else _EVENT_GROW + len(customer) + len(piece)
            if pending.chunks and (pending.size + grow > room or not (bulk or merge)):
                out.append(self._close(item.project, pending))
                pending = pending_by_project[item.project] = _Pending()
                merge = False
                grow = _EVENT_GROW + len(customer) + len(piece)
            if merge:
                pending.chunks += (b",", piece)
            else:
                pending.new_element()
                pending.chunks += (head, piece)
                pending.open = customer
            pending.items.append(item)
            pending.size += grow
        return out, failed

    def _add_customer(self, piece: bytes, item: UserOut) -> list[WireRequest]:
        """A bulk ``customer`` element; user attributes are never routed (project None)."""
        pending = self.pending.get(None)
        if pending is None:
            pending = self.pending[None] = _Pending()
        out: list[WireRequest] = []
        grow = len(piece) + 1
        if pending.chunks and pending.size + grow > self._room:
            out.append(self._close(None, pending))
            pending = self.pending[None] = _Pending()
        pending.new_element()
        pending.chunks.append(piece)
        pending.open = None
        pending.items.append(item)
        pending.size += grow
        return out

    def _close(self, project: str | None, pending: _Pending) -> WireRequest:
        if self.sink.bulk:
            body = pending.body(_TRANSITION_HEAD, b"]}")
            return self.sink.request("transition", project, body, pending.items)
        return self.sink.request("event", project, pending.body(), pending.items)

    def flush(self) -> list[WireRequest]:
        out = [self._close(key, p) for key, p in self.pending.items() if p.chunks]
        self.pending.clear()
        return out


class MoEngageDataSink(Sink):
    """Sends mapped events and user attributes to the MoEngage Data API."""

    name: ClassVar[str] = "moengage"
    supports_routing: ClassVar[bool] = True
    required_settings: ClassVar[frozenset[str]] = frozenset({"workspace_id", "data_api_key"})
    secret_settings: ClassVar[frozenset[str]] = frozenset({"data_api_key"})
    settings_doc: ClassVar[dict[str, str]] = {
        "workspace_id": "Workspace ID (formerly App ID): Basic-auth user and MOE-APPKEY",
        "data_api_key": "Data API key: Basic-auth password (secret; use ${ENV_VAR})",
        "data_center": "01-06 or 101: picks https://api-{dc}.moengage.com (default 01)",
        "endpoint": "base URL overriding the data-center host (proxies, local emulator)",
        "mode": "bulk (transition requests, default) or single (event/customer endpoints)",
        "max_request_bytes": "largest request body (default 100 KB)",
        "requests_per_second": "rate limit (default 500, the partner-feed limit)",
        "requests_per_minute": "rate limit (default 15000, the partner-feed limit)",
    }
    event_fields: ClassVar[dict[str, str]] = {
        "current_time": "UTC time of the event (epoch seconds or ISO-8601)",
        "user_time": "local time of the event",
        "user_timezone_offset": "seconds, between -54000 and 54000",
        "platform": "ANDROID, iOS, web, TV or unknown",
        "app_version": "app version string",
        "moe_os_type": "only for the TV platform",
    }

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.workspace_id = str(self.settings.get("workspace_id", ""))
        self.api_key = str(self.settings.get("data_api_key", ""))
        dc = _data_center(self.settings.get("data_center", "01"))
        self.host = str(self.settings.get("endpoint") or DATA_CENTERS.get(dc, "")).rstrip("/")
        self.bulk = str(self.settings.get("mode", "bulk")) == "bulk"
        self.max_bytes = int(self.settings.get("max_request_bytes", DEFAULT_MAX_BYTES))
        token = base64.b64encode(f"{self.workspace_id}:{self.api_key}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "MOE-APPKEY": self.workspace_id,
        }

    def check_settings(self) -> list[tuple[str, str]]:
        problems = super().check_settings()
        dc = _data_center(self.settings.get("data_center", "01"))
        if dc not in DATA_CENTERS:
            problems.append(("data_center", f"unknown data center {dc!r}; use one of "
                             f"{', '.join(DATA_CENTERS)}"))
        if str(self.settings.get("mode", "bulk")) not in ("bulk", "single"):
            problems.append(("mode", "mode is `bulk` or `single`"))
        endpoint = self.settings.get("endpoint")
        if endpoint and not str(endpoint).startswith(("http://", "https://")):
            problems.append(("endpoint", "endpoint must be an http:// or https:// URL"))
        try:
            if int(self.settings.get("max_request_bytes", DEFAULT_MAX_BYTES)) < 1024:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(("max_request_bytes", "max_request_bytes is a number >= 1024"))
        return problems

    def url(self, endpoint: str, project: str | None) -> str:
        ws = quote(self.workspace_id, safe="${}")
        url = f"{self.host}/v1/{endpoint}/{ws}?app_id={ws}"
        if project is not None:
            url += f"&project_code={quote(project, safe='${}')}"
        return url

    def request(self, endpoint: str, project: str | None, body: bytes,
                items: list[EventOut | UserOut]) -> WireRequest:
        return WireRequest("POST", self.url(endpoint, project), dict(self.headers), body,
                           list(items), limit_key=endpoint)

    def encoder(self) -> SinkEncoder:
        return _Encoder(self)

    def rate_limits(self) -> list[RateLimit]:
        return [
            RateLimit(int(self.settings.get("requests_per_second", 500)), 1.0),
            RateLimit(int(self.settings.get("requests_per_minute", 15000)), 60.0),
        ]

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        excerpt = body[:300].decode("utf-8", "replace")
        if 200 <= status < 300:
            try:
                parsed = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                parsed = {}
            if isinstance(parsed, dict) and parsed.get("status") == "fail":
                return DeliveryOutcome(status, error="rejected in a 2xx answer", excerpt=excerpt)
            return DeliveryOutcome(status, ok=True)
        if status == 429 or status == 408 or status >= 500:
            return DeliveryOutcome(status, retry=True,
                                   retry_after=retry_after_seconds(headers.get("retry-after")),
                                   error=f"HTTP {status}", excerpt=excerpt)
        return DeliveryOutcome(status, error=f"HTTP {status}", excerpt=excerpt)
