"""MoEngage Data API / Cohort Sync emulator over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import Fault, MoEngageEmulator, serve

WS = "WS_TEST_01"
KEY = "data-api-key-1"
GOOD_HEADERS = {"MOE-APPKEY": WS}
EVENT: dict[str, Any] = {"type": "event", "customer_id": "user-123",
         "actions": [{"action": "Flight Booked", "attributes": {"price": 3999},
                      "platform": "iOS", "current_time": 1433837969,
                      "user_timezone_offset": 19800}]}
CUSTOMER: dict[str, Any] = {"type": "customer", "customer_id": "user-123",
            "attributes": {"first_name": "John", "email": "j@x.com"}}
DEVICE: dict[str, Any] = {"type": "device", "customer_id": "user-123", "device_id": "D1",
          "attributes": {"platform": "ANDROID", "push_id": "tok"}}
COHORT: dict[str, Any] = {"action": "add_members", "partner": "amplitude",
          "parameters": {"cohort_name": "Power Users", "cohort_id": "JKTAuqTRhC",
                         "cohort_description": "d", "members": [{"uid": "mm1UR87z4T"}]}}


@pytest.fixture(scope="module")
def emu() -> MoEngageEmulator:
    return MoEngageEmulator(WS, KEY, project_codes=["P1"])


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5.0, auth=(WS, KEY), headers=GOOD_HEADERS) as c:
        yield c


def fail_body(response: httpx.Response) -> dict[str, Any]:
    """The error body with its random request_id checked and removed."""
    body: dict[str, Any] = response.json()
    assert body["status"] == "fail"
    assert re.fullmatch(r"[A-Za-z]{8}", body["error"].pop("request_id"))
    return body


def error(type_: str, message: str, attribute: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"type": type_, "message": message}
    if attribute is not None:
        err["attribute"] = attribute
    return {"status": "fail", "error": err}


def missing(attribute: str) -> dict[str, Any]:
    return error("MissingAttributeError", f"{attribute} is not found in the payload", attribute)


# -- success ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "payload"), [("event", EVENT), ("customer", CUSTOMER),
                                               ("device", DEVICE)])
def test_accepts_valid_payloads(client: httpx.Client, emu: MoEngageEmulator, kind: str,
                                payload: dict[str, Any]) -> None:
    response = client.post(f"/v1/{kind}/{WS}", json=payload)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Your request has been accepted and will be processed soon."
    assert re.fullmatch(r"[A-Za-z]{8}", body["request_id"])
    [received] = emu.received
    assert (received.method, received.path, received.status) == ("POST", f"/v1/{kind}/{WS}", 200)
    assert received.body == payload
    assert received.records == (payload,)
    assert received.headers["moe-appkey"] == WS
    assert received.accepted


def test_rate_limit_headers_count_events(client: httpx.Client) -> None:
    first = client.post(f"/v1/event/{WS}", json=EVENT)
    two_actions = dict(EVENT, actions=EVENT["actions"] * 2)
    second = client.post(f"/v1/event/{WS}", json=two_actions)
    assert first.headers["x-ratelimit-limit"] == "30000"
    remaining = int(first.headers["x-ratelimit-remaining"])
    assert int(second.headers["x-ratelimit-remaining"]) in (remaining - 2, 29998)
    assert 1 <= int(second.headers["x-ratelimit-reset"]) <= 60


def test_transition_records_each_element(client: httpx.Client, emu: MoEngageEmulator) -> None:
    payload = {"type": "transition", "elements": [CUSTOMER, EVENT, DEVICE]}
    response = client.post(f"/v1/transition/{WS}", json=payload)
    assert response.status_code == 200
    assert emu.records() == [CUSTOMER, EVENT, DEVICE]


def test_portfolio_query_parameters(client: httpx.Client, emu: MoEngageEmulator) -> None:
    ok = client.post(f"/v1/event/{WS}", params={"app_id": WS, "project_code": "P1"}, json=EVENT)
    assert ok.status_code == 200
    assert emu.received[0].query == {"app_id": WS, "project_code": "P1"}
    bad_project = client.post(f"/v1/event/{WS}", params={"project_code": "P9"}, json=EVENT)
    assert bad_project.status_code == 400
    assert fail_body(bad_project) == error("InvalidAttributeError", "Invalid project_code 'P9'",
                                           "project_code")
    bad_app = client.post(f"/v1/event/{WS}", params={"app_id": "OTHER"}, json=EVENT)
    assert bad_app.status_code == 401
    assert fail_body(bad_app) == error("Authentication Mismatch",
                                       "App key mismatch in params and authentication")


# -- authentication --------------------------------------------------------------------------
MISMATCH = "App Secret key mismatch. Please login to the dashboard to verify key"
AUTH_CASES = [
    ({"auth": None}, "Authentication Header Required"),
    ({"auth": (WS, "wrong")}, MISMATCH),
    ({"auth": ("OTHER", KEY)}, MISMATCH),
    ({"auth": (WS, "")}, "Password (APP_SECRET) is missing in the Basic Auth authorization."),
    ({"auth": ("", KEY)}, "Username (APP_KEY) is missing in the Basic Auth authorization."),
    ({"auth": None, "headers": {"Authorization": "Bearer abc"}},
     "Invalid authorization used. MoEngage only supports 'Basic Auth' authorization."),
    ({"headers": {"MOE-APPKEY": ""}}, "MOE-APPKEY is missing in Header"),
    ({"headers": {"MOE-APPKEY": "OTHER"}},
     "MOE_APPKEY doesn't match the Username (APP_KEY) used in Basic Auth authorization."),
]


@pytest.mark.parametrize(("overrides", "message"), AUTH_CASES)
def test_auth_failures_answer_401(url: str, emu: MoEngageEmulator, overrides: dict[str, Any],
                                  message: str) -> None:
    kwargs: dict[str, Any] = {"auth": (WS, KEY), "headers": dict(GOOD_HEADERS)}
    kwargs["headers"].update(overrides.get("headers", {}))
    if "auth" in overrides:
        kwargs["auth"] = overrides["auth"]
    if kwargs["headers"].get("MOE-APPKEY") == "":
        del kwargs["headers"]["MOE-APPKEY"]
    with httpx.Client(base_url=url, timeout=5.0, **kwargs) as c:
        response = c.post(f"/v1/event/{WS}", json=EVENT)
    assert response.status_code == 401
    assert fail_body(response) == error("Authentication required", message)
    assert not emu.records()
    assert [r.status for r in emu.received] == [401]


def test_path_workspace_must_match(client: httpx.Client) -> None:
    response = client.post("/v1/event/OTHER_WS", json=EVENT)
    assert response.status_code == 401
    assert fail_body(response) == error("Authentication Mismatch",
                                        "App key mismatch in params and authentication")


# -- transport-level validation --------------------------------------------------------------
def test_content_type_must_be_json(client: httpx.Client) -> None:
    response = client.post(f"/v1/event/{WS}", content=orjson.dumps(EVENT),
                           headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert fail_body(response) == error("MediaTypeError", "Unsupported Media Type")


def _padded(size: int) -> bytes:
    """A valid customer payload of exactly `size` bytes."""
    base = orjson.dumps(dict(CUSTOMER, attributes={"pad": ""}))
    return orjson.dumps(dict(CUSTOMER, attributes={"pad": "x" * (size - len(base))}))


def test_body_limit_is_128_kb(client: httpx.Client) -> None:
    at_limit = _padded(128 * 1024)
    assert len(at_limit) == 128 * 1024
    headers = {"Content-Type": "application/json"}
    assert client.post(f"/v1/customer/{WS}", content=at_limit, headers=headers).status_code == 200
    over = client.post(f"/v1/customer/{WS}", content=_padded(128 * 1024 + 1), headers=headers)
    assert over.status_code == 413
    assert fail_body(over) == error("PayloadTooLarge", "Payload size exceeds 128 KB")


def test_body_limit_is_configurable(url: str) -> None:
    small = MoEngageEmulator(WS, KEY, max_body_bytes=1024)
    with serve(small) as base, httpx.Client(base_url=base, auth=(WS, KEY),
                                            headers=GOOD_HEADERS) as c:
        response = c.post(f"/v1/customer/{WS}", content=_padded(1025),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert fail_body(response) == error("PayloadTooLarge", "Payload size exceeds 1 KB")


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post(f"/v1/event/{WS}", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert fail_body(response) == error(
        "Malformed JSON",
        "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8.")


def test_unknown_endpoint(client: httpx.Client) -> None:
    assert client.post(f"/v1/events/{WS}", json=EVENT).status_code == 404


# -- payload validation ----------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "expected"), [
    ({k: v for k, v in EVENT.items() if k != "type"}, missing("type")),
    (dict(EVENT, type="Event"),
     error("InvalidAttributeError", "type must be 'event' (lowercase), got 'Event'", "type")),
    (dict(EVENT, type="customer"),
     error("InvalidAttributeError", "type must be 'event' (lowercase), got 'customer'", "type")),
    ({k: v for k, v in EVENT.items() if k != "customer_id"}, missing("customer_id")),
    (dict(EVENT, customer_id=""),
     error("MissingAttributeError", "customer_id can not be empty Unicode String",
           "customer_id")),
    (dict(EVENT, customer_id=["a"]),
     error("InvalidAttributeError", "customer_id must be a string", "customer_id")),
    ({k: v for k, v in EVENT.items() if k != "actions"}, missing("actions")),
    (dict(EVENT, actions=[]),
     error("InvalidAttributeError", "actions must be a non-empty list", "actions")),
    (dict(EVENT, actions={"action": "x"}),
     error("InvalidAttributeError", "actions must be a non-empty list", "actions")),
    (dict(EVENT, actions=[{"action": "ok"}, "x"]),
     error("InvalidAttributeError", "each action must be an object", "actions[1]")),
    (dict(EVENT, actions=[{"attributes": {}}]),
     error("MissingAttributeError", "action is not found in the payload", "actions[0].action")),
    (dict(EVENT, actions=[{"action": 5}]),
     error("InvalidAttributeError", "action must be a non-empty string", "actions[0].action")),
    (dict(EVENT, actions=[{"action": "x", "attributes": []}]),
     error("InvalidAttributeError", "attributes must be an object", "actions[0].attributes")),
    (dict(EVENT, actions=[{"action": "x", "user_timezone_offset": 60000}]),
     error("InvalidAttributeError",
           "user_timezone_offset must be seconds between -54000 and 54000",
           "actions[0].user_timezone_offset")),
])
def test_event_validation(client: httpx.Client, emu: MoEngageEmulator, payload: dict[str, Any],
                          expected: dict[str, Any]) -> None:
    response = client.post(f"/v1/event/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected
    [received] = emu.received
    assert (received.status, received.body, received.records) == (400, payload, ())
    assert not received.accepted


@pytest.mark.parametrize("customer_id", ["unknown", "guest", "NULL", "0", "-1", "true", "n/a",
                                         "(empty)", "dummy_seller_code", " None ", 1])
def test_rejected_customer_ids(client: httpx.Client, customer_id: Any) -> None:
    response = client.post(f"/v1/customer/{WS}", json=dict(CUSTOMER, customer_id=customer_id))
    assert response.status_code == 400
    assert fail_body(response) == error(
        "MissingAttributeError", f"customer_id '{customer_id}' is a blacklisted value",
        "customer_id")


def test_numeric_customer_id_is_accepted(client: httpx.Client) -> None:
    assert client.post(f"/v1/customer/{WS}", json=dict(CUSTOMER, customer_id=98765)
                       ).status_code == 200


@pytest.mark.parametrize(("payload", "expected"), [
    (dict(CUSTOMER, attributes=[1]),
     error("InvalidAttributeError", "attributes must be an object", "attributes")),
    (dict(CUSTOMER, update_existing_only="yes"),
     error("InvalidAttributeError", "update_existing_only must be a boolean",
           "update_existing_only")),
])
def test_customer_validation(client: httpx.Client, payload: dict[str, Any],
                             expected: dict[str, Any]) -> None:
    response = client.post(f"/v1/customer/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected


@pytest.mark.parametrize(("payload", "expected"), [
    ({k: v for k, v in DEVICE.items() if k != "device_id"}, missing("device_id")),
    ({k: v for k, v in DEVICE.items() if k != "attributes"}, missing("attributes")),
    (dict(DEVICE, attributes={"platform": "iOS"}), missing("attributes.push_id")),
])
def test_device_validation(client: httpx.Client, payload: dict[str, Any],
                           expected: dict[str, Any]) -> None:
    response = client.post(f"/v1/device/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected


@pytest.mark.parametrize(("elements", "expected"), [
    ([], error("InvalidAttributeError", "elements must be a non-empty list", "elements")),
    ([CUSTOMER, dict(EVENT, customer_id="guest")],
     error("MissingAttributeError", "customer_id 'guest' is a blacklisted value",
           "elements[1].customer_id")),
    ([dict(EVENT, actions=[{}])], error("MissingAttributeError",
                                        "action is not found in the payload",
                                        "elements[0].actions[0].action")),
    ([dict(CUSTOMER, type="transition")],
     error("InvalidAttributeError", "element type must be one of 'customer', 'event', 'device'",
           "elements[0].type")),
    ([dict(CUSTOMER, type="Customer")],
     error("InvalidAttributeError", "element type must be one of 'customer', 'event', 'device'",
           "elements[0].type")),
])
def test_transition_validates_each_element(client: httpx.Client, elements: list[Any],
                                           expected: dict[str, Any]) -> None:
    response = client.post(f"/v1/transition/{WS}",
                           json={"type": "transition", "elements": elements})
    assert response.status_code == 400
    assert fail_body(response) == expected


# -- Cohort Sync -----------------------------------------------------------------------------
def test_cohort_sync_accepts(client: httpx.Client, emu: MoEngageEmulator) -> None:
    response = client.post("/v1/integrations/cohortsync", json=COHORT)
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    assert response.headers["x-ratelimit-limit"] == "300"
    assert emu.records("/v1/integrations") == [COHORT]


def _cohort(**parameters: Any) -> dict[str, Any]:
    return dict(COHORT, parameters=dict(COHORT["parameters"], **parameters))


NAME_RULE = ("cohort_name must not start with '.' or contain any of "
             "| * ? \\ : < > = $ \"")


@pytest.mark.parametrize(("payload", "expected"), [
    ({k: v for k, v in COHORT.items() if k != "action"}, missing("action")),
    (dict(COHORT, action="members"), error(
        "InvalidAttributeError", "action must be 'add_members' or 'remove_members'", "action")),
    ({k: v for k, v in COHORT.items() if k != "partner"}, missing("partner")),
    ({k: v for k, v in COHORT.items() if k != "parameters"}, missing("parameters")),
    (_cohort(cohort_name=".hidden"),
     error("InvalidAttributeError", NAME_RULE, "parameters.cohort_name")),
    (_cohort(cohort_name="a|b"), error("InvalidAttributeError", NAME_RULE,
                                       "parameters.cohort_name")),
    (_cohort(cohort_name='say "hi"'), error("InvalidAttributeError", NAME_RULE,
                                            "parameters.cohort_name")),
    (_cohort(cohort_name="cost$"), error("InvalidAttributeError", NAME_RULE,
                                         "parameters.cohort_name")),
    (_cohort(cohort_name="a\\b"), error("InvalidAttributeError", NAME_RULE,
                                        "parameters.cohort_name")),
    (_cohort(cohort_id=""), error("InvalidAttributeError", "cohort_id must be a non-empty string",
                                  "parameters.cohort_id")),
    (_cohort(members=[{"uid": "a"}, {"id": "b"}]), error(
        "InvalidAttributeError", "each member must be an object with a non-empty string uid",
        "parameters.members[1].uid")),
    (_cohort(members="a"), error("InvalidAttributeError", "members must be a list",
                                 "parameters.members")),
])
def test_cohort_sync_validation(client: httpx.Client, payload: dict[str, Any],
                                expected: dict[str, Any]) -> None:
    response = client.post("/v1/integrations/cohortsync", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected


def test_cohort_names_with_dots_inside_are_fine(client: httpx.Client) -> None:
    response = client.post("/v1/integrations/cohortsync",
                           json=_cohort(cohort_name="[Amplitude][v1.2 Users]"))
    assert response.status_code == 200


def test_cohort_sync_requires_appkey(url: str) -> None:
    with httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        response = c.post("/v1/integrations/cohortsync", json=COHORT)
    assert response.status_code == 401
    assert fail_body(response) == error("Authentication required",
                                        "MOE-APPKEY is missing in Header")


# -- faults specific to MoEngage -------------------------------------------------------------
def test_bulk_record_fault_is_silent_like_the_real_api(client: httpx.Client,
                                                       emu: MoEngageEmulator) -> None:
    emu.faults.push(Fault("record_400", indices=(1,)))
    payload = {"type": "transition", "elements": [CUSTOMER, EVENT, DEVICE]}
    response = client.post(f"/v1/transition/{WS}", json=payload)
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    [received] = emu.received
    assert received.rejected == (1,)
    assert emu.records() == [CUSTOMER, DEVICE]


def test_record_fault_on_single_endpoint_answers_400(client: httpx.Client,
                                                     emu: MoEngageEmulator) -> None:
    emu.faults.push(Fault("record_400", indices=(0,), field="actions", message="bad action"))
    response = client.post(f"/v1/event/{WS}", json=EVENT)
    assert response.status_code == 400
    assert fail_body(response) == error("InvalidAttributeError", "bad action", "actions")
    assert emu.records() == []


def test_injected_errors_use_moengage_bodies(client: httpx.Client, emu: MoEngageEmulator) -> None:
    emu.faults.push("429").push("500").push("503")
    statuses = [client.post(f"/v1/event/{WS}", json=EVENT) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 500, 503]
    assert fail_body(statuses[0]) == error("RateLimitError", "Rate limit exceeded")
    assert fail_body(statuses[1]) == error("ServerError", "Internal Server Error")
    assert fail_body(statuses[2]) == error("ServiceUnavailable", "Service Unavailable")
    assert statuses[0].headers["retry-after"] == "1"
    assert emu.received == []
