"""MoEngage Data API / Cohort Sync emulator over real HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import Fault, MoEngageEmulator, serve
from moerules.connectors.moengage.emulator import UNLIMITED, MoEngageLimits

from tests.connectors.emulation.rawhttp import basic, chunks, exchange, head

WS = "WS_TEST_01"
KEY = "data-api-key-1"
GOOD_HEADERS = {"MOE-APPKEY": WS}
EVENT: dict[str, Any] = {
    "type": "event",
    "customer_id": "user-123",
    "actions": [
        {
            "action": "Flight Booked",
            "attributes": {"price": 3999},
            "platform": "iOS",
            "current_time": 1433837969,
            "user_timezone_offset": 19800,
        }
    ],
}
CUSTOMER: dict[str, Any] = {
    "type": "customer",
    "customer_id": "user-123",
    "attributes": {"first_name": "John", "email": "j@x.com"},
}
DEVICE: dict[str, Any] = {
    "type": "device",
    "customer_id": "user-123",
    "device_id": "D1",
    "attributes": {"platform": "ANDROID", "push_id": "tok"},
}
COHORT: dict[str, Any] = {
    "action": "add_members",
    "partner": "amplitude",
    "parameters": {
        "cohort_name": "Power Users",
        "cohort_id": "JKTAuqTRhC",
        "cohort_description": "d",
        "members": [{"uid": "mm1UR87z4T"}],
    },
}
JSON = {"Content-Type": "application/json"}
AUTH_HEADERS = {"Authorization": basic(WS, KEY), "MOE-APPKEY": WS}


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


def missing(attribute: str, message: str | None = None) -> dict[str, Any]:
    return error(
        "MissingAttributeError", message or f"{attribute} is not found in the payload", attribute
    )


def transition(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "transition", "elements": list(elements)}


def customer(cid: str) -> dict[str, Any]:
    return dict(CUSTOMER, customer_id=cid)


# -- success ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "payload"), [("event", EVENT), ("customer", CUSTOMER), ("device", DEVICE)]
)
def test_accepts_valid_payloads(
    client: httpx.Client, emu: MoEngageEmulator, kind: str, payload: dict[str, Any]
) -> None:
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


def test_data_api_does_not_require_moe_appkey(url: str, emu: MoEngageEmulator) -> None:
    """Current docs require MOE-APPKEY only for file import, test connection and Cohort
    Sync (§1.2 [M1]); the track endpoints accept a request without it."""
    response = httpx.post(f"{url}/v1/event/{WS}", json=EVENT, auth=(WS, KEY))
    assert response.status_code == 200
    assert emu.records() == [EVENT]


def test_rate_limit_headers_count_events(client: httpx.Client) -> None:
    first = client.post(f"/v1/event/{WS}", json=EVENT)
    two_actions = dict(EVENT, actions=EVENT["actions"] * 2)
    second = client.post(f"/v1/event/{WS}", json=two_actions)
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == (
        "30000",
        "29999",
    )
    assert second.headers["x-ratelimit-remaining"] == "29997"
    assert 1 <= int(second.headers["x-ratelimit-reset"]) <= 60


def test_transition_records_each_element(client: httpx.Client, emu: MoEngageEmulator) -> None:
    response = client.post(f"/v1/transition/{WS}", json=transition(CUSTOMER, EVENT, DEVICE))
    assert response.status_code == 200
    assert emu.records() == [CUSTOMER, EVENT, DEVICE]


def test_portfolio_query_parameters(client: httpx.Client, emu: MoEngageEmulator) -> None:
    ok = client.post(f"/v1/event/{WS}", params={"app_id": WS, "project_code": "P1"}, json=EVENT)
    assert ok.status_code == 200
    assert emu.received[0].query == {"app_id": WS, "project_code": "P1"}
    bad_project = client.post(f"/v1/event/{WS}", params={"project_code": "P9"}, json=EVENT)
    assert bad_project.status_code == 400
    assert fail_body(bad_project) == error(
        "InvalidAttributeError", "Invalid project_code 'P9'", "project_code"
    )
    bad_app = client.post(f"/v1/event/{WS}", params={"app_id": "OTHER"}, json=EVENT)
    assert bad_app.status_code == 401
    assert fail_body(bad_app) == error(
        "Authentication Mismatch", "App key mismatch in params and authentication"
    )


def test_future_dated_events_are_accepted_but_not_ingested(
    client: httpx.Client, emu: MoEngageEmulator
) -> None:
    """ "MoEngage does not accept any future dated events" (§1.4 [M2]); the API is
    asynchronous, so the request still answers 200."""
    future = {"action": "Later", "current_time": int(time.time()) + 3600}
    future_ms = {"action": "Later ms", "current_time": str((int(time.time()) + 3600) * 1000)}
    past = {"action": "Earlier", "current_time": "2024-01-02T03:04:05Z"}
    mixed = dict(EVENT, actions=[past, future])
    only_future = dict(EVENT, customer_id="u-2", actions=[future_ms])
    response = client.post(f"/v1/transition/{WS}", json=transition(mixed, only_future))
    assert response.status_code == 200
    [received] = emu.received
    assert received.records == (dict(EVENT, actions=[past]),)
    assert received.rejected == (0, 1)
    assert received.reasons[0].startswith("actions[1] is future-dated (current_time ")
    assert received.reasons[1].startswith("actions[0] is future-dated (current_time ")


# -- data centres ----------------------------------------------------------------------------
def test_another_data_centres_host_does_not_know_the_workspace(
    url: str, emu: MoEngageEmulator
) -> None:
    body = orjson.dumps(EVENT)
    headers = {**AUTH_HEADERS, **JSON, "Content-Length": str(len(body))}
    other = exchange(
        url,
        head("POST", f"/v1/event/{WS}", headers).replace(
            b"Host: 127.0.0.1", b"Host: api-02.moengage.com"
        )
        + body,
    )
    assert other.status == 401
    own = exchange(
        url,
        head("POST", f"/v1/event/{WS}", headers).replace(
            b"Host: 127.0.0.1", b"Host: api-01.moengage.com:443"
        )
        + body,
    )
    assert own.status == 200
    assert [r.status for r in emu.received] == [401, 200]


def test_data_centre_must_exist() -> None:
    with pytest.raises(ValueError, match="data_center must be one of 01, 02, 03, 04, 05, 06, 101"):
        MoEngageEmulator(data_center="07")
    assert MoEngageEmulator(data_center="101").credentials()["data_center"] == (
        "101 (api-101.moengage.com)"
    )


# -- authentication --------------------------------------------------------------------------
MISMATCH = "App Secret key mismatch. Please login to the dashboard to verify key"
AUTH_CASES = [
    ({"auth": None}, "Authentication Header Required"),
    ({"auth": (WS, "wrong")}, MISMATCH),
    ({"auth": ("OTHER", KEY)}, MISMATCH),
    ({"auth": (WS, "")}, "Password (APP_SECRET) is missing in the Basic Auth authorization."),
    ({"auth": ("", KEY)}, "Username (APP_KEY) is missing in the Basic Auth authorization."),
    (
        {"auth": None, "headers": {"Authorization": "Bearer abc"}},
        "Invalid authorization used. MoEngage only supports 'Basic Auth' authorization.",
    ),
    (
        {"headers": {"MOE-APPKEY": "OTHER"}},
        "MOE_APPKEY doesn't match the Username (APP_KEY) used in Basic Auth authorization.",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), AUTH_CASES)
def test_auth_failures_answer_401(
    url: str, emu: MoEngageEmulator, overrides: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"auth": (WS, KEY), "headers": dict(GOOD_HEADERS)}
    kwargs["headers"].update(overrides.get("headers", {}))
    if "auth" in overrides:
        kwargs["auth"] = overrides["auth"]
    with httpx.Client(base_url=url, timeout=5.0, **kwargs) as c:
        response = c.post(f"/v1/event/{WS}", json=EVENT)
    assert response.status_code == 401
    assert fail_body(response) == error("Authentication required", message)
    assert not emu.records()
    assert [(r.status, r.body) for r in emu.received] == [(401, None)]


def test_path_workspace_must_match(client: httpx.Client) -> None:
    response = client.post("/v1/event/OTHER_WS", json=EVENT)
    assert response.status_code == 401
    assert fail_body(response) == error(
        "Authentication Mismatch", "App key mismatch in params and authentication"
    )


# -- what is refused before the body is read -------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": basic(WS, "wrong")}, 401),
        ({**AUTH_HEADERS, "Content-Type": "text/plain"}, 415),
        ({**AUTH_HEADERS, **JSON, "Content-Length": str(100 * 1024 + 1)}, 413),
    ],
)
def test_refusals_come_before_the_body(
    url: str, emu: MoEngageEmulator, headers: dict[str, str], status: int
) -> None:
    """The client declares a body and sends none of it: the answer must still come."""
    headers = {"Content-Length": "50000", **headers}
    response = exchange(url, head("POST", f"/v1/event/{WS}", headers))
    assert response.status == status
    assert [(r.status, r.body) for r in emu.received] == [(status, None)]


def test_chunked_body_over_the_limit_is_cut_short(url: str, emu: MoEngageEmulator) -> None:
    """A chunked body that passes 100 KB gets its 413 while the client is still sending."""
    headers = {**AUTH_HEADERS, **JSON, "Transfer-Encoding": "chunked"}
    parts = [b"x" * 4096] * 26  # 104 KB, and the body never ends
    response = exchange(url, head("POST", f"/v1/event/{WS}", headers) + chunks(parts))
    assert response.status == 413
    assert response.json() == {
        "status": "fail",
        "error": {
            "type": "PayloadTooLarge",
            "message": "Payload size exceeds 100 KB",
            "request_id": response.json()["error"]["request_id"],  # type: ignore[index]
        },
    }
    assert [r.status for r in emu.received] == [413]


def test_chunked_body_within_the_limit_is_accepted(url: str, emu: MoEngageEmulator) -> None:
    body = orjson.dumps(EVENT)
    headers = {**AUTH_HEADERS, **JSON, "Transfer-Encoding": "chunked"}
    response = exchange(
        url, head("POST", f"/v1/event/{WS}", headers) + chunks([body[:10], body[10:]], last=True)
    )
    assert response.status == 200
    assert emu.records() == [EVENT]


def test_content_type_must_be_json(client: httpx.Client) -> None:
    response = client.post(
        f"/v1/event/{WS}", content=orjson.dumps(EVENT), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert fail_body(response) == error("MediaTypeError", "Unsupported Media Type")


def test_missing_content_type(url: str) -> None:
    body = orjson.dumps(EVENT)
    response = exchange(
        url,
        head("POST", f"/v1/event/{WS}", {**AUTH_HEADERS, "Content-Length": str(len(body))}) + body,
    )
    assert response.status == 415
    assert response.json()["error"]["message"] == (  # type: ignore[index]
        "The header 'Content-Type' is missing. Kindly provide the header 'Content-Type' and set "
        "it as 'application/json'"
    )


def _padded(size: int) -> bytes:
    """A valid customer payload of exactly `size` bytes."""
    base = orjson.dumps(dict(CUSTOMER, attributes={"pad": ""}))
    return orjson.dumps(dict(CUSTOMER, attributes={"pad": "x" * (size - len(base))}))


def test_body_limit_is_100_kb(client: httpx.Client) -> None:
    at_limit = _padded(100 * 1024)
    assert len(at_limit) == 100 * 1024
    assert client.post(f"/v1/customer/{WS}", content=at_limit, headers=JSON).status_code == 200
    over = client.post(f"/v1/customer/{WS}", content=_padded(100 * 1024 + 1), headers=JSON)
    assert over.status_code == 413
    assert fail_body(over) == error("PayloadTooLarge", "Payload size exceeds 100 KB")


def test_body_limit_is_configurable() -> None:
    small = MoEngageEmulator(WS, KEY, max_body_bytes=1024)
    with serve(small) as base, httpx.Client(base_url=base, auth=(WS, KEY)) as c:
        response = c.post(f"/v1/customer/{WS}", content=_padded(1025), headers=JSON)
    assert response.status_code == 413
    assert fail_body(response) == error("PayloadTooLarge", "Payload size exceeds 1 KB")


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post(f"/v1/event/{WS}", content=b"{not json", headers=JSON)
    assert response.status_code == 400
    assert fail_body(response) == error(
        "Malformed JSON",
        "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8.",
    )


def test_unknown_endpoint(client: httpx.Client) -> None:
    response = client.post(f"/v1/events/{WS}", json=EVENT)
    assert response.status_code == 404
    assert fail_body(response) == error("NotFound", "Unknown endpoint /v1/events")


# -- payload validation ----------------------------------------------------------------------
MALFORMED = error(
    "Malformed JSON",
    "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8.",
)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({k: v for k, v in EVENT.items() if k != "type"}, missing("type")),
        (
            dict(EVENT, type="Event"),
            error("InvalidAttributeError", "type must be 'event' (lowercase), got 'Event'", "type"),
        ),
        (
            dict(EVENT, type="customer"),
            error(
                "InvalidAttributeError", "type must be 'event' (lowercase), got 'customer'", "type"
            ),
        ),
        ({k: v for k, v in EVENT.items() if k != "customer_id"}, missing("customer_id")),
        (
            dict(EVENT, customer_id=""),
            missing("customer_id", "customer_id can not be empty Unicode String"),
        ),
        (
            dict(EVENT, customer_id=["a"]),
            error("InvalidAttributeError", "customer_id must be a string", "customer_id"),
        ),
        ({k: v for k, v in EVENT.items() if k != "actions"}, missing("actions")),
        (dict(EVENT, actions=[]), missing("actions", "actions can not be empty Array")),
        (
            dict(EVENT, actions={"action": "x"}),
            error("InvalidAttributeError", "actions must be a list", "actions"),
        ),
        (
            dict(EVENT, actions=[{"action": "ok"}, "x"]),
            dict(MALFORMED, error=dict(MALFORMED["error"], attribute="actions")),
        ),
        (dict(EVENT, actions=[{"attributes": {}}]), missing("action")),
        (
            dict(EVENT, actions=[{"action": 5}]),
            dict(MALFORMED, error=dict(MALFORMED["error"], attribute="action")),
        ),
        (
            dict(EVENT, actions=[{"action": " "}]),
            missing("action", "action cannot be empty Unicode string"),
        ),
        (
            dict(EVENT, actions=[{"action": "x", "attributes": []}]),
            error("InvalidAttributeError", "attributes must be an object", "attributes"),
        ),
        (
            dict(EVENT, actions=[{"action": "x", "user_timezone_offset": 60000}]),
            error(
                "InvalidAttributeError",
                "user_timezone_offset must be seconds between -54000 and 54000",
                "user_timezone_offset",
            ),
        ),
    ],
)
def test_event_validation(
    client: httpx.Client, emu: MoEngageEmulator, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post(f"/v1/event/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected
    [received] = emu.received
    assert (received.status, received.body, received.records) == (400, payload, ())
    assert not received.accepted


@pytest.mark.parametrize(
    "customer_id",
    [
        "unknown",
        "guest",
        "NULL",
        "0",
        "-1",
        "true",
        "n/a",
        "(empty)",
        "dummy_seller_code",
        " None ",
        1,
    ],
)
def test_rejected_customer_ids(client: httpx.Client, customer_id: Any) -> None:
    response = client.post(f"/v1/customer/{WS}", json=dict(CUSTOMER, customer_id=customer_id))
    assert response.status_code == 400
    assert fail_body(response) == missing(
        "customer_id", f"customer_id '{str(customer_id).strip()}' is a blacklisted value"
    )


def test_numeric_customer_id_is_accepted(client: httpx.Client) -> None:
    assert (
        client.post(f"/v1/customer/{WS}", json=dict(CUSTOMER, customer_id=98765)).status_code == 200
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            dict(CUSTOMER, attributes=[1]),
            error("InvalidAttributeError", "attributes must be an object", "attributes"),
        ),
        (
            dict(CUSTOMER, update_existing_only="yes"),
            error(
                "InvalidAttributeError",
                "update_existing_only must be a boolean",
                "update_existing_only",
            ),
        ),
        (
            dict(
                CUSTOMER,
                attributes={
                    "addValueToArrayField": {"first_name": ["a"]},
                    "removeValueFromArrayField": {"first_name": ["b"]},
                },
            ),
            error(
                "ArrayFieldError",
                "Cannot add and remove 'first_name' at the same time",
                "addValueToArrayField",
            ),
        ),
    ],
)
def test_customer_validation(
    client: httpx.Client, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post(f"/v1/customer/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {k: v for k, v in DEVICE.items() if k != "customer_id"},
            missing("customer_id", "'customer_id' is not found in the payload"),
        ),
        (
            {k: v for k, v in DEVICE.items() if k != "device_id"},
            missing("device_id", "'device_id' is not found in the payload"),
        ),
        (
            {k: v for k, v in DEVICE.items() if k != "attributes"},
            missing("attributes", "'attributes' is not found in the payload"),
        ),
        (
            dict(DEVICE, attributes={"push_id": "t"}),
            missing("platform", "'platform' is not found in payload"),
        ),
        (
            dict(DEVICE, attributes={"platform": "Symbian", "push_id": "t"}),
            error("ValueError", "'platform' is not a valid platform.", "platform"),
        ),
        (
            dict(DEVICE, attributes={"platform": "iOS"}),
            missing("push_id", "'push_id' is not found in payload"),
        ),
    ],
)
def test_device_validation(
    client: httpx.Client, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post(f"/v1/device/{WS}", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ([], missing("elements", "elements cannot be empty array")),
        (
            [CUSTOMER, dict(EVENT, customer_id="guest")],
            missing("customer_id", "customer_id 'guest' is a blacklisted value"),
        ),
        (
            [{k: v for k, v in EVENT.items() if k != "customer_id"}],
            missing("customer_id", "customer_id not found in the payload"),
        ),
        (
            [dict(EVENT, actions=[{"action": ""}])],
            missing("action", "action cannot be empty Unicode string"),
        ),
        (
            [dict(CUSTOMER, type="transition")],
            error("AttributeError", "type in elements should be customer/event/device", "type"),
        ),
        (
            [dict(CUSTOMER, type="Customer")],
            error("AttributeError", "type in elements should be customer/event/device", "type"),
        ),
        ([CUSTOMER, "x"], MALFORMED),
    ],
)
def test_transition_validates_each_element(
    client: httpx.Client, elements: list[Any], expected: dict[str, Any]
) -> None:
    """Messages of data-api.yaml's /transition 400 examples; like the real API, the body
    does not say which element failed."""
    response = client.post(f"/v1/transition/{WS}", json=transition(*elements))
    assert response.status_code == 400
    assert fail_body(response) == expected


# -- MoEngage's own limits -------------------------------------------------------------------
def limited(**limits: Any) -> MoEngageEmulator:
    fields = {
        f: None
        for f in (
            "requests_per_second",
            "requests_per_minute",
            "bulk_users_per_minute",
            "bulk_events_per_minute",
            "events_per_minute",
            "users_per_minute",
            "devices_per_minute",
            "cohort_requests_per_minute",
        )
    }
    return MoEngageEmulator(WS, KEY, limits=MoEngageLimits(**{**fields, **limits}))


RATE_LIMITED = error("RateLimitError", "Rate limit exceeded")


def test_bulk_users_per_minute_across_requests() -> None:
    """60,000 users a minute across all bulk requests (§1.3 [M4]); a window of 0.4 s and a
    cap of 3 users stand in for them."""
    emu = limited(bulk_users_per_minute=3, minute=0.4)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        first = c.post(f"/v1/transition/{WS}", json=transition(customer("a"), customer("b")))
        second = c.post(f"/v1/transition/{WS}", json=transition(customer("c"), customer("d")))
        events_only = c.post(f"/v1/transition/{WS}", json=transition(EVENT))
        time.sleep(0.45)
        third = c.post(f"/v1/transition/{WS}", json=transition(customer("c"), customer("d")))
    assert [r.status_code for r in (first, second, events_only, third)] == [200, 429, 200, 200]
    assert fail_body(second) == RATE_LIMITED
    assert second.headers["x-ratelimit-limit"] == "3"
    assert second.headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" not in second.headers  # MoEngage documents x-ratelimit-* only
    assert [r["customer_id"] for r in emu.records() if r["type"] == "customer"] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert emu.stats()["rate_limited"] == 1


def test_bulk_events_per_minute_counts_actions() -> None:
    emu = limited(bulk_events_per_minute=4, minute=0.4)
    three = dict(EVENT, actions=EVENT["actions"] * 3)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        statuses = [
            c.post(f"/v1/transition/{WS}", json=transition(three)).status_code,
            c.post(f"/v1/transition/{WS}", json=transition(three)).status_code,
            c.post(f"/v1/transition/{WS}", json=transition(EVENT)).status_code,
            c.post(f"/v1/transition/{WS}", json=transition(EVENT)).status_code,
        ]
    assert statuses == [200, 429, 200, 429]
    assert len(emu.records()) == 2


def test_a_request_larger_than_the_cap_never_passes() -> None:
    emu = limited(bulk_users_per_minute=2, minute=0.2)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        big = transition(customer("a"), customer("b"), customer("c"))
        first = c.post(f"/v1/transition/{WS}", json=big)
        time.sleep(0.25)
        again = c.post(f"/v1/transition/{WS}", json=big)
    assert (first.status_code, again.status_code) == (429, 429)
    assert first.headers["x-ratelimit-reset"] == "1"


@pytest.mark.parametrize(
    ("limits", "path", "payload", "allowed"),
    [
        ({"requests_per_second": 2, "second": 0.5}, f"/v1/customer/{WS}", CUSTOMER, 2),
        ({"requests_per_minute": 3, "minute": 0.5}, f"/v1/customer/{WS}", CUSTOMER, 3),
        ({"events_per_minute": 2, "minute": 0.5}, f"/v1/event/{WS}", EVENT, 2),
        ({"users_per_minute": 1, "minute": 0.5}, f"/v1/customer/{WS}", CUSTOMER, 1),
        ({"devices_per_minute": 2, "minute": 0.5}, f"/v1/device/{WS}", DEVICE, 2),
    ],
)
def test_per_endpoint_limits_recover(
    limits: dict[str, Any], path: str, payload: dict[str, Any], allowed: int
) -> None:
    emu = limited(**limits)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        burst = [c.post(path, json=payload).status_code for _ in range(allowed + 1)]
        time.sleep(0.55)
        after = c.post(path, json=payload).status_code
    assert burst == [200] * allowed + [429]
    assert after == 200
    assert len(emu.records()) == allowed + 1


def test_request_rate_is_checked_before_the_body(url: str) -> None:
    emu = limited(requests_per_second=1, second=5.0)
    with serve(emu) as base:
        assert (
            httpx.post(f"{base}/v1/customer/{WS}", json=CUSTOMER, auth=(WS, KEY)).status_code == 200
        )
        headers = {**AUTH_HEADERS, **JSON, "Content-Length": "5000"}
        response = exchange(base, head("POST", f"/v1/customer/{WS}", headers))
    assert response.status == 429
    assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 5


def test_reset_restores_the_usage_windows() -> None:
    emu = limited(users_per_minute=1)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        assert c.post(f"/v1/customer/{WS}", json=CUSTOMER).status_code == 200
        assert c.post(f"/v1/customer/{WS}", json=CUSTOMER).status_code == 429
        assert c.post("/_emulator/reset").json() == {"status": "ok"}
        assert c.post(f"/v1/customer/{WS}", json=CUSTOMER).status_code == 200


def test_default_limits_are_the_documented_ones() -> None:
    assert MoEngageLimits().windows() == {
        "requests_per_second": (500, 1.0),
        "requests_per_minute": (15_000, 60.0),
        "bulk_users_per_minute": (60_000, 60.0),
        "bulk_events_per_minute": (60_000, 60.0),
        "events_per_minute": (30_000, 60.0),
        "users_per_minute": (10_000, 60.0),
        "devices_per_minute": (10_000, 60.0),
        "cohort_requests_per_minute": (300, 60.0),
    }
    assert UNLIMITED.windows() == {}
    with pytest.raises(ValueError, match="minute must be a number within"):
        MoEngageLimits(minute=0)
    with pytest.raises(ValueError, match="bulk_users_per_minute must be an integer within"):
        MoEngageLimits(bulk_users_per_minute=0)


# -- Cohort Sync -----------------------------------------------------------------------------
def _cohort(action: str = "add_members", **parameters: Any) -> dict[str, Any]:
    return dict(COHORT, action=action, parameters=dict(COHORT["parameters"], **parameters))


def members(*uids: str) -> list[dict[str, str]]:
    return [{"uid": u} for u in uids]


def test_cohort_sync_accepts(client: httpx.Client, emu: MoEngageEmulator) -> None:
    response = client.post("/v1/integrations/cohortsync", json=COHORT)
    assert response.status_code == 200
    assert response.json() == {
        "status": "success",
        "message": "Your request has been accepted and will be processed soon.",
    }
    assert response.headers["x-ratelimit-limit"] == "300"
    assert emu.records("/v1/integrations") == [COHORT]


def test_cohort_membership_follows_adds_and_removes(
    client: httpx.Client, emu: MoEngageEmulator
) -> None:
    sync = [
        _cohort(members=members("u1", "u2", "u3")),
        _cohort(members=members("u4")),
        _cohort("remove_members", members=members("u2", "u9")),
        _cohort(cohort_id="other", cohort_name="Other", members=members("u1")),
        _cohort(cohort_name="Power Users v2", cohort_description=None, members=[]),
    ]
    assert [client.post("/v1/integrations/cohortsync", json=p).status_code for p in sync] == [
        200
    ] * 5
    assert emu.cohort_members("JKTAuqTRhC") == {"u1", "u3", "u4"}
    assert emu.cohort_members("other") == {"u1"}
    assert emu.cohort_members("never-synced") == set()
    assert client.get("/_emulator/cohorts").json() == {
        "JKTAuqTRhC": {
            "cohort_id": "JKTAuqTRhC",
            "cohort_name": "Power Users v2",
            "cohort_description": "d",
            "partner": "amplitude",
            "members": ["u1", "u3", "u4"],
        },
        "other": {
            "cohort_id": "other",
            "cohort_name": "Other",
            "cohort_description": "d",
            "partner": "amplitude",
            "members": ["u1"],
        },
    }
    emu.reset()
    assert emu.cohorts == {}


def test_cohort_sync_matches_only_existing_users() -> None:
    """ "This API does not create new users" (§1.6 [M5]): with known users configured, a
    uid that matches none is left out, and so is one the Data API has not seen yet."""
    emu = MoEngageEmulator(WS, KEY, known_users=["u1"])
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY), headers=GOOD_HEADERS) as c:
        first = c.post("/v1/integrations/cohortsync", json=_cohort(members=members("u1", "u2")))
        c.post(f"/v1/customer/{WS}", json=customer("u2"))
        second = c.post("/v1/integrations/cohortsync", json=_cohort(members=members("u2")))
    assert (first.status_code, second.status_code) == (200, 200)
    assert emu.cohort_members("JKTAuqTRhC") == {"u1", "u2"}
    cohort_requests = [r for r in emu.received if r.path == "/v1/integrations/cohortsync"]
    assert cohort_requests[0].rejected == (1,)
    assert cohort_requests[0].reasons == {1: "no user with uid 'u2'"}
    assert cohort_requests[1].rejected == ()


NAME_RULE = "cohort_name must not start with '.' or contain any of | * ? \\ : < > = $ \""


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({k: v for k, v in COHORT.items() if k != "action"}, missing("action")),
        (
            dict(COHORT, action="members"),
            error(
                "InvalidAttributeError",
                "action must be 'add_members' or 'remove_members'",
                "action",
            ),
        ),
        ({k: v for k, v in COHORT.items() if k != "partner"}, missing("partner")),
        ({k: v for k, v in COHORT.items() if k != "parameters"}, missing("parameters")),
        (_cohort(cohort_name=".hidden"), error("InvalidAttributeError", NAME_RULE, "cohort_name")),
        (_cohort(cohort_name="a|b"), error("InvalidAttributeError", NAME_RULE, "cohort_name")),
        (_cohort(cohort_name='say "hi"'), error("InvalidAttributeError", NAME_RULE, "cohort_name")),
        (_cohort(cohort_name="cost$"), error("InvalidAttributeError", NAME_RULE, "cohort_name")),
        (_cohort(cohort_name="a\\b"), error("InvalidAttributeError", NAME_RULE, "cohort_name")),
        (
            _cohort(cohort_id=""),
            error("InvalidAttributeError", "cohort_id must be a non-empty string", "cohort_id"),
        ),
        (
            _cohort(members=[{"uid": "a"}, {"id": "b"}]),
            missing("uid", "uid is not found in the payload"),
        ),
        (_cohort(members="a"), error("InvalidAttributeError", "members must be a list", "members")),
    ],
)
def test_cohort_sync_validation(
    client: httpx.Client, emu: MoEngageEmulator, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post("/v1/integrations/cohortsync", json=payload)
    assert response.status_code == 400
    assert fail_body(response) == expected
    assert emu.cohorts == {}


def test_cohort_names_with_dots_inside_are_fine(client: httpx.Client) -> None:
    response = client.post(
        "/v1/integrations/cohortsync", json=_cohort(cohort_name="[Amplitude][v1.2 Users]")
    )
    assert response.status_code == 200


def test_cohort_sync_requires_appkey(url: str) -> None:
    with httpx.Client(base_url=url, auth=(WS, KEY)) as c:
        response = c.post("/v1/integrations/cohortsync", json=COHORT)
    assert response.status_code == 401
    assert fail_body(response) == error(
        "Authentication required", "MOE-APPKEY is missing in Header"
    )


def test_cohort_sync_limits_and_bodies(client: httpx.Client, url: str) -> None:
    """128 KB (not the Data API's 100 KB) and the cohort spec's own 413 and 415 bodies."""
    base = orjson.dumps(_cohort(cohort_description=""))
    fits = _cohort(cohort_description="x" * (110 * 1024 - len(base)))
    assert client.post("/v1/integrations/cohortsync", json=fits).status_code == 200
    headers = {**AUTH_HEADERS, **JSON, "Content-Length": str(128 * 1024 + 1)}
    too_large = exchange(url, head("POST", "/v1/integrations/cohortsync", headers))
    assert too_large.status == 413
    assert too_large.json()["error"]["type"] == "Payload too large"  # type: ignore[index]
    assert too_large.json()["error"]["message"] == (  # type: ignore[index]
        "Payload can not exceed 128KB"
    )
    wrong_type = client.post(
        "/v1/integrations/cohortsync", content=b"{}", headers={"Content-Type": "text/csv"}
    )
    assert wrong_type.status_code == 415
    assert fail_body(wrong_type) == error("Unsupported media type", "Content type is not supported")


def test_cohort_sync_300_requests_a_minute() -> None:
    emu = limited(cohort_requests_per_minute=2, minute=0.5)
    with serve(emu) as url, httpx.Client(base_url=url, auth=(WS, KEY), headers=GOOD_HEADERS) as c:
        statuses = [c.post("/v1/integrations/cohortsync", json=COHORT) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert fail_body(statuses[2]) == error(
        "Rate Limits Exceeded", "Rate limits for customers exceeded. Please Try After Some Time"
    )


# -- faults specific to MoEngage -------------------------------------------------------------
def test_bulk_record_fault_is_silent_like_the_real_api(
    client: httpx.Client, emu: MoEngageEmulator
) -> None:
    emu.faults.push(Fault("record_400", indices=(1,)))
    response = client.post(f"/v1/transition/{WS}", json=transition(CUSTOMER, EVENT, DEVICE))
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    [received] = emu.received
    assert received.rejected == (1,)
    assert received.reasons == {1: "element: record rejected"}
    assert emu.records() == [CUSTOMER, DEVICE]


def test_record_fault_on_single_endpoint_answers_400(
    client: httpx.Client, emu: MoEngageEmulator
) -> None:
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
