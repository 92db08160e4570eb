"""Shared machinery of the partner emulators: request store, control endpoints, faults.

Each emulator is an ASGI app. The outer `__call__` applies the fault plan (the network
and infrastructure in front of the partner), then hands the request, body unread, to
the starlette routes of the concrete emulator. Those check what the partner checks on
the headers (path, auth, content type, declared size) before reading the body as a
capped stream (`read_body`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, ClassVar

import anyio
import orjson
from moerules.connectors.emulation.faults import Fault, FaultPlan, bounded_int
from moerules.connectors.emulation.intake import (
    BasicAuth,
    BodyTooLarge,
    media_type,
    parse_basic_auth,
    read_body,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

CONTROL_PREFIX = "/_emulator"
MAX_CONTROL_BODY = 64 * 1024  # a fault plan is small; anything larger is refused unread
DEFAULT_MAX_RECEIVED = 100_000
_T0_KEY = "moerules.emulator.t0"
_FAULT_KEY = "moerules.emulator.fault"
CLIENT_CLOSED = 499  # nginx's code for "the client went away"; only ever seen in stats

__all__ = [
    "BasicAuth",
    "BodyTooLarge",
    "Emulator",
    "Received",
    "json_response",
    "media_type",
    "parse_basic_auth",
]


class InjectedConnectionReset(Exception):
    """Raised on purpose so the server drops the connection without answering."""


class _DropInjectedResets(logging.Filter):
    """Keeps the server log free of tracebacks for resets we injected on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedConnectionReset)


_RESET_FILTER = _DropInjectedResets()


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


@dataclass(frozen=True)
class Received:
    """One request the emulator processed (injected faults are never stored).

    `records` are what the partner ingests; `rejected` the indices of records it refused
    or silently drops, with the reason of each in `reasons`.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    at: float
    records: tuple[Any, ...] = ()
    rejected: tuple[int, ...] = ()
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        """True when the partner would ingest something (2xx, or a partial success)."""
        return 200 <= self.status < 300 or bool(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "at": self.at,
            "records": list(self.records),
            "rejected": list(self.rejected),
            "reasons": {str(i): r for i, r in sorted(self.reasons.items())},
        }


@dataclass
class _Stats:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    evicted: int = 0


class Emulator:
    """Base of the partner emulators; subclasses add routes, credentials and error bodies.

    The store keeps the last `max_received` processed requests (older ones are counted
    in stats()["evicted"]), so an emulator left running for days stays bounded.
    """

    name: ClassVar[str] = "emulator"
    # Whether an injected error reads the body (up to body_limit) to shape its answer, as
    # Amplitude's 429 does to name the throttled users.
    fault_reads_body: ClassVar[bool] = False

    def __init__(
        self,
        *,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        max_received: int = DEFAULT_MAX_RECEIVED,
    ) -> None:
        if isinstance(faults, Mapping):  # a JSON plan, as `moerules emulate -o faults=...`
            plan = FaultPlan()
            plan.configure(faults)
            faults = plan
        if faults is not None and not isinstance(faults, FaultPlan):
            raise TypeError("faults must be a FaultPlan or a fault-plan object")
        self.faults = faults if faults is not None else FaultPlan()
        self._lock = threading.Lock()
        self._received: deque[Received] = deque(
            maxlen=bounded_int("max_received", max_received, 1, 10_000_000)
        )
        self._stats = _Stats()
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _RESET_FILTER not in uvicorn_log.filters:
            uvicorn_log.addFilter(_RESET_FILTER)
        control = [
            Route(f"{CONTROL_PREFIX}/received", self._get_received, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/reset", self._post_reset, methods=["POST"]),
            Route(f"{CONTROL_PREFIX}/faults", self._faults_endpoint, methods=["GET", "POST"]),
            Route(f"{CONTROL_PREFIX}/stats", self._get_stats, methods=["GET"]),
            *self.control_routes(),
        ]
        self.app = Starlette(
            routes=[*control, *self.routes()], exception_handlers={ClientDisconnect: _client_closed}
        )

    # -- subclass hooks --------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def control_routes(self) -> list[BaseRoute]:
        """Extra `/_emulator/...` routes (e.g. MoEngage's cohort membership)."""
        return []

    def credentials(self) -> dict[str, str]:
        """What a client must send; printed by `moerules emulate`."""
        return {}

    def error_body(self, status: int, raw: bytes) -> Any:
        """Body of an injected error answer, shaped like the partner's."""
        return {"error": HTTPStatus(status).phrase}

    def fault_headers(self, status: int, retry_after: int) -> dict[str, str]:
        """Extra headers on injected error answers (e.g. rate-limit headers)."""
        return {}

    def reset_state(self) -> None:
        """Forget the partner-side state of a subclass (usage windows, cohorts...)."""

    def body_limit(self, path: str) -> int:
        """The partner's request size limit for `path`, in bytes."""
        return 1024 * 1024

    # -- test helpers ----------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        """Snapshot of the processed requests, oldest first."""
        with self._lock:
            return list(self._received)

    def records(self, path_prefix: str = "") -> list[Any]:
        """Every record the partner accepted (events, users…), in arrival order."""
        return [rec for r in self.received if r.path.startswith(path_prefix) for rec in r.records]

    def wait_for_records(
        self, count: int, path_prefix: str = "", timeout: float = 5.0
    ) -> list[Any]:
        """Poll until `count` records arrived or `timeout` passed; returns what arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(path_prefix)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self._stats
            return {
                "requests": s.requests,
                "by_status": {str(k): v for k, v in sorted(s.by_status.items())},
                "faults": dict(sorted(s.faults.items())),
                "rate_limited": s.rate_limited,
                "received": len(self._received),
                "records": sum(len(r.records) for r in self._received),
                "evicted": s.evicted,
            }

    def reset(self) -> None:
        """Back to a freshly constructed emulator: no requests, no statistics, no faults
        (the plan's initial seed), no partner-side usage or state."""
        with self._lock:
            self._received.clear()
            self._stats = _Stats()
        self.faults.reset()
        self.reset_state()

    # -- helpers for concrete emulators ----------------------------------------------------
    async def read_body(self, request: Request, limit: int) -> bytes:
        """The body as a stream capped at `limit` bytes; BodyTooLarge beyond (unread rest)."""
        return await read_body(request, limit)

    def respond(
        self,
        request: Request,
        status: int,
        payload: Any,
        *,
        body: Any = None,
        records: Sequence[Any] = (),
        rejected: Sequence[int] = (),
        reasons: Mapping[int, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Store the request as processed, then answer `payload` as JSON."""
        self.store(request, status, body=body, records=records, rejected=rejected, reasons=reasons)
        return json_response(payload, status, headers)

    def store(
        self,
        request: Request,
        status: int,
        *,
        body: Any = None,
        records: Sequence[Any] = (),
        rejected: Sequence[int] = (),
        reasons: Mapping[int, str] | None = None,
    ) -> None:
        entry = Received(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=_header_dict(request),
            body=body,
            status=status,
            at=float(request.scope.get(_T0_KEY, time.monotonic())),
            records=tuple(records),
            rejected=tuple(rejected),
            reasons=dict(reasons or {}),
        )
        with self._lock:
            if len(self._received) == self._received.maxlen:
                self._stats.evicted += 1
            self._received.append(entry)

    def record_fault(self, request: Request) -> Fault | None:
        """The record_400 fault injected into this request, if any."""
        fault = request.scope.get(_FAULT_KEY)
        return fault if isinstance(fault, Fault) and fault.kind == "record_400" else None

    def failing_records(self, request: Request, count: int) -> tuple[Fault | None, list[int]]:
        """Which of `count` records an injected record_400 fault rejects."""
        fault = self.record_fault(request)
        if fault is None:
            return None, []
        return fault, self.faults.failing_records(fault, count)

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        scope[_T0_KEY] = time.monotonic()
        with self._lock:
            self._stats.requests += 1
        decision = self.faults.decide(path)
        if decision is not None:
            fault = decision.fault
            if fault.delay > 0:
                receive = await self._slow(fault, scope, receive)
            if decision.source == "rate_limit":
                with self._lock:
                    self._stats.rate_limited += 1
            elif fault.kind != "none":
                with self._lock:
                    self._stats.faults[fault.kind] += 1
            if fault.kind == "reset":
                await _drop_connection(send)
            status = fault.status
            if status is not None:
                raw = b""
                if self.fault_reads_body:
                    raw = await _peek_body(scope, receive, self.body_limit(path))
                response = (
                    _echo(scope, raw, status)
                    if fault.kind == "echo"
                    else self._fault_response(fault, status, raw)
                )
                await response(scope, receive, self._count(send))
                return
            scope[_FAULT_KEY] = fault
        await self.app(scope, receive, self._count(send))

    async def _slow(self, fault: Fault, scope: Scope, receive: Receive) -> Receive:
        """Wait out a fault's delay with the body already received (up to the limit): a
        partner that is slow to answer has the request, and ingests it even when the client
        gives up waiting. The buffered part is replayed to the handler, then the rest."""
        buffered: list[Message] = []
        if fault.status is None:
            limit, size = self.body_limit(str(scope.get("path", ""))), 0
            while size <= limit:
                message = await receive()
                buffered.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
                size += len(message.get("body", b""))
        await anyio.sleep(fault.delay)

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        return replay

    def _fault_response(self, fault: Fault, status: int, raw: bytes) -> Response:
        headers = self.fault_headers(status, fault.retry_after)
        if fault.kind == "429":
            headers["Retry-After"] = str(fault.retry_after)
        elif fault.kind == "429_date":
            headers["Retry-After"] = formatdate(time.time() + fault.retry_after, usegmt=True)
        return json_response(self.error_body(status, raw), status, headers)

    def _count(self, send: Send) -> Send:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                with self._lock:
                    self._stats.by_status[int(message["status"])] += 1
            await send(message)

        return counting_send

    # -- control endpoints -----------------------------------------------------------------
    async def _get_received(self, request: Request) -> Response:
        return json_response([r.to_dict() for r in self.received])

    async def _post_reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"status": "ok"})

    async def _faults_endpoint(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                raw = await read_body(request, MAX_CONTROL_BODY)
                config = orjson.loads(raw or b"{}")
                if not isinstance(config, dict):
                    raise ValueError("the fault plan must be a JSON object")
                self.faults.configure(config)
            except BodyTooLarge as exc:
                return json_response({"error": f"the fault plan {exc}"}, 413)
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                return json_response({"error": str(exc)}, 400)
        return json_response(self.faults.to_config())

    async def _get_stats(self, request: Request) -> Response:
        return json_response(self.stats())


async def _client_closed(request: Request, exc: Exception) -> Response:
    """The client went away mid-body: nothing is stored and nobody reads the answer."""
    return Response(status_code=CLIENT_CLOSED)


async def _peek_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Up to `limit` bytes of the body for an injected error's answer; b'' when the body
    is declared or turns out larger (the rest is never read)."""
    if limit <= 0:
        return b""
    for key, value in scope.get("headers", []):
        if key == b"content-length" and value.strip().isdigit() and int(value) > limit:
            return b""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        body += message.get("body", b"")
        if len(body) > limit:
            return b""
        if not message.get("more_body", False):
            return bytes(body)


async def _drop_connection(send: Send) -> None:
    """Make uvicorn close the socket without writing a byte of response.

    uvicorn (h11) marks the response as started, then h11 refuses a 1xx final status
    before anything is written; the exception then makes uvicorn close the transport.
    """
    try:
        await send({"type": "http.response.start", "status": 100, "headers": []})
    except Exception as exc:
        raise InjectedConnectionReset("injected connection reset") from exc
    raise InjectedConnectionReset("injected connection reset (after a 1xx start)")


def _echo(scope: Scope, raw: bytes, status: int) -> Response:
    """The request as a careless partner or proxy echoes it in an error: every header."""
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        headers[key.decode("latin-1")] = value.decode("latin-1")
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    echo = {
        "headers": dict(sorted(headers.items())),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "query": query,
        "body": raw[:1024].decode("utf-8", "replace"),
    }
    return json_response(
        {"error": f"request refused: {HTTPStatus(status).phrase}", "request": echo}, status
    )


def _http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


def _header_dict(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out
