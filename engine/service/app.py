"""The HTTP surface: ``POST /ingest/{bundle}``, ``GET /healthz``, ``/readyz``, ``/metrics``.

An ingest request is checked in this order, each step before anything later is read, and
refused with a JSON body ``{"error": ..., "detail"?: ...}``:

1. the route exists (404) and the service is not stopping (503, ``Retry-After``);
2. credentials (401): nothing else is looked at for a caller who is not authenticated;
3. ``Content-Type: application/json`` (415) and no unknown ``Content-Encoding`` (415;
   ``gzip`` is accepted and decompressed within the body limit);
4. size (413): a declared ``Content-Length`` over the limit is refused unread; an undeclared
   body is read as a stream that stops at the limit;
5. back-pressure (429, ``Retry-After``): the bundle's spool is over its size, bytes or age
   limit; the partner retries later and nothing is lost;
6. shape (400): the body is parsed and checked by the bundle's source as ``run`` would decode
   the line (malformed JSON, not an object, ``events`` not a list, ...);
7. the payload is written to the spool, durably, and only then is the answer 202.

Nothing of a refused request is stored or processed. One log line per request.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
from moerules.engine.errors import RecordError
from moerules.engine.service.auth import RouteAuth
from moerules.engine.service.logs import LOGGER, log_event
from moerules.engine.service.metrics import CONTENT_TYPE, ServiceMetrics
from moerules.engine.service.reload import ServedBundle
from moerules.engine.service.spool import Spool
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["IngestLimits", "IngestRoute", "build_app"]

_log = logging.getLogger(LOGGER)
_JSON_TYPES = frozenset({"application/json"})
CLIENT_CLOSED = 499  # the client left before the answer (nginx's code; logs and metrics only)


@dataclass(frozen=True)
class IngestLimits:
    """How much the service takes before it refuses (413) or asks partners to wait (429)."""

    max_body_bytes: int = 4 << 20
    max_spool_messages: int = 100_000  # per bundle
    max_spool_bytes: int = 1 << 30  # per bundle
    max_spool_age: float = 3600.0  # seconds; per bundle
    retry_after: int = 5  # seconds, in 429 and 503 answers


@dataclass
class IngestRoute:
    """One bundle's route: its bundle (swapped on reload) and who may post."""

    served: ServedBundle
    auth: RouteAuth

    @property
    def partner(self) -> str:
        return self.served.compiled.source.name


class _Refused(Exception):
    def __init__(
        self, status: int, error: str, detail: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def build_app(
    routes: Mapping[str, IngestRoute],
    spool: Spool,
    metrics: ServiceMetrics,
    limits: IngestLimits,
    *,
    ready: Callable[[], bool],
    stopping: Callable[[], bool],
) -> Starlette:
    """The ASGI app of the service."""

    def backpressure(name: str) -> str | None:
        """Why the bundle's spool takes nothing more now, or None."""
        depth = spool.depth(name)
        if depth >= limits.max_spool_messages:
            return f"{depth} messages are waiting (limit {limits.max_spool_messages})"
        size = spool.size_bytes(name)
        if size >= limits.max_spool_bytes:
            return f"{size} bytes are waiting (limit {limits.max_spool_bytes})"
        age = spool.oldest_age(name)
        if age is not None and age >= limits.max_spool_age:
            return f"the oldest message has waited {age:.0f} s (limit {limits.max_spool_age:g} s)"
        return None

    def check_declared(request: Request) -> None:
        """A declared Content-Length over the limit: refused before a byte is read."""
        declared = request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise _Refused(
                413,
                "payload too large",
                f"{declared} bytes declared; the limit is {limits.max_body_bytes}",
            )

    async def read_capped(request: Request) -> bytes:
        check_declared(request)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise _Refused(413, "payload too large", f"more than {limits.max_body_bytes} bytes")
        return bytes(body)

    def gunzip(data: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(data, limits.max_body_bytes + 1)
        except zlib.error as exc:
            raise _Refused(400, "malformed gzip body", str(exc)) from None
        if len(out) > limits.max_body_bytes or inflater.unconsumed_tail:
            raise _Refused(
                413,
                "payload too large",
                f"more than {limits.max_body_bytes} bytes once decompressed",
            )
        if not inflater.eof:
            raise _Refused(400, "malformed gzip body", "truncated gzip stream")
        return out

    async def accept(name: str, route: IngestRoute, request: Request) -> int:
        """Steps 2-7 of the module docstring; the spool id of the stored payload."""
        if not route.auth.allows(request.headers):
            challenge = route.auth.challenge
            raise _Refused(
                401,
                "unauthenticated",
                "missing or wrong credentials",
                {"WWW-Authenticate": challenge} if challenge else None,
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES:
            raise _Refused(
                415,
                "unsupported media type",
                f"send Content-Type: application/json, not {content_type!r}"
                if content_type
                else "send Content-Type: application/json",
            )
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            raise _Refused(
                415, "unsupported content encoding", f"{encoding!r}: send the body plain or gzip"
            )
        check_declared(request)
        full = backpressure(name)
        if full is not None:
            raise _Refused(
                429,
                "too many payloads waiting",
                f"{full}; retry later",
                {"Retry-After": str(limits.retry_after)},
            )
        body = await read_capped(request)
        if encoding == "gzip":
            body = gunzip(body)
        if not body.strip():
            raise _Refused(400, "empty body", "the payload is one JSON object")
        try:
            route.served.compiled.source.decode(body)
        except RecordError as exc:
            raise _Refused(400, exc.reason, exc.detail) from None
        # one payload, one line: a newline in JSON is only ever whitespace between tokens
        body = body.replace(b"\r", b" ").replace(b"\n", b" ")
        return await spool.put(name, body)

    async def ingest(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["bundle"]
        route = routes.get(name)
        partner = route.partner if route is not None else ""
        stored: int | None = None
        status = 202
        try:
            if route is None:
                # the bundles served are not listed: a caller has not authenticated yet
                raise _Refused(404, "no such route", f"no bundle {name[:100]!r} is served here")
            if stopping():
                raise _Refused(
                    503,
                    "the service is stopping",
                    "retry later: another instance, or this one after its restart",
                    {"Retry-After": str(limits.retry_after)},
                )
            stored = await accept(name, route, request)
            response = _json(202, {"status": "accepted", "id": stored})
        except _Refused as refused:
            status = refused.status
            body: dict[str, object] = {"error": refused.error}
            if refused.detail:
                body["detail"] = refused.detail
            response = _json(status, body, refused.headers)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            response = Response(status_code=400)
        except OSError as exc:  # the spool could not store it: the partner retries
            status = 503
            log_event(_log, "spool write failed", logging.ERROR, bundle=name, error=str(exc))
            response = _json(
                503,
                {"error": "could not store the payload", "detail": str(exc)},
                {"Retry-After": str(limits.retry_after)},
            )
        elapsed = time.perf_counter() - started
        if route is not None:
            metrics.requests.labels(name, partner, str(status)).inc()
            metrics.latency.labels(name).observe(elapsed)
        fields: dict[str, object] = {
            "method": request.method,
            "path": request.url.path,
            "bundle": name,
            "status": status,
            "ms": round(elapsed * 1000, 2),
            "client": request.client.host if request.client else None,
        }
        if stored is not None:
            fields["id"] = stored
        if status >= 400 and status != CLIENT_CLOSED:
            fields["error"] = orjson.loads(response.body).get("error")
        log_event(_log, "request", logging.INFO if status < 500 else logging.WARNING, **fields)
        return response

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "alive"})

    async def readyz(request: Request) -> Response:
        if ready():
            return _json(200, {"status": "ready", "bundles": sorted(routes)})
        return _json(
            503, {"status": "not ready", "detail": "stopping" if stopping() else "starting"}
        )

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/ingest/{bundle}", ingest, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ]
    )
