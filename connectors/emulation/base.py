"""Shared machinery of the partner emulators: request store, control endpoints, faults.

Each emulator is an ASGI app. The outer `__call__` buffers the body, applies the fault
plan, then hands the request to the starlette routes of the concrete emulator.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, ClassVar, NamedTuple

import anyio
import orjson
from moerules.connectors.emulation.faults import Fault, FaultPlan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

CONTROL_PREFIX = "/_emulator"
_T0_KEY = "moerules.emulator.t0"
_FAULT_KEY = "moerules.emulator.fault"


class InjectedConnectionReset(Exception):
    """Raised on purpose so the server drops the connection without answering."""


class _DropInjectedResets(logging.Filter):
    """Keeps the server log free of tracebacks for resets we injected on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedConnectionReset)


_RESET_FILTER = _DropInjectedResets()


class BasicAuth(NamedTuple):
    username: str
    password: str


def parse_basic_auth(value: str | None) -> BasicAuth | None:
    """Decode an `Authorization: Basic` header; None when absent or not valid Basic."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return BasicAuth(username, password)


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ('' when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def json_response(payload: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


@dataclass(frozen=True)
class Received:
    """One request the emulator processed (injected faults are never stored)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    at: float
    records: tuple[Any, ...] = ()
    rejected: tuple[int, ...] = ()

    @property
    def accepted(self) -> bool:
        """True when the partner would ingest something (2xx, or a partial success)."""
        return 200 <= self.status < 300 or bool(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "query": self.query,
                "headers": self.headers, "body": self.body, "status": self.status,
                "at": self.at, "records": list(self.records), "rejected": list(self.rejected)}


@dataclass
class _Stats:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0


class Emulator:
    """Base of the partner emulators; subclasses add routes, credentials and error bodies."""

    name: ClassVar[str] = "emulator"

    def __init__(self, *, faults: FaultPlan | None = None) -> None:
        self.faults = faults if faults is not None else FaultPlan()
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._stats = _Stats()
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _RESET_FILTER not in uvicorn_log.filters:
            uvicorn_log.addFilter(_RESET_FILTER)
        control = [
            Route(f"{CONTROL_PREFIX}/received", self._get_received, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/reset", self._post_reset, methods=["POST"]),
            Route(f"{CONTROL_PREFIX}/faults", self._faults_endpoint, methods=["GET", "POST"]),
            Route(f"{CONTROL_PREFIX}/stats", self._get_stats, methods=["GET"]),
        ]
        self.app = Starlette(routes=[*control, *self.routes()])

    # -- subclass hooks --------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def credentials(self) -> dict[str, str]:
        """What a client must send; printed by `moerules emulate`."""
        return {}

    def error_body(self, status: int, raw: bytes) -> Any:
        """Body of an injected error answer, shaped like the partner's."""
        return {"error": HTTPStatus(status).phrase}

    def fault_headers(self, status: int, retry_after: int) -> dict[str, str]:
        """Extra headers on injected error answers (e.g. rate-limit headers)."""
        return {}

    # -- test helpers ----------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        """Snapshot of the processed requests, oldest first."""
        with self._lock:
            return list(self._received)

    def records(self, path_prefix: str = "") -> list[Any]:
        """Every record the partner accepted (events, users…), in arrival order."""
        return [rec for r in self.received if r.path.startswith(path_prefix)
                for rec in r.records]

    def wait_for_records(self, count: int, path_prefix: str = "",
                         timeout: float = 5.0) -> list[Any]:
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
            }

    def reset(self) -> None:
        """Forget every request and statistic, and clear the fault plan."""
        with self._lock:
            self._received.clear()
            self._stats = _Stats()
        self.faults.clear()

    # -- helpers for concrete emulators ----------------------------------------------------
    def respond(self, request: Request, status: int, payload: Any, *, body: Any = None,
                records: Sequence[Any] = (), rejected: Sequence[int] = (),
                headers: Mapping[str, str] | None = None) -> Response:
        """Store the request as processed, then answer `payload` as JSON."""
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
        )
        with self._lock:
            self._received.append(entry)
        return json_response(payload, status, headers)

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
        raw = await _read_body(receive)
        if raw is None:  # client went away before sending its body
            return
        with self._lock:
            self._stats.requests += 1
        decision = self.faults.decide(path)
        if decision is not None:
            fault = decision.fault
            if fault.delay > 0:
                await anyio.sleep(fault.delay)
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
                await self._fault_response(fault, status, raw)(scope, receive, self._count(send))
                return
            scope[_FAULT_KEY] = fault
        await self.app(scope, _replay(raw, receive), self._count(send))

    def _fault_response(self, fault: Fault, status: int, raw: bytes) -> Response:
        headers = self.fault_headers(status, fault.retry_after)
        if fault.kind == "429":
            headers["Retry-After"] = str(fault.retry_after)
        elif fault.kind == "429_date":
            headers["Retry-After"] = _http_date(time.time() + fault.retry_after)
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
                config = orjson.loads(await request.body() or b"{}")
                if not isinstance(config, dict):
                    raise ValueError("the fault plan must be a JSON object")
                self.faults.configure(config)
            except (ValueError, TypeError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(self.faults.to_config())

    async def _get_stats(self, request: Request) -> Response:
        return json_response(self.stats())


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then defers to the real one."""
    pending = [raw]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


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


def _http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


def _header_dict(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out
