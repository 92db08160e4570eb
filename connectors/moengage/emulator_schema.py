"""What the MoEngage Data API and Cohort Sync check in a payload (pure functions).

Messages and error types are the ones the published OpenAPI documents give as examples
(specs/moengage-data-api.yaml, specs/moengage-cohort-sync-api.yaml); where the spec has
none, the message is the emulator's own and says so in a comment. Some spec examples
start with a stray apostrophe ("'elements cannot be empty array"); it is left out here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

MISSING = "MissingAttributeError"
INVALID = "InvalidAttributeError"  # the emulator's own type where the spec shows none
MALFORMED = "Malformed JSON"
MALFORMED_MESSAGE = (
    "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8."
)
# partner-apis.md §1.4 [M3]: values customer_id must not take.
REJECTED_CUSTOMER_IDS = frozenset(
    {
        "unknown",
        "guest",
        "null",
        "0",
        "1",
        "2",
        "-1",
        "-2",
        "true",
        "false",
        "id",
        "uid",
        "user_id",
        "userid",
        "customer_id",
        "none",
        "na",
        "n/a",
        "(empty)",
        "dummy_seller_code",
        "user_attribute_unique_id",
    }
)
# §1.4 [M2]: ANDROID, iOS, web, TV, unknown; the spec's own examples write "Android", so
# the check ignores case.
PLATFORMS = frozenset({"android", "ios", "web", "tv", "unknown"})
# cohort-sync-api.yaml, CohortParameters.cohort_name.
COHORT_NAME_FORBIDDEN = '|*?\\:<>=$"'
TIMEZONE_OFFSET_LIMIT = 54_000  # §1.4 [M2]: seconds, within ±54000


class Problem(NamedTuple):
    """Why a payload is refused: MoEngage's error `type`, `message` and `attribute`."""

    type: str
    message: str
    attribute: str | None = None


Check = Callable[[Mapping[str, Any]], Problem | None]


def _missing(attribute: str, message: str | None = None) -> Problem:
    return Problem(MISSING, message or f"{attribute} is not found in the payload", attribute)


def _invalid(attribute: str, message: str) -> Problem:
    return Problem(INVALID, message, attribute)


def _first(*checks: Callable[[], Problem | None]) -> Problem | None:
    for check in checks:
        problem = check()
        if problem is not None:
            return problem
    return None


def _check_type(payload: Mapping[str, Any], expected: str) -> Problem | None:
    # §1.4 [M3]: the type is case-sensitive and lowercase.
    if "type" not in payload:
        return _missing("type")
    if payload["type"] != expected:
        return _invalid(
            "type", f"type must be '{expected}' (lowercase), got {str(payload['type'])[:100]!r}"
        )
    return None


def check_customer_id(payload: Mapping[str, Any], quoted: bool = False) -> Problem | None:
    value = payload.get("customer_id")
    name = "'customer_id'" if quoted else "customer_id"  # the device spec quotes its names
    if value is None:
        return _missing("customer_id", f"{name} is not found in the payload")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return _invalid("customer_id", "customer_id must be a string")
    text = str(value).strip()
    if not text:
        return _missing("customer_id", "customer_id can not be empty Unicode String")
    if text.lower() in REJECTED_CUSTOMER_IDS:
        # The spec's 400 lists "blacklisted" without an example body; the message is ours.
        return _missing("customer_id", f"customer_id '{text[:100]}' is a blacklisted value")
    return None


def _check_object(
    payload: Mapping[str, Any], key: str, required: bool = False, quoted: bool = False
) -> Problem | None:
    if key not in payload:
        if not required:
            return None
        return _missing(key, f"'{key}' is not found in the payload" if quoted else None)
    if not isinstance(payload[key], dict):
        return _invalid(key, f"{key} must be an object")
    return None


def validate_customer(payload: Mapping[str, Any]) -> Problem | None:
    def existing_only() -> Problem | None:
        flag = payload.get("update_existing_only", False)
        return (
            None
            if isinstance(flag, bool)
            else _invalid("update_existing_only", "update_existing_only must be a boolean")
        )

    def array_fields() -> Problem | None:
        attributes = payload.get("attributes") or {}
        added = attributes.get("addValueToArrayField")
        removed = attributes.get("removeValueFromArrayField")
        if isinstance(added, dict) and isinstance(removed, dict):
            for key in added:
                if key in removed:
                    return Problem(
                        "ArrayFieldError",
                        f"Cannot add and remove '{key}' at the same time",
                        "addValueToArrayField",
                    )
        return None

    return _first(
        lambda: _check_type(payload, "customer"),
        lambda: check_customer_id(payload),
        lambda: _check_object(payload, "attributes"),
        existing_only,
        array_fields,
    )


def _check_action(action: Any) -> Problem | None:
    if not isinstance(action, dict):
        return Problem(MALFORMED, MALFORMED_MESSAGE, "actions")
    if "action" not in action:
        return _missing("action")
    name = action["action"]
    if not isinstance(name, str):  # the spec answers this one as malformed JSON
        return Problem(MALFORMED, MALFORMED_MESSAGE, "action")
    if not name.strip():
        return _missing("action", "action cannot be empty Unicode string")
    offset = action.get("user_timezone_offset")
    if offset is not None and (
        isinstance(offset, bool)
        or not isinstance(offset, int)
        or not -TIMEZONE_OFFSET_LIMIT <= offset <= TIMEZONE_OFFSET_LIMIT
    ):
        return _invalid(
            "user_timezone_offset", "user_timezone_offset must be seconds between -54000 and 54000"
        )
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
        if not isinstance(value, list):
            return _invalid("actions", "actions must be a list")
        if not value:
            return _missing("actions", "actions can not be empty Array")
        for action in value:
            problem = _check_action(action)
            if problem is not None:
                return problem
        return None

    return _first(
        lambda: _check_type(payload, "event"), lambda: check_customer_id(payload), actions
    )


def validate_device(payload: Mapping[str, Any]) -> Problem | None:
    def device_id() -> Problem | None:
        value = payload.get("device_id")
        if value is None:
            return _missing("device_id", "'device_id' is not found in the payload")
        if not isinstance(value, str) or not value.strip():
            return _invalid("device_id", "device_id must be a non-empty string")
        return None

    def attributes() -> Problem | None:
        problem = _check_object(payload, "attributes", required=True, quoted=True)
        if problem is not None:
            return problem
        attrs = payload["attributes"]
        if "platform" not in attrs:
            return _missing("platform", "'platform' is not found in payload")
        if not isinstance(attrs["platform"], str) or attrs["platform"].lower() not in PLATFORMS:
            return Problem("ValueError", "'platform' is not a valid platform.", "platform")
        if "push_id" not in attrs:
            return _missing("push_id", "'push_id' is not found in payload")
        return None

    return _first(
        lambda: _check_type(payload, "device"),
        lambda: check_customer_id(payload, quoted=True),
        device_id,
        attributes,
    )


ELEMENT_VALIDATORS: dict[str, Check] = {
    "customer": validate_customer,
    "event": validate_event,
    "device": validate_device,
}


def validate_transition(payload: Mapping[str, Any]) -> Problem | None:
    problem = _check_type(payload, "transition")
    if problem is not None:
        return problem
    elements = payload.get("elements")
    if elements is None:
        return _missing("elements")
    if not isinstance(elements, list):
        return _invalid("elements", "elements must be a list")
    if not elements:
        return _missing("elements", "elements cannot be empty array")
    for element in elements:
        if not isinstance(element, dict):
            return Problem(MALFORMED, MALFORMED_MESSAGE)
        validator = ELEMENT_VALIDATORS.get(str(element.get("type")))
        if validator is None:
            return Problem(
                "AttributeError", "type in elements should be customer/event/device", "type"
            )
        problem = validator(element)
        if problem is not None:
            if problem.message == "customer_id is not found in the payload":
                return problem._replace(message="customer_id not found in the payload")
            return problem
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
            return _missing(key)
        if not isinstance(value, str) or not value.strip():
            return _invalid(key, f"{key} must be a non-empty string")
    name: str = params["cohort_name"]
    if name.startswith(".") or any(c in COHORT_NAME_FORBIDDEN for c in name):
        return _invalid(
            "cohort_name",
            "cohort_name must not start with '.' or contain any of "
            + " ".join(COHORT_NAME_FORBIDDEN),
        )
    description = params.get("cohort_description")
    if description is not None and not isinstance(description, str):
        return _invalid("cohort_description", "cohort_description must be a string")
    members = params.get("members")
    if members is None:
        return _missing("members")
    if not isinstance(members, list):
        return _invalid("members", "members must be a list")
    for member in members:
        uid = member.get("uid") if isinstance(member, dict) else None
        if not isinstance(uid, str) or not uid.strip():
            return _missing("uid", "uid is not found in the payload")
    return None


VALIDATORS: dict[str, Check] = {
    **ELEMENT_VALIDATORS,
    "transition": validate_transition,
    "cohortsync": validate_cohort_sync,
}


# -- what is accepted but never ingested ------------------------------------------------------
def event_time(value: Any) -> float | None:
    """Epoch seconds of a `current_time`: ISO-8601 or epoch seconds (§1.4 [M2]); 13-digit
    values are read as milliseconds, like the spec's own examples. None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        if len(value) > 20:  # no epoch value is this long; int() of 5,000 digits refuses
            return None
        value = int(value)
    if isinstance(value, int):
        if abs(value) >= 10**18:
            return None
        return value / 1000 if abs(value) >= 10**12 else float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo is not None else None
    return None


def ingestible_actions(
    element: Mapping[str, Any], tolerance: float, now: float | None = None
) -> tuple[list[Any], list[str]]:
    """Split an event element's actions into those MoEngage ingests and the reasons for the
    ones it drops: "MoEngage does not accept any future dated events" (§1.4 [M2])."""
    limit = (time.time() if now is None else now) + tolerance
    kept: list[Any] = []
    dropped: list[str] = []
    for i, action in enumerate(element.get("actions") or []):
        stamp = event_time(action.get("current_time"))
        if stamp is not None and stamp > limit:
            dropped.append(
                f"actions[{i}] is future-dated (current_time "
                f"{str(action.get('current_time'))[:40]})"
            )
        else:
            kept.append(action)
    return kept, dropped
