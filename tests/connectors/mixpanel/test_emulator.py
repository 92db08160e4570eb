"""Mixpanel /import and /engage emulator over real HTTP."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import Fault, MixpanelEmulator, serve

from tests.connectors.emulation.rawhttp import basic, chunks, exchange, head

TOKEN = "mp-token"
SA = ("sa.user", "sa-secret")
PROJECT = "777"
NOW_S = int(time.time())


def event(n: int = 1, **props: Any) -> dict[str, Any]:
    return {
        "event": "Purchase",
        "properties": {
            "time": NOW_S * 1000 - n,
            "distinct_id": f"user-{n}",
            "$insert_id": f"935d87b1-00cd-41b7-be34-{n:012d}",
            **props,
        },
    }


@pytest.fixture(scope="module")
def emu() -> MixpanelEmulator:
    return MixpanelEmulator(TOKEN, project_id=PROJECT, service_account=SA, api_secret="legacy")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, timeout=10.0, auth=SA, params={"project_id": PROJECT, "strict": "1"}
    ) as c:
        yield c


def ok(n: int) -> dict[str, Any]:
    return {"code": 200, "num_records_imported": n, "status": "OK"}


def test_service_account_import(client: httpx.Client, emu: MixpanelEmulator) -> None:
    events = [event(1), event(2)]
    response = client.post("/import", json=events)
    assert response.status_code == 200
    assert response.json() == ok(2)
    assert emu.records() == events
    assert emu.received[0].query == {"project_id": PROJECT, "strict": "1"}


@pytest.mark.parametrize(
    ("auth", "params", "status", "message"),
    [
        (SA, {}, 400, "project_id is required when authenticating with a service account"),
        (SA, {"project_id": "1"}, 401, "service account has no access to this project"),
        ((TOKEN, "x"), {}, 401, "Invalid credentials"),
        (("other", ""), {}, 401, "Invalid credentials"),
        ((TOKEN, ""), {"project_id": "1"}, 401, "project_id does not match the credentials"),
        (None, {}, 401, "missing or invalid Authorization header; use HTTP Basic auth"),
    ],
)
def test_auth_failures(
    url: str,
    emu: MixpanelEmulator,
    auth: tuple[str, str] | None,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    with httpx.Client(base_url=url, auth=auth, params=params) as c:
        response = c.post("/import", json=[event()])
    assert response.status_code == status
    assert response.json() == {
        "code": status,
        "error": message,
        "status": "Bad Request" if status == 400 else "Unauthorized",
    }
    assert emu.records() == []


@pytest.mark.parametrize("auth", [(TOKEN, ""), ("legacy", "")])
def test_token_and_secret_auth(url: str, emu: MixpanelEmulator, auth: tuple[str, str]) -> None:
    with httpx.Client(base_url=url, auth=auth) as c:
        response = c.post("/import", params={"strict": "1"}, json=[event()])
    assert response.status_code == 200
    assert response.json() == ok(1)


def test_ndjson_and_gzip(client: httpx.Client, emu: MixpanelEmulator) -> None:
    events = [event(1), event(2), event(3)]
    ndjson = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    plain = client.post("/import", content=ndjson, headers={"Content-Type": "application/x-ndjson"})
    zipped = client.post(
        "/import",
        content=gzip.compress(ndjson),
        headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
    )
    zipped_json = client.post(
        "/import",
        content=gzip.compress(orjson.dumps(events)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert [r.status_code for r in (plain, zipped, zipped_json)] == [200, 200, 200]
    assert [r.json()["num_records_imported"] for r in (plain, zipped, zipped_json)] == [3, 3, 3]
    assert emu.records() == events  # the resends are de-duplicated by $insert_id
    assert emu.received[2].reasons == {
        i: f"duplicate of an imported event ($insert_id {e['properties']['$insert_id']!r})"
        for i, e in enumerate(events)
    }


def test_insert_id_makes_retries_safe(client: httpx.Client, emu: MixpanelEmulator) -> None:
    """Mixpanel de-duplicates on event, distinct_id, time (to the second) and $insert_id
    [X2]; a different event name with the same $insert_id is another event."""
    first = event(1)
    renamed = dict(first, event="Refund")
    client.post("/import", json=[first])
    client.post("/import", json=[first, renamed])
    assert emu.records() == [first, renamed]


def test_bad_bodies(client: httpx.Client) -> None:
    bad_gzip = client.post(
        "/import",
        content=b"not gzip",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert bad_gzip.status_code == 400
    assert bad_gzip.json() == {
        "code": 400,
        "error": "could not decompress the gzip body",
        "status": "Bad Request",
    }
    wrong_type = client.post(
        "/import", content=orjson.dumps([event()]), headers={"Content-Type": "text/csv"}
    )
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"] == (
        "Content-Type must be application/json or application/x-ndjson"
    )
    broken = client.post("/import", content=b"[{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("could not parse the body as JSON")


def test_partial_success_stores_valid_records(client: httpx.Client, emu: MixpanelEmulator) -> None:
    no_time = event(2)
    del no_time["properties"]["time"]
    events = [
        event(1),
        no_time,
        event(3, **{"$insert_id": "has_underscore"}),
        event(4),
        event(5, distinct_id="anon"),
        {"properties": {}},
    ]
    response = client.post("/import", json=events)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "some data points in the request failed validation",
        "status": "Bad Request",
        "num_records_imported": 2,
        "failed_records": [
            {
                "index": 1,
                "insert_id": no_time["properties"]["$insert_id"],
                "field": "properties.time",
                "message": "'properties.time' is required",
            },
            {
                "index": 2,
                "insert_id": "has_underscore",
                "field": "properties.$insert_id",
                "message": "'properties.$insert_id' must be at most 36 alphanumeric or '-' "
                "characters",
            },
            {
                "index": 4,
                "insert_id": event(5)["properties"]["$insert_id"],
                "field": "properties.distinct_id",
                "message": "'properties.distinct_id' is invalid: 'anon'",
            },
            {
                "index": 5,
                "insert_id": None,
                "field": "event",
                "message": "'event' must be a non-empty string",
            },
        ],
    }
    assert emu.records() == [event(1), event(4)]
    [received] = emu.received
    assert received.rejected == (1, 2, 4, 5)
    assert received.accepted


@pytest.mark.parametrize(
    ("props", "field", "message"),
    [
        ({"time": 1e9}, None, None),  # seconds are fine
        ({"time": 1000}, "properties.time", "'properties.time' must be after 1971-01-01"),
        (
            {"time": (NOW_S + 7200) * 1000},
            "properties.time",
            "'properties.time' must not be more than 1 hour in the future",
        ),
        (
            {"time": "yesterday"},
            "properties.time",
            "'properties.time' is invalid: must be specified as seconds since epoch",
        ),
        ({"distinct_id": ""}, None, None),  # accepted, excluded from analysis by Mixpanel
        (
            {"$insert_id": "x" * 37},
            "properties.$insert_id",
            "'properties.$insert_id' must be at most 36 alphanumeric or '-' characters",
        ),
        ({f"p{i}": i for i in range(253)}, "properties", "too many properties (limit 254)"),
    ],
)
def test_field_rules(
    client: httpx.Client, props: dict[str, Any], field: str | None, message: str | None
) -> None:
    response = client.post("/import", json=[event(1, **props)])
    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    [failed] = response.json()["failed_records"]
    assert (failed["field"], failed["message"]) == (field, message)


def test_without_strict_invalid_records_are_dropped(
    client: httpx.Client, emu: MixpanelEmulator
) -> None:
    response = client.post(
        "/import", params={"strict": "0", "project_id": PROJECT}, json=[event(1), {"event": "x"}]
    )
    assert response.status_code == 200
    assert response.json() == ok(1)
    assert emu.records() == [event(1)]


def test_limits(url: str) -> None:
    small = MixpanelEmulator(TOKEN, max_events=3, max_body_bytes=4096)
    with serve(small) as base, httpx.Client(base_url=base, auth=(TOKEN, "")) as c:
        too_many = c.post("/import", json=[event(i) for i in range(4)])
        assert too_many.status_code == 413
        assert too_many.json() == {
            "code": 413,
            "error": "request contains 4 events; the limit is 3",
            "status": "Payload Too Large",
        }
        big = orjson.dumps([event(1, blob="x" * 5000)])
        for headers, content in [({}, big), ({"Content-Encoding": "gzip"}, gzip.compress(big))]:
            response = c.post(
                "/import", content=content, headers={"Content-Type": "application/json", **headers}
            )
            assert response.status_code == 413
            assert response.json() == {
                "code": 413,
                "error": "request body exceeds 4096 bytes",
                "status": "Payload Too Large",
            }
        assert c.post("/import", json=[event(i) for i in range(3)]).status_code == 200


def test_record_fault_adds_failed_records(client: httpx.Client, emu: MixpanelEmulator) -> None:
    emu.faults.push(
        Fault(
            "record_400",
            indices=(1,),
            field="properties.time",
            message="'properties.time' is invalid",
        )
    )
    response = client.post("/import", json=[event(1), event(2), event(3)])
    assert response.status_code == 400
    body = response.json()
    assert body["num_records_imported"] == 2
    assert body["failed_records"] == [
        {
            "index": 1,
            "insert_id": event(2)["properties"]["$insert_id"],
            "field": "properties.time",
            "message": "'properties.time' is invalid",
        }
    ]
    assert emu.records() == [event(1), event(3)]


def test_injected_429_body(client: httpx.Client, emu: MixpanelEmulator) -> None:
    emu.faults.push("429_bare")
    response = client.post("/import", json=[event()])
    assert response.status_code == 429
    assert response.json() == {
        "code": 429,
        "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
        "status": "Too Many Requests",
    }
    assert emu.received == []


def test_engage(client: httpx.Client, emu: MixpanelEmulator) -> None:
    updates = [
        {"$token": TOKEN, "$distinct_id": "13793", "$set": {"plan": "pro"}},
        {"$token": TOKEN, "$distinct_id": "13795", "$unset": ["$email"]},
    ]
    response = client.post("/engage", json=updates)
    assert response.status_code == 200
    assert response.json() == {"status": 1, "error": None}
    assert emu.records("/engage") == updates
    form = client.post("/engage", data={"data": orjson.dumps(updates[:1]).decode()})
    assert form.json() == {"status": 1, "error": None}
    bad = client.post("/engage", json=[{"$token": "nope", "$distinct_id": "1", "$set": {}}])
    assert bad.status_code == 200
    assert bad.json() == {"status": 0, "error": "update 0: invalid $token"}
    two_ops = client.post(
        "/engage", json=[{"$token": TOKEN, "$distinct_id": "1", "$set": {}, "$add": {"n": 1}}]
    )
    assert two_ops.json()["status"] == 0
    assert len(emu.records("/engage")) == 3


# -- headers first, then a capped body -------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": basic("nobody", "")}, 401),
        ({"Authorization": basic(TOKEN, ""), "Content-Type": "text/csv"}, 400),
        (
            {
                "Authorization": basic(TOKEN, ""),
                "Content-Type": "application/json",
                "Content-Encoding": "br",
            },
            400,
        ),
        (
            {
                "Authorization": basic(TOKEN, ""),
                "Content-Type": "application/json",
                "Content-Length": str(10 * 1024 * 1024 + 1),
            },
            413,
        ),
    ],
)
def test_refusals_come_before_the_body(
    url: str, emu: MixpanelEmulator, headers: dict[str, str], status: int
) -> None:
    response = exchange(url, head("POST", "/import", {"Content-Length": "9000", **headers}))
    assert response.status == status
    assert [(r.status, r.body) for r in emu.received] == [(status, None)]


def test_an_endless_chunked_body_gets_413_at_the_limit(url: str) -> None:
    small = MixpanelEmulator(TOKEN, max_body_bytes=100_000)
    with serve(small) as base:
        response = exchange(
            base,
            head(
                "POST",
                "/import",
                {
                    "Authorization": basic(TOKEN, ""),
                    "Content-Type": "application/json",
                    "Transfer-Encoding": "chunked",
                },
            )
            + chunks([b" " * 10_000] * 11),
        )
    assert response.status == 413
    assert response.json() == {
        "code": 413,
        "error": "request body exceeds 100000 bytes",
        "status": "Payload Too Large",
    }


def test_a_gzip_bomb_is_cut_at_the_limit(url: str) -> None:
    small = MixpanelEmulator(TOKEN, max_body_bytes=100_000)
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")  # 50 KB inflating to 50 MB
    with serve(small) as base, httpx.Client(base_url=base, auth=(TOKEN, "")) as c:
        response = c.post(
            "/import",
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 413


def test_rate_limit_counts_uncompressed_bytes() -> None:
    """2 GB of uncompressed JSON a minute per project [X2]; scaled to three bodies' worth
    per 0.5 s, sent gzipped (the compressed size is not what counts)."""
    bodies = [orjson.dumps([event(n, pad="x" * 900)]) for n in range(4)]
    assert len({len(b) for b in bodies}) == 1
    emu = MixpanelEmulator(TOKEN, bytes_per_minute=3 * len(bodies[0]), minute=0.5)
    gzipped = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with serve(emu) as url, httpx.Client(base_url=url, auth=(TOKEN, "")) as c:
        statuses = [c.post("/import", content=gzip.compress(b), headers=gzipped) for b in bodies]
        time.sleep(0.55)
        after = c.post("/import", json=[event(9)])
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[3].json() == {
        "code": 429,
        "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
        "status": "Too Many Requests",
    }
    assert "retry-after" not in statuses[3].headers
    assert after.status_code == 200
    assert len(emu.records()) == 4


@pytest.mark.parametrize(
    ("residency", "host", "ingested"),
    [
        ("us", "api.mixpanel.com", True),
        ("us", "api-eu.mixpanel.com", False),
        ("eu", "api-eu.mixpanel.com", True),
        ("in", "api-eu.mixpanel.com", False),
        ("in", "api-in.mixpanel.com", True),
    ],
)
def test_wrong_residency_is_not_ingested(residency: str, host: str, ingested: bool) -> None:
    emu = MixpanelEmulator(TOKEN, residency=residency)
    with (
        serve(emu) as url,
        httpx.Client(base_url=url, auth=(TOKEN, ""), headers={"Host": host}) as c,
    ):
        response = c.post("/import", params={"strict": "1"}, json=[event(1)])
    assert response.status_code == 200
    assert emu.records() == ([event(1)] if ingested else [])
