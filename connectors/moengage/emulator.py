"""MoEngage Data API and Cohort Sync emulator (reference §1.2–§1.6).

Validates auth, headers, size and payload structure the way MoEngage documents them,
so a sink that passes here sends what the real API accepts.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import orjson
from moerules.connectors.emulation.base import Emulator, media_type, parse_basic_auth
from moerules.connectors.emulation.faults import FaultPlan
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

SUCCESS_MESSAGE = "Your request has been accepted and will be processed soon."
REJECTED_CUSTOMER_IDS = frozenset({
    "unknown", "guest", "null", "0", "1", "2", "-1", "-2", "true", "false", "id", "uid",
    "user_id", "userid", "customer_id", "none", "na", "n/a", "(empty)", "dummy_seller_code",
    "user_attribute_unique_id",
})
COHORT_NAME_FORBIDDEN = '|*?\\:<>=$"'
# Documented per-minute limits (§1.3, §1.6), reported in the x-ratelimit-* headers.
PER_MINUTE_LIMITS = {"event": 30_000, "customer": 10_000, "device": 10_000,
                     "transition": 60_000, "cohortsync": 300}
AUTH = "Authentication required"
MISSING = "MissingAttributeError"
INVALID = "InvalidAttributeError"


class Problem(NamedTuple):
    """Why a payload is rejected: MoEngage's error `type`, `attribute` and `message`."""

    type: str
    message: str
    attribute: str | None = None

    def under(self, prefix: str) -> Problem:
        attribute = f"{prefix}.{self.attribute}" if self.attribute else prefix
        return self._replace(attribute=attribute)


def request_id() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(8))


def error_payload(problem: Problem) -> dict[str, Any]:
    error: dict[str, Any] = {"type": problem.type, "message": problem.message}
    if problem.attribute is not None:
        error["attribute"] = problem.attribute
    error["request_id"] = request_id()
    return {"status": "fail", "error": error}


class MoEngageEmulator(Emulator):
    """`POST /v1/{event,customer,device,transition}/{workspace_id}` and Cohort Sync."""

    name = "moengage"

    def __init__(self, workspace_id: str = "TEST_WORKSPACE",
                 data_api_key: str = "test-data-api-key", *,
                 max_body_bytes: int = 128 * 1024,
                 project_codes: Iterable[str] | None = None,
                 faults: FaultPlan | None = None) -> None:
        self.workspace_id = workspace_id
        self.data_api_key = data_api_key
        self.max_body_bytes = max_body_bytes
        self.project_codes = None if project_codes is None else frozenset(project_codes)
        self._usage_lock = threading.Lock()
        self._usage: dict[str, tuple[int, int]] = {}
        super().__init__(faults=faults)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/integrations/cohortsync", self._cohort_sync, methods=["POST"]),
            Route("/v1/{kind}/{workspace_id}", self._data, methods=["POST"]),
        ]

    def credentials(self) -> dict[str, str]:
        return {"auth": f"Basic {self.workspace_id}:{self.data_api_key}",
                "MOE-APPKEY": self.workspace_id}

    def error_body(self, status: int, raw: bytes) -> Any:
        problems = {429: Problem("RateLimitError", "Rate limit exceeded"),
                    500: Problem("ServerError", "Internal Server Error"),
                    503: Problem("ServiceUnavailable", "Service Unavailable")}
        return error_payload(problems.get(status, Problem("ServerError", "Server Error")))

    # -- endpoints -------------------------------------------------------------------------
    async def _data(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in VALIDATORS:
            return self._fail(request, 404, Problem("NotFound", f"Unknown endpoint /v1/{kind}"))
        problem, status = self._check_auth(request, request.path_params["workspace_id"])
        if problem is None:
            problem, status = self._check_query(request)
        return await self._handle(request, kind, problem, status)

    async def _cohort_sync(self, request: Request) -> Response:
        problem, status = self._check_auth(request, None)
        return await self._handle(request, "cohortsync", problem, status)

    async def _handle(self, request: Request, kind: str, problem: Problem | None,
                      status: int) -> Response:
        raw = await request.body()
        if problem is not None:
            return self._fail(request, status, problem)
        if media_type(request) != "application/json":
            return self._fail(request, 415, Problem("MediaTypeError", "Unsupported Media Type"))
        if len(raw) > self.max_body_bytes:
            limit = f"{self.max_body_bytes // 1024} KB"
            return self._fail(request, 413,
                              Problem("PayloadTooLarge", f"Payload size exceeds {limit}"))
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._fail(request, 400, Problem(
                "Malformed JSON", "Could not decode the request body. The JSON was incorrect "
                "or not encoded as UTF-8."))
        if not isinstance(payload, dict):
            return self._fail(request, 400, Problem(INVALID, "The payload must be a JSON object"),
                              payload)
        problem = VALIDATORS[kind](payload)
        if problem is not None:
            return self._fail(request, 400, problem, payload)
        if kind == "transition":
            return self._accept_elements(request, payload)
        fault, failing = self.failing_records(request, 1)
        if fault is not None and failing:
            return self._fail(request, 400, Problem(
                INVALID, fault.message or "Record rejected", fault.field or "customer_id"),
                payload)
        return self._accept(request, kind, payload, [payload])

    def _accept_elements(self, request: Request, payload: dict[str, Any]) -> Response:
        """Bulk import answers 200 even when elements fail (§1.4); failures are only recorded."""
        elements: list[Any] = payload["elements"]
        _, failing = self.failing_records(request, len(elements))
        kept = [e for i, e in enumerate(elements) if i not in set(failing)]
        return self._accept(request, "transition", payload, kept, failing)

    def _accept(self, request: Request, kind: str, payload: Any, records: list[Any],
                rejected: Iterable[int] = ()) -> Response:
        units = sum(_units(r) for r in records) if kind != "cohortsync" else 1
        body = {"status": "success", "message": SUCCESS_MESSAGE, "request_id": request_id()}
        return self.respond(request, 200, body, body=payload, records=records,
                            rejected=list(rejected), headers=self._rate_headers(kind, units))

    def _fail(self, request: Request, status: int, problem: Problem,
              payload: Any = None) -> Response:
        return self.respond(request, status, error_payload(problem), body=payload)

    # -- checks ----------------------------------------------------------------------------
    def _check_auth(self, request: Request,
                    path_workspace: str | None) -> tuple[Problem | None, int]:
        header = request.headers.get("authorization")
        if not header:
            return Problem(AUTH, "Authentication Header Required"), 401
        auth = parse_basic_auth(header)
        if auth is None:
            return Problem(AUTH, "Invalid authorization used. MoEngage only supports "
                                 "'Basic Auth' authorization."), 401
        if not auth.username:
            return Problem(AUTH, "Username (APP_KEY) is missing in the Basic Auth "
                                 "authorization."), 401
        if not auth.password:
            return Problem(AUTH, "Password (APP_SECRET) is missing in the Basic Auth "
                                 "authorization."), 401
        if auth.username != self.workspace_id or auth.password != self.data_api_key:
            return Problem(AUTH, "App Secret key mismatch. Please login to the dashboard to "
                                 "verify key"), 401
        appkey = request.headers.get("moe-appkey")
        if not appkey:
            return Problem(AUTH, "MOE-APPKEY is missing in Header"), 401
        if appkey != auth.username:
            return Problem(AUTH, "MOE_APPKEY doesn't match the Username (APP_KEY) used in "
                                 "Basic Auth authorization."), 401
        if path_workspace is not None and path_workspace != auth.username:
            return Problem("Authentication Mismatch",
                           "App key mismatch in params and authentication"), 401
        return None, 200

    def _check_query(self, request: Request) -> tuple[Problem | None, int]:
        app_id = request.query_params.get("app_id")
        if app_id is not None and app_id != self.workspace_id:
            return Problem("Authentication Mismatch",
                           "App key mismatch in params and authentication"), 401
        code = request.query_params.get("project_code")
        if code is not None and (not code or (self.project_codes is not None
                                              and code not in self.project_codes)):
            return Problem(INVALID, f"Invalid project_code '{code}'", "project_code"), 400
        return None, 200

    def _rate_headers(self, kind: str, units: int) -> dict[str, str]:
        """x-ratelimit-* for a fixed one-minute window (reset = seconds left in it)."""
        limit = PER_MINUTE_LIMITS[kind]
        now = time.time()
        window = int(now // 60)
        with self._usage_lock:
            start, used = self._usage.get(kind, (window, 0))
            used = (used if start == window else 0) + units
            self._usage[kind] = (window, used)
        return {"x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": str(max(0, limit - used)),
                "x-ratelimit-reset": str(max(1, int((window + 1) * 60 - now)))}


def _units(record: Any) -> int:
    """What a documented limit counts: events per action, one per user or device."""
    if isinstance(record, dict) and record.get("type") == "event":
        return len(record.get("actions") or ())
    return 1


# -- payload validation (pure functions) -----------------------------------------------------
def _missing(attribute: str) -> Problem:
    return Problem(MISSING, f"{attribute} is not found in the payload", attribute)


def _invalid(attribute: str, message: str) -> Problem:
    return Problem(INVALID, message, attribute)


def _check_type(payload: Mapping[str, Any], expected: str) -> Problem | None:
    if "type" not in payload:
        return _missing("type")
    if payload["type"] != expected:
        return _invalid("type", f"type must be '{expected}' (lowercase), got "
                                f"{payload['type']!r}")
    return None


def _check_customer_id(payload: Mapping[str, Any]) -> Problem | None:
    value = payload.get("customer_id")
    if value is None:
        return _missing("customer_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return _invalid("customer_id", "customer_id must be a string")
    text = str(value).strip()
    if not text:
        return Problem(MISSING, "customer_id can not be empty Unicode String", "customer_id")
    if text.lower() in REJECTED_CUSTOMER_IDS:
        return Problem(MISSING, f"customer_id '{value}' is a blacklisted value", "customer_id")
    return None


def _check_object(payload: Mapping[str, Any], key: str, required: bool = False) -> Problem | None:
    if key not in payload:
        return _missing(key) if required else None
    if not isinstance(payload[key], dict):
        return _invalid(key, f"{key} must be an object")
    return None


def _first(*checks: Callable[[], Problem | None]) -> Problem | None:
    for check in checks:
        problem = check()
        if problem is not None:
            return problem
    return None


def validate_customer(payload: Mapping[str, Any]) -> Problem | None:
    def existing_only() -> Problem | None:
        flag = payload.get("update_existing_only", False)
        return None if isinstance(flag, bool) else _invalid(
            "update_existing_only", "update_existing_only must be a boolean")

    return _first(lambda: _check_type(payload, "customer"),
                  lambda: _check_customer_id(payload),
                  lambda: _check_object(payload, "attributes"),
                  existing_only)


def _check_action(action: Any) -> Problem | None:
    if not isinstance(action, dict):
        return _invalid("", "each action must be an object")
    name = action.get("action")
    if name is None:
        return _missing("action")
    if not isinstance(name, str) or not name.strip():
        return _invalid("action", "action must be a non-empty string")
    offset = action.get("user_timezone_offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)
                               or not -54000 <= offset <= 54000):
        return _invalid("user_timezone_offset",
                        "user_timezone_offset must be seconds between -54000 and 54000")
    for key in ("current_time", "user_time"):
        value = action.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            return _invalid(key, f"{key} must be ISO-8601 or epoch seconds")
    return _check_object(action, "attributes")


def validate_event(payload: Mapping[str, Any]) -> Problem | None:
    def actions() -> Problem | None:
        value = payload.get("actions")
        if value is None:
            return _missing("actions")
        if not isinstance(value, list) or not value:
            return _invalid("actions", "actions must be a non-empty list")
        for i, action in enumerate(value):
            problem = _check_action(action)
            if problem is not None:
                return problem.under(f"actions[{i}]")
        return None

    return _first(lambda: _check_type(payload, "event"),
                  lambda: _check_customer_id(payload),
                  actions)


def validate_device(payload: Mapping[str, Any]) -> Problem | None:
    def device_id() -> Problem | None:
        value = payload.get("device_id")
        if value is None:
            return _missing("device_id")
        if not isinstance(value, str) or not value.strip():
            return _invalid("device_id", "device_id must be a non-empty string")
        return None

    def attributes() -> Problem | None:
        problem = _check_object(payload, "attributes", required=True)
        if problem is not None:
            return problem
        for key in ("platform", "push_id"):
            if key not in payload["attributes"]:
                return _missing(f"attributes.{key}")
        return None

    return _first(lambda: _check_type(payload, "device"),
                  lambda: _check_customer_id(payload),
                  device_id,
                  attributes)


ELEMENT_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], Problem | None]] = {
    "customer": validate_customer, "event": validate_event, "device": validate_device,
}


def validate_transition(payload: Mapping[str, Any]) -> Problem | None:
    problem = _check_type(payload, "transition")
    if problem is not None:
        return problem
    elements = payload.get("elements")
    if elements is None:
        return _missing("elements")
    if not isinstance(elements, list) or not elements:
        return _invalid("elements", "elements must be a non-empty list")
    for i, element in enumerate(elements):
        if not isinstance(element, dict):
            return _invalid(f"elements[{i}]", "each element must be an object")
        validator = ELEMENT_VALIDATORS.get(str(element.get("type")))
        if validator is None:
            return _invalid(f"elements[{i}].type",
                            "element type must be one of 'customer', 'event', 'device'")
        problem = validator(element)
        if problem is not None:
            return problem.under(f"elements[{i}]")
    return None


def validate_cohort_sync(payload: Mapping[str, Any]) -> Problem | None:
    action = payload.get("action")
    if action is None:
        return _missing("action")
    if action not in ("add_members", "remove_members"):
        return _invalid("action", "action must be 'add_members' or 'remove_members'")
    partner = payload.get("partner")
    if partner is None:
        return _missing("partner")
    if not isinstance(partner, str) or not partner.strip():
        return _invalid("partner", "partner must be a non-empty string")
    problem = _check_object(payload, "parameters", required=True)
    if problem is not None:
        return problem
    return _check_cohort_parameters(payload["parameters"])


def _check_cohort_parameters(params: Mapping[str, Any]) -> Problem | None:
    for key in ("cohort_name", "cohort_id"):
        value = params.get(key)
        if value is None:
            return _missing(f"parameters.{key}")
        if not isinstance(value, str) or not value.strip():
            return _invalid(f"parameters.{key}", f"{key} must be a non-empty string")
    name: str = params["cohort_name"]
    if name.startswith(".") or any(c in COHORT_NAME_FORBIDDEN for c in name):
        return _invalid("parameters.cohort_name",
                        "cohort_name must not start with '.' or contain any of "
                        + " ".join(COHORT_NAME_FORBIDDEN))
    description = params.get("cohort_description")
    if description is not None and not isinstance(description, str):
        return _invalid("parameters.cohort_description", "cohort_description must be a string")
    members = params.get("members")
    if members is None:
        return _missing("parameters.members")
    if not isinstance(members, list):
        return _invalid("parameters.members", "members must be a list")
    for i, member in enumerate(members):
        uid = member.get("uid") if isinstance(member, dict) else None
        if not isinstance(uid, str) or not uid.strip():
            return _invalid(f"parameters.members[{i}].uid",
                            "each member must be an object with a non-empty string uid")
    return None


VALIDATORS: dict[str, Callable[[Mapping[str, Any]], Problem | None]] = {
    **ELEMENT_VALIDATORS, "transition": validate_transition, "cohortsync": validate_cohort_sync,
}
