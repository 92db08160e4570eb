"""MoEngage Data API and Cohort Sync emulator (partner-apis.md §1.1–§1.6).

Checks what MoEngage checks, in the order it can: data centre, auth and rate on the
headers, then content type and declared size, then the body read as a capped stream,
then the payload and the per-minute user and event caps. A sink that passes here sends
what the real API accepts; what MoEngage accepts but never ingests (a failed bulk
element, a future-dated event) is answered 200 and recorded with its reason.
"""

from __future__ import annotations

import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson
from moerules.connectors.emulation.base import Emulator, json_response
from moerules.connectors.emulation.faults import FaultPlan, bounded_float, bounded_int
from moerules.connectors.emulation.intake import (
    BodyTooLarge,
    host_name,
    media_type,
    parse_basic_auth,
)
from moerules.connectors.emulation.limits import Breach, Quotas
from moerules.connectors.moengage.emulator_schema import (
    ELEMENT_VALIDATORS,
    MALFORMED,
    MALFORMED_MESSAGE,
    VALIDATORS,
    Problem,
    ingestible_actions,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

SUCCESS_MESSAGE = "Your request has been accepted and will be processed soon."
AUTH = "Authentication required"
# §1.1 [M1]: the data centres; the REST host of DC "NN" is api-NN.moengage.com.
DATA_CENTERS = ("01", "02", "03", "04", "05", "06", "101")
_MOENGAGE_HOST = re.compile(r"api-(\d+)\.moengage\.com")
# §1.5 [M2]: Bulk import says 100 KB a call (older docs: every endpoint); the stricter wins.
DATA_MAX_BYTES = 100 * 1024
# §1.6 [M5]: "The payload size cannot exceed 128KB."
COHORT_MAX_BYTES = 128 * 1024
DATA_KINDS = ("customer", "event", "device", "transition")


@dataclass(frozen=True)
class MoEngageLimits:
    """MoEngage's documented per-workspace limits; None turns one off.

    `second` and `minute` are the window lengths in seconds: shrink them to test a
    client's pacing without waiting a real minute, e.g.
    ``MoEngageLimits(bulk_events_per_minute=50, minute=0.5)``.
    """

    requests_per_second: int | None = 500  # §1.5 [M8][M9]: partner ingestion, 500 RPS
    requests_per_minute: int | None = 15_000  # §1.5 [M8]: 15,000 RPM
    bulk_users_per_minute: int | None = 60_000  # §1.3 [M4], spec /transition: "60,000 users
    bulk_events_per_minute: int | None = 60_000  # and 60,000 events per minute across all"
    events_per_minute: int | None = 30_000  # §1.3 [M4]: Track Event
    users_per_minute: int | None = 10_000  # §1.3 [M4]: Track User
    devices_per_minute: int | None = 10_000  # §1.3 [M4]: Track Device
    cohort_requests_per_minute: int | None = 300  # §1.6 [M5]: Cohort Sync, 300 req/min
    second: float = 1.0
    minute: float = 60.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("second", "minute"):
                bounded_float(spec.name, value, 0.001, 86_400.0)
            elif value is not None:
                bounded_int(spec.name, value, 1, 10_000_000)

    def windows(self) -> dict[str, tuple[int, float]]:
        spans = {"requests_per_second": self.second}
        return {
            spec.name: (value, spans.get(spec.name, self.minute))
            for spec in fields(self)
            if spec.name not in ("second", "minute")
            and (value := getattr(self, spec.name)) is not None
        }


UNLIMITED = MoEngageLimits(None, None, None, None, None, None, None, None)
# What each endpoint's documented limit counts, and the window its x-ratelimit-* shows.
_UNIT_LIMITS = {
    "event": "events_per_minute",
    "customer": "users_per_minute",
    "device": "devices_per_minute",
}
_HEADER_LIMIT = {
    **_UNIT_LIMITS,
    "transition": "bulk_events_per_minute",
    "cohortsync": "cohort_requests_per_minute",
}


@dataclass
class Cohort:
    """A custom segment as Cohort Sync leaves it: the latest name, and who is in it."""

    cohort_id: str
    name: str
    description: str | None
    partner: str
    members: set[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cohort_id": self.cohort_id,
            "cohort_name": self.name,
            "cohort_description": self.description,
            "partner": self.partner,
            "members": sorted(self.members),
        }


def request_id() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(8))


def error_payload(problem: Problem) -> dict[str, Any]:
    error: dict[str, Any] = {"type": problem.type, "message": problem.message}
    if problem.attribute is not None:
        error["attribute"] = problem.attribute
    error["request_id"] = request_id()
    return {"status": "fail", "error": error}


class Refusal(Exception):
    """Answer `status` with MoEngage's error body for `problem` (and `headers`)."""

    def __init__(
        self,
        status: int,
        problem: Problem,
        headers: Mapping[str, str] | None = None,
        payload: Any = None,
    ) -> None:
        super().__init__(problem.message)
        self.status = status
        self.problem = problem
        self.headers = dict(headers or {})
        self.payload = payload


class MoEngageEmulator(Emulator):
    """`POST /v1/{customer,event,device,transition}/{workspace_id}` and
    `POST /v1/integrations/cohortsync`, for one workspace in one data centre.

    `known_users`: the uids Cohort Sync can match (it "never creates users", §1.6 [M5]);
    None treats every uid as an existing user, a collection adds to it every customer_id
    the emulator has accepted.
    """

    name = "moengage"

    def __init__(
        self,
        workspace_id: str = "TEST_WORKSPACE",
        data_api_key: str = "test-data-api-key",
        *,
        data_center: str = "01",
        max_body_bytes: int = DATA_MAX_BYTES,
        cohort_max_body_bytes: int = COHORT_MAX_BYTES,
        project_codes: Iterable[str] | None = None,
        limits: MoEngageLimits | Mapping[str, Any] | None = None,
        known_users: Iterable[str] | None = None,
        future_tolerance: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        max_received: int = 100_000,
    ) -> None:
        data_center = str(data_center)
        if data_center not in DATA_CENTERS:
            raise ValueError(f"data_center must be one of {', '.join(DATA_CENTERS)}")
        self.workspace_id = workspace_id
        self.data_api_key = data_api_key
        self.data_center = data_center
        self.max_body_bytes = bounded_int("max_body_bytes", max_body_bytes, 1, 64 * 2**20)
        self.cohort_max_body_bytes = bounded_int(
            "cohort_max_body_bytes", cohort_max_body_bytes, 1, 64 * 2**20
        )
        if isinstance(project_codes, str):
            project_codes = [project_codes]
        self.project_codes = None if project_codes is None else frozenset(project_codes)
        self.limits = (
            MoEngageLimits(**limits)
            if isinstance(limits, Mapping)
            else limits
            if limits is not None
            else MoEngageLimits()
        )
        if not isinstance(self.limits, MoEngageLimits):
            raise TypeError("limits must be a MoEngageLimits or an object of its fields")
        self.future_tolerance = bounded_float(
            "future_tolerance", future_tolerance, 0.0, 10 * 365 * 86_400.0
        )
        self._quotas = Quotas(self.limits.windows(), clock)
        if isinstance(known_users, str):
            known_users = [known_users]
        self._initial_known = None if known_users is None else frozenset(known_users)
        self._state_lock = threading.Lock()
        self._known: set[str] | None = None
        self._cohorts: dict[str, Cohort] = {}
        super().__init__(faults=faults, max_received=max_received)
        self.reset_state()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/integrations/cohortsync", self._cohort_sync, methods=["POST"]),
            Route("/v1/{kind}/{workspace_id}", self._data, methods=["POST"]),
        ]

    def control_routes(self) -> list[BaseRoute]:
        return [Route("/_emulator/cohorts", self._get_cohorts, methods=["GET"])]

    def credentials(self) -> dict[str, str]:
        return {
            "auth": f"Basic {self.workspace_id}:{self.data_api_key}",
            "MOE-APPKEY": self.workspace_id,
            "data_center": f"{self.data_center} (api-{self.data_center}.moengage.com)",
        }

    def error_body(self, status: int, raw: bytes) -> Any:
        # data-api.yaml: the 429, 500 examples; 503 has none (ours).
        problems = {
            429: Problem("RateLimitError", "Rate limit exceeded"),
            500: Problem("ServerError", "Internal Server Error"),
            503: Problem("ServiceUnavailable", "Service Unavailable"),
        }
        return error_payload(problems.get(status, Problem("ServerError", "Server Error")))

    def reset_state(self) -> None:
        self._quotas.reset()
        with self._state_lock:
            self._known = None if self._initial_known is None else set(self._initial_known)
            self._cohorts = {}

    # -- what tests inspect ----------------------------------------------------------------
    @property
    def cohorts(self) -> dict[str, Cohort]:
        """Every cohort Cohort Sync created, by cohort_id (copies)."""
        with self._state_lock:
            return {
                k: Cohort(c.cohort_id, c.name, c.description, c.partner, set(c.members))
                for k, c in self._cohorts.items()
            }

    def cohort_members(self, cohort_id: str) -> set[str]:
        """The uids in cohort `cohort_id` now (empty when it does not exist)."""
        with self._state_lock:
            cohort = self._cohorts.get(cohort_id)
            return set(cohort.members) if cohort is not None else set()

    # -- endpoints -------------------------------------------------------------------------
    async def _data(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in DATA_KINDS:  # emulator's own body: the spec documents no 404
            return self._fail(request, 404, Problem("NotFound", f"Unknown endpoint /v1/{kind}"))
        try:
            self._check_host(request)
            self._check_auth(request, request.path_params["workspace_id"], appkey_required=False)
            self._check_query(request)
            self._charge(request, {"requests_per_second": 1, "requests_per_minute": 1}, kind)
            payload = await self._read_json(request, self.max_body_bytes, None)
            problem = VALIDATORS[kind](payload)
            if problem is not None:
                raise Refusal(400, problem, payload=payload)
            elements = payload["elements"] if kind == "transition" else [payload]
            self._charge(request, _usage(kind, elements), kind, payload)
        except Refusal as refusal:
            return self._fail(
                request, refusal.status, refusal.problem, refusal.payload, refusal.headers
            )
        return self._accept_elements(request, kind, payload, elements)

    async def _cohort_sync(self, request: Request) -> Response:
        try:
            self._check_host(request)
            self._check_auth(request, None, appkey_required=True)  # §1.6 [M5]: required
            self._charge(request, {"cohort_requests_per_minute": 1}, "cohortsync")
            payload = await self._read_json(
                request, self.cohort_max_body_bytes, "Payload can not exceed 128KB", cohort=True
            )
            problem = VALIDATORS["cohortsync"](payload)
            if problem is not None:
                raise Refusal(400, problem, payload=payload)
        except Refusal as refusal:
            return self._fail(
                request, refusal.status, refusal.problem, refusal.payload, refusal.headers
            )
        unmatched = self._apply_cohort(payload)
        body = {"status": "success", "message": SUCCESS_MESSAGE}  # cohort spec: no request_id
        return self.respond(
            request,
            200,
            body,
            body=payload,
            records=[payload],
            rejected=sorted(unmatched),
            reasons=unmatched,
            headers=self._rate_headers("cohortsync"),
        )

    async def _get_cohorts(self, request: Request) -> Response:
        return json_response({k: c.to_dict() for k, c in sorted(self.cohorts.items())})

    # -- steps -----------------------------------------------------------------------------
    def _check_host(self, request: Request) -> None:
        """A request addressed to another data centre's host reaches a DC that does not
        hold this workspace (§1.1 [M1]: a workspace cannot move). What MoEngage answers
        then is UNCONFIRMED; the emulator answers the auth failure its keys would get.
        Local hosts (127.0.0.1, localhost...) are this emulator's own."""
        match = _MOENGAGE_HOST.fullmatch(host_name(request))
        if match is not None and match.group(1) != self.data_center:
            raise Refusal(
                401,
                Problem(
                    AUTH, "App Secret key mismatch. Please login to the dashboard to verify key"
                ),
            )

    def _check_auth(
        self, request: Request, path_workspace: str | None, *, appkey_required: bool
    ) -> None:
        """Basic workspace_id:data_api_key (§1.2 [M1][M2]); messages from the spec's 401
        examples (Merge User lists them all)."""
        header = request.headers.get("authorization")
        if not header:
            raise Refusal(401, Problem(AUTH, "Authentication Header Required"))
        auth = parse_basic_auth(header)
        if auth is None:
            raise Refusal(
                401,
                Problem(
                    AUTH,
                    "Invalid authorization used. MoEngage only "
                    "supports 'Basic Auth' authorization.",
                ),
            )
        if not auth.username:
            raise Refusal(
                401, Problem(AUTH, "Username (APP_KEY) is missing in the Basic Auth authorization.")
            )
        if not auth.password:
            raise Refusal(
                401,
                Problem(AUTH, "Password (APP_SECRET) is missing in the Basic Auth authorization."),
            )
        if auth.username != self.workspace_id or auth.password != self.data_api_key:
            raise Refusal(
                401,
                Problem(
                    AUTH, "App Secret key mismatch. Please login to the dashboard to verify key"
                ),
            )
        # §1.2: MOE-APPKEY is required by Cohort Sync [M5]; elsewhere current docs do not
        # require it [M1], but when sent it must match the Basic-auth username [M2].
        appkey = request.headers.get("moe-appkey")
        if appkey is None and appkey_required:
            raise Refusal(401, Problem(AUTH, "MOE-APPKEY is missing in Header"))
        if appkey is not None and appkey != auth.username:
            raise Refusal(
                401,
                Problem(
                    AUTH,
                    "MOE_APPKEY doesn't match the Username (APP_KEY) "
                    "used in Basic Auth authorization.",
                ),
            )
        if path_workspace is not None and path_workspace != auth.username:
            raise Refusal(
                401,
                Problem("Authentication Mismatch", "App key mismatch in params and authentication"),
            )

    def _check_query(self, request: Request) -> None:
        app_id = request.query_params.get("app_id")
        if app_id is not None and app_id != self.workspace_id:
            raise Refusal(
                401,
                Problem("Authentication Mismatch", "App key mismatch in params and authentication"),
            )
        # §1.8: a Portfolio workspace takes the project per request in `project_code`.
        code = request.query_params.get("project_code")
        if code is not None and (
            not code or (self.project_codes is not None and code not in self.project_codes)
        ):
            raise Refusal(
                400,
                Problem(
                    "InvalidAttributeError", f"Invalid project_code '{code[:100]}'", "project_code"
                ),
            )

    async def _read_json(
        self, request: Request, limit: int, too_large: str | None, *, cohort: bool = False
    ) -> dict[str, Any]:
        """Content type, declared size, then the body as a capped stream, then JSON."""
        kind = media_type(request)
        if kind != "application/json":
            if cohort:  # cohort-sync-api.yaml, 415
                raise Refusal(
                    415, Problem("Unsupported media type", "Content type is not supported")
                )
            if not kind:  # data-api.yaml, Merge User's 415 for a missing header
                raise Refusal(
                    415,
                    Problem(
                        "MediaTypeError",
                        "The header 'Content-Type' is "
                        "missing. Kindly provide the header 'Content-Type' "
                        "and set it as 'application/json'",
                    ),
                )
            raise Refusal(415, Problem("MediaTypeError", "Unsupported Media Type"))
        try:
            raw = await self.read_body(request, limit)
        except BodyTooLarge:
            if cohort:  # cohort-sync-api.yaml, 413
                raise Refusal(413, Problem("Payload too large", too_large or "")) from None
            # data-api.yaml, 413: "Payload size exceeds 128 KB" (the limit here is ours)
            raise Refusal(
                413, Problem("PayloadTooLarge", f"Payload size exceeds {too_large or _kb(limit)}")
            ) from None
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Refusal(400, Problem(MALFORMED, MALFORMED_MESSAGE)) from None
        if not isinstance(payload, dict):
            raise Refusal(400, Problem(MALFORMED, MALFORMED_MESSAGE), payload=payload)
        return payload

    def _charge(
        self, request: Request, usage: Mapping[str, int], kind: str, payload: Any = None
    ) -> None:
        breach = self._quotas.charge(usage)
        if breach is None:
            return
        with self._lock:
            self._stats.rate_limited += 1
        raise Refusal(429, _rate_problem(kind, breach), _breach_headers(breach), payload)

    def _accept_elements(
        self, request: Request, kind: str, payload: dict[str, Any], elements: list[Any]
    ) -> Response:
        """200 with what MoEngage ingests as records. Bulk import "returns 200 even when
        some elements fail" (§1.4 [M2]): an element failed by an injected record_400 is
        dropped with its reason; on the single-element endpoints that fault answers 400.
        """
        fault, failing = self.failing_records(request, len(elements))
        if fault is not None and failing and kind != "transition":
            return self._fail(
                request,
                400,
                Problem(
                    "InvalidAttributeError",
                    fault.message or "Record rejected",
                    fault.field or "customer_id",
                ),
                payload,
            )
        reasons = (
            {
                i: f"{fault.field or 'element'}: {fault.message or 'record rejected'}"
                for i in failing
            }
            if fault is not None
            else {}
        )
        records: list[Any] = []
        for i, element in enumerate(elements):
            if i in reasons:
                continue
            if element.get("type") == "event":
                actions, dropped = ingestible_actions(element, self.future_tolerance)
                if dropped:
                    reasons[i] = "; ".join(dropped)
                    if not actions:
                        continue
                    element = dict(element, actions=actions)
            records.append(element)
        self._learn_users(records)
        body = {"status": "success", "message": SUCCESS_MESSAGE, "request_id": request_id()}
        return self.respond(
            request,
            200,
            body,
            body=payload,
            records=records,
            rejected=sorted(reasons),
            reasons=reasons,
            headers=self._rate_headers(kind),
        )

    def _fail(
        self,
        request: Request,
        status: int,
        problem: Problem,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return self.respond(request, status, error_payload(problem), body=payload, headers=headers)

    def _rate_headers(self, kind: str) -> dict[str, str]:
        """x-ratelimit-* of the endpoint's own documented limit (§1.5 [M3][M4]); reset is
        the seconds until room frees up, one of the two readings the docs give."""
        name = _HEADER_LIMIT.get(kind)
        room = self._quotas.headroom(name) if name is not None else None
        if room is None:
            return {}
        limit, remaining, reset = room
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": str(reset),
        }

    # -- cohort state ----------------------------------------------------------------------
    def _learn_users(self, records: list[Any]) -> None:
        if self._initial_known is None:
            return
        with self._state_lock:
            if self._known is not None:
                self._known.update(
                    str(r["customer_id"]).strip()
                    for r in records
                    if isinstance(r, dict) and "customer_id" in r
                )

    def _apply_cohort(self, payload: dict[str, Any]) -> dict[int, str]:
        """Add or remove the members; returns the members that matched no user (index ->
        reason): Cohort Sync "only matches users already present" (§1.6 [M5])."""
        params = payload["parameters"]
        uids = [str(m["uid"]) for m in params["members"]]
        with self._state_lock:
            unmatched = {
                i: f"no user with uid {uid!r}"
                for i, uid in enumerate(uids)
                if self._known is not None and uid not in self._known
            }
            matched = {uid for i, uid in enumerate(uids) if i not in unmatched}
            cohort = self._cohorts.get(params["cohort_id"])
            if cohort is None:  # §1.6 [M6]: the segment is created when it does not exist
                cohort = self._cohorts[params["cohort_id"]] = Cohort(
                    params["cohort_id"], params["cohort_name"], None, payload["partner"], set()
                )
            cohort.name = params["cohort_name"]
            cohort.partner = payload["partner"]
            if params.get("cohort_description") is not None:
                cohort.description = params["cohort_description"]
            if payload["action"] == "add_members":
                cohort.members |= matched
            else:
                cohort.members -= matched
        return unmatched


def _usage(kind: str, elements: list[Any]) -> dict[str, int]:
    """What the documented per-minute limits count in one request."""
    events = sum(len(e.get("actions") or ()) for e in elements if e.get("type") == "event")
    if kind == "transition":
        # Devices are not named by the bulk limit ("60,000 users and 60,000 events"); they
        # are not counted (UNCONFIRMED).
        users = sum(1 for e in elements if e.get("type") == "customer")
        return {"bulk_users_per_minute": users, "bulk_events_per_minute": events}
    return {_UNIT_LIMITS[kind]: events if kind == "event" else 1}


def _rate_problem(kind: str, breach: Breach) -> Problem:
    if kind == "cohortsync":  # cohort-sync-api.yaml, 429
        return Problem(
            "Rate Limits Exceeded", "Rate limits for customers exceeded. Please Try After Some Time"
        )
    return Problem("RateLimitError", "Rate limit exceeded")  # data-api.yaml, 429


def _breach_headers(breach: Breach) -> dict[str, str]:
    # MoEngage documents x-ratelimit-* and no Retry-After (§1.5).
    return {
        "x-ratelimit-limit": str(breach.limit),
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(max(1, -int(-breach.retry_after // 1))),
    }


def _kb(limit: int) -> str:
    return f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit} bytes"


__all__ = [
    "ELEMENT_VALIDATORS",
    "UNLIMITED",
    "Cohort",
    "MoEngageEmulator",
    "MoEngageLimits",
    "Problem",
    "error_payload",
    "request_id",
]
