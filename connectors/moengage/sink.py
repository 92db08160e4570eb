"""The MoEngage Data API as a sink (reference §1).

Requests go to ``https://api-{dc}.moengage.com/v1/...`` with Basic auth (workspace ID and
Data API key) and ``MOE-APPKEY``. In ``bulk`` mode (the default) events and user updates
travel in ``transition`` requests; ``single`` mode uses the event and customer endpoints.
Routed events carry ``project_code`` in the query string; user attributes always stay at
portfolio level. Every request body stays within ``max_request_bytes`` (100 KB: the
strictest limit the docs give); an item that cannot fit in a request on its own is refused
when it is encoded (dead-lettered), in a dry run as in a real one.

Answers (reference §1.5) become verdicts: 2xx delivered (unless its body says ``"status":
"fail"``: rejected), 413 split, 401/403 fatal (a wrong key or a suspended account: every
further request would fail the same way), 408/429/5xx retried (429 throttled, after its
Retry-After), any other status rejected. Bulk import answers 200 even when elements fail
(§1.4), so there is no partial verdict to give.

Pacing keeps to every documented limit at once (§1.3, §1.5): the partner feed's 500 requests/s
and 15,000/min, and per endpoint what it counts: ``transition`` 60,000 users and 60,000 events
a minute across all requests, ``event`` 30,000 events/min, ``customer`` 10,000 users/min. With
100 KB bulk requests the per-minute event (or user) count binds long before the request rate.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
from moerules.connectors.moengage.settings import (
    DATA_CENTERS,
    MoEngageDataSettings,
)
from moerules.engine.connector import (
    EVENT,
    ITEMS,
    USER,
    BatchPolicy,
    Delivered,
    Fatal,
    Item,
    ItemTooLarge,
    RateLimit,
    Refused,
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

__all__ = ["DATA_CENTERS", "MoEngageDataSink"]

# the longest an item waits in a request that is not full (inputs that never end)
DEFAULT_MAX_AGE = 5.0
# documented limits by endpoint and what they count (§1.3): (endpoint, item kind, how many,
# per seconds); the request-rate limits of the partner feed come on top (settings)
ENDPOINT_LIMITS: tuple[tuple[str, str, int, float], ...] = (
    ("transition", USER, 60_000, 60.0),
    ("transition", EVENT, 60_000, 60.0),
    ("event", EVENT, 30_000, 60.0),
    ("customer", USER, 10_000, 60.0),
)


class _Pending:
    """One request being filled: its elements as serialised pieces, joined once when the
    request closes, and the items they carry."""

    __slots__ = ("chunks", "items", "open", "size", "started")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []  # the elements' bytes in order, commas included
        self.items: list[Item] = []
        self.size = 0
        self.open: bytes | None = None  # the customer whose event element takes more actions
        self.started = time.monotonic()  # for the batch policy's max_age

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
        self._customer = b""  # the head of an event element for it
        self._head = b""

    def add(self, item: Item) -> list[WireRequest]:
        if item.kind != EVENT:
            return self._customer_piece(item)
        requests, refused = self.add_all([item])
        if refused:
            raise Unencodable(refused[0].error, refused[0].reason)
        return requests

    def _customer_piece(self, item: Item) -> list[WireRequest]:
        sink = self.sink
        if item.kind != USER:
            raise Unencodable(f"destination 'moengage' does not take {item.kind!r} items")
        piece = orjson.dumps(
            {"type": "customer", "customer_id": item.identity, "attributes": item.attributes}
        )
        if len(piece) + 1 > self._room:
            raise ItemTooLarge(_too_large(len(piece), sink.max_bytes))
        if sink.bulk:
            return self._add_customer(piece, item)
        return [sink.request("customer", None, piece, [item])]

    def add_all(self, items: Sequence[Item]) -> tuple[list[WireRequest], list[Refused]]:
        """Events join their project's request: the last element when it is the same
        customer's (a batch's events), else a new element. A request closes when the next
        piece would not fit, and in single mode also when a new element would start. User
        updates are ``customer`` elements of the portfolio-level request."""
        pending_by_project, room, bulk, dumps = self.pending, self._room, self._bulk, orjson.dumps
        customer, head = self._customer, self._head
        out: list[WireRequest] = []
        refused: list[Refused] = []
        for item in items:
            if item.kind != EVENT:  # a user update (the pipeline adds those one by one)
                try:
                    out += self._customer_piece(item)
                except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                    refused.append(Refused(item, getattr(exc, "reason", _CANNOT), str(exc)))
                continue
            fields = item.fields
            try:
                piece = dumps(
                    {"action": item.name, "attributes": item.attributes, **fields}
                    if fields
                    else {"action": item.name, "attributes": item.attributes}
                )
            except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                refused.append(Refused(item, _CANNOT, str(exc)))
                continue
            if item.identity is not self._identity:  # a batch's events share one identity
                self._identity = item.identity
                customer = self._customer = dumps(item.identity)
                head = self._head = _EVENT_HEAD + customer + _ACTIONS
            alone = _EVENT_GROW + len(customer) + len(piece)
            if alone > room:  # not even in a request of its own
                refused.append(
                    Refused(item, ItemTooLarge.reason, _too_large(alone, self.sink.max_bytes))
                )
                continue
            pending = pending_by_project.get(item.route)
            if pending is None:
                pending = pending_by_project[item.route] = _Pending()
            merge = pending.open == customer
            grow = len(piece) + 1 if merge else alone
            if pending.chunks and (pending.size + grow > room or not (bulk or merge)):
                out.append(self._close(item.route, pending))
                pending = pending_by_project[item.route] = _Pending()
                merge = False
                grow = alone
            if merge:
                pending.chunks += (b",", piece)
            else:
                pending.new_element()
                pending.chunks += (head, piece)
                pending.open = customer
            pending.items.append(item)
            pending.size += grow
        return out, refused

    def _add_customer(self, piece: bytes, item: Item) -> list[WireRequest]:
        """A bulk ``customer`` element; user attributes are never routed (route None)."""
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

    def until_next(self, now: float | None = None) -> float | None:
        started = [p.started for p in self.pending.values() if p.chunks]
        if not started:
            return None
        max_age = self.sink.batch_policy.max_age
        if max_age is None:
            return None
        return min(started) + max_age - (time.monotonic() if now is None else now)


_CANNOT = "cannot encode for the destination"


def _too_large(size: int, limit: int) -> str:
    return f"{size} bytes encoded; a request to the destination holds at most {limit} bytes"


class MoEngageDataSink(Sink):
    """Sends mapped events and user attributes to the MoEngage Data API."""

    name: ClassVar[str] = "moengage"
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT, USER})
    supports_routing: ClassVar[bool] = True
    example_settings: ClassVar[dict[str, Any]] = {
        "workspace_id": "WS_EXAMPLE",
        "data_api_key": "moengage-example-data-api-key",
    }
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = (
        (200, b'{"status":"success","message":"accepted","request_id":"r"}', Delivered),
        (200, b'{"status":"fail","error":{"type":"InvalidAttributeError"}}', Reject),
        (400, b'{"status":"fail","error":{"type":"MissingAttributeError"}}', Reject),
        (401, b'{"status":"fail","error":{"type":"Authentication required"}}', Fatal),
        (403, b'{"status":"fail","error":{"type":"Account suspended"}}', Fatal),
        (408, b"", Retry),
        (409, b'{"status":"fail","error":{"type":"KeyMismatch"}}', Reject),
        (413, b'{"status":"fail","error":{"type":"PayloadTooLarge"}}', Split),
        (415, b'{"status":"fail","error":{"type":"MediaTypeError"}}', Reject),
        (429, b'{"title":"Rate Limits Exceeded"}', Retry),
        (500, b"", Retry),
        (502, b"", Retry),
        (503, b"", Retry),
        (504, b"", Retry),
    )
    settings_model: ClassVar[type[MoEngageDataSettings]] = MoEngageDataSettings
    event_fields: ClassVar[dict[str, str]] = {
        "current_time": "UTC time of the event (epoch seconds or ISO-8601)",
        "user_time": "local time of the event",
        "user_timezone_offset": "seconds, between -54000 and 54000",
        "platform": "ANDROID, iOS, web, TV or unknown",
        "app_version": "app version string",
        "moe_os_type": "only for the TV platform",
    }

    def __init__(self, settings: MoEngageDataSettings | Mapping[str, Any]) -> None:
        """From checked settings, or a mapping checked here by the same model (pydantic's
        ValidationError when it is wrong): the model is the one place settings are parsed.

        Note for the contract (engine/connector.py): the engine builds every connector with
        ``from_settings(parsed)``, its settings checked at their file positions by
        engine/rules/settings.py; ``Sink.settings``, ``check_settings``, ``settings_doc`` and
        ``required_settings`` are no longer read by the engine and can go with the base
        class's ``__init__(Mapping)`` once every connector declares ``settings_model``.
        """
        config = (
            settings
            if isinstance(settings, MoEngageDataSettings)
            else (MoEngageDataSettings.model_validate(settings))
        )
        super().__init__(config.model_dump())
        self.config = config
        self.workspace_id = config.workspace_id
        self.api_key = config.data_api_key.get_secret_value()
        self.host = (config.endpoint or DATA_CENTERS[config.data_center]).rstrip("/")
        self.bulk = config.mode == "bulk"
        self.max_bytes = config.max_request_bytes
        self.batch_policy = BatchPolicy(max_request_bytes=self.max_bytes, max_age=DEFAULT_MAX_AGE)
        token = base64.b64encode(f"{self.workspace_id}:{self.api_key}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "MOE-APPKEY": self.workspace_id,
        }

    @classmethod
    def from_settings(cls, settings: MoEngageDataSettings) -> MoEngageDataSink:
        """The sink for settings already checked (how the engine builds it)."""
        return cls(settings)

    def url(self, endpoint: str, project: str | None) -> str:
        ws = quote(self.workspace_id, safe="${}")
        url = f"{self.host}/v1/{endpoint}/{ws}?app_id={ws}"
        if project is not None:
            url += f"&project_code={quote(project, safe='${}')}"
        return url

    def request(
        self, endpoint: str, project: str | None, body: bytes, items: list[Item]
    ) -> WireRequest:
        return WireRequest(
            "POST",
            self.url(endpoint, project),
            dict(self.headers),
            body,
            list(items),
            limit_key=endpoint,
        )

    def encoder(self) -> SinkEncoder:
        return _Encoder(self)

    def rate_limits(self) -> list[RateLimit]:
        limits = [
            RateLimit(self.config.requests_per_second, 1.0),
            RateLimit(self.config.requests_per_minute, 60.0),
        ]
        limits += [
            RateLimit(amount, seconds, endpoint, counts=ITEMS, kind=kind)
            for endpoint, kind, amount, seconds in ENDPOINT_LIMITS
        ]
        return limits

    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if 200 <= status < 300:
            parsed = response.json()
            if isinstance(parsed, dict) and parsed.get("status") == "fail":
                return Reject("rejected in a 2xx answer")
            return Delivered()
        if status == 413:
            return Split("HTTP 413")
        if status in (401, 403):
            return Fatal(f"HTTP {status}")
        if status == 429 or status == 408 or status >= 500:
            return Retry(
                f"HTTP {status}",
                after=retry_after_seconds(response.header("retry-after")),
                throttled=status == 429,
            )
        return Reject(f"HTTP {status}")
