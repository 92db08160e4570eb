"""Batches built with mParticle's official Python client, through the shipped bundle.

Issue 9, item 1: a new user who builds batches with ``mparticle`` 0.16.1 (Batch,
UserIdentities, AppEvent, CommerceEvent, ...) gets the customer ID written as
``user_identities.customerid``. The batches here are made by that client and captured as it
sends them (sdk_batches.py), then run through ``mparticle-to-moengage`` with the engine API
and the CLI; the requests and the report must be exactly these.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.engine.api import dry_run, load_bundle

from tests.conftest import Result
from tests.connectors.mparticle.sdk_batches import GAID, IDFA, build_batches, captured_uploads

ENV = {"MOENGAGE_WORKSPACE_ID": "WS1", "MOENGAGE_DATA_API_KEY": "secret-key"}
URL = "https://api-01.moengage.com/v1/transition/WS1?app_id=WS1"
DELETION = "user attribute deletion not sent (MoEngage unset_attributes is Early Access)"

EXPECTED_ELEMENTS: list[dict[str, Any]] = [
    {
        "type": "customer",
        "customer_id": "cust-1",
        "attributes": {
            "first_name": "Ada",
            "city": "London",
            "mparticle_status": "gold",
            "gdpr_consent_marketing": True,
            "ccpa_data_sale_opt_out": False,
            "email": "ada@example.com",
            "mobile": "+15550001",
            "advertising_identifier": IDFA,
        },
    },
    {
        "type": "event",
        "customer_id": "cust-1",
        "actions": [
            {
                "action": "Viewed Product",
                "attributes": {"product_id": "sku-1"},
                "current_time": 1732300001,
                "platform": "iOS",
                "app_version": "4.2.0",
            }
        ],
    },
    {"type": "customer", "customer_id": "cust-2", "attributes": {"moe_gaid": GAID}},
    {
        "type": "event",
        "customer_id": "cust-2",
        "actions": [
            {
                "action": "purchase",
                "attributes": {
                    "TransactionId": "T-2",
                    "currency": "USD",
                    "Total Amount": "30",
                    "Shipping Amount": "2.5",
                    "Tax Amount": "2.5",
                    "Coupon Code": "SPRING",
                    "Affiliation": "app store",
                    "Products": [
                        {
                            "Id": "sku-1",
                            "Name": "Trail Shoe",
                            "Price": 12.5,
                            "Quantity": 2,
                            "TotalProductAmount": "25",
                            "Variant": "red",
                            "Position": 1,
                            "CouponCode": "SHOE5",
                        }
                    ],
                },
                "current_time": 1732300002,
                "platform": "ANDROID",
            }
        ],
    },
    {
        "type": "event",
        "customer_id": "cust-3",
        "actions": [
            {
                "action": "refund",
                "attributes": {
                    "TransactionId": "T-2",
                    "currency": "EUR",
                    "Total Amount": "12.5",
                    "Products": [{"Id": "sku-1", "Price": 12.5, "Quantity": 1}],
                },
                "current_time": 1732300003,
            }
        ],
    },
    {
        "type": "event",
        "customer_id": "cust-4",
        "actions": [
            {
                "action": "checkout",
                "attributes": {
                    "Checkout Step": 2,
                    "Checkout Options": "express",
                    "Products": [{"Id": "sku-9", "Price": 5.0, "Quantity": 3}],
                },
                "current_time": 1732300004,
            }
        ],
    },
    {"type": "customer", "customer_id": "cust-5", "attributes": {"tier": "gold"}},
    {
        "type": "event",
        "customer_id": "cust-6",
        "actions": [
            {
                "action": "Played",
                "attributes": {},
                "current_time": 1732300006,
                "platform": "TV",
                "moe_os_type": "ROKU",
            }
        ],
    },
    {
        "type": "event",
        "customer_id": "cust-7",
        "actions": [
            {
                "action": "Shared",
                "attributes": {},
                "current_time": 1732300007,
                "platform": "TV",
                "moe_os_type": "Xbox",
            }
        ],
    },
    {
        "type": "customer",
        "customer_id": "cust-9",
        "attributes": {"plan": "pro", "mparticle_id": "internal-9"},
    },
    {
        "type": "event",
        "customer_id": "cust-10",
        "actions": [
            {
                "action": "Watched",
                "attributes": {},
                "current_time": 1732300010,
                "platform": "TV",
                "moe_os_type": "FireOS",
            }
        ],
    },
]

EXPECTED_REPORT = {
    "lines_in": 10,
    "items_in": 20,
    "events_in": 15,
    "user_updates_in": 5,
    "delivered_events": 7,
    "delivered_user_updates": 4,
    "dropped": {
        "event name has MoEngage's reserved moe_ prefix": 1,  # batch 7
        "not supported by the MoEngage integration": 3,  # attribution; session, screen view
        "push token not sent (MoEngage push needs its SDK)": 1,  # batch 6
        DELETION: 2,  # batch 5: a deleted_user_attributes entry, a deleted: true change
    },
    # batch 8 has only an email: its user update and its event have no Customer ID
    "dead_lettered": {"no usable identity": 2},
    "requests": 1,
    "balanced": True,
}


@pytest.fixture(scope="module")
def sent() -> list[bytes]:
    """The request bodies the official client sent, one batch each, as bytes."""
    with captured_uploads() as (api, bodies):
        for batch in build_batches():
            api.upload_events(batch)
    assert [path for path, _ in bodies] == ["/v2/events"] * 10
    return [body for _, body in bodies]


def test_the_client_writes_customerid_without_the_underscore(sent: list[bytes]) -> None:
    first = orjson.loads(sent[0])
    assert first["user_identities"] == {
        "customerid": "cust-1",
        "email": "ada@example.com",
        "mobile_number": "+15550001",
    }
    assert all(b'"customer_id"' not in body for body in sent)


def test_client_batches_through_the_engine_api(sent: list[bytes]) -> None:
    compiled = load_bundle("mparticle-to-moengage", env=ENV)
    out = io.BytesIO()
    report = dry_run(compiled, [(i + 1, body) for i, body in enumerate(sent)], out).to_dict()
    requests = [json.loads(line) for line in out.getvalue().splitlines()]
    assert requests == [
        {
            "method": "POST",
            "url": URL,
            "headers": {
                "Authorization": "***",
                "Content-Type": "application/json",
                "MOE-APPKEY": "WS1",
            },
            "body": {"type": "transition", "elements": EXPECTED_ELEMENTS},
        }
    ]
    assert {k: report[k] for k in EXPECTED_REPORT} == EXPECTED_REPORT


def test_client_batches_through_the_cli(
    sent: list[bytes], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """The same lines as a user would feed them: a JSON Lines file, `moerules run`."""
    lines = tmp_path / "sdk-batches.jsonl"
    lines.write_bytes(b"".join(body + b"\n" for body in sent))
    report = tmp_path / "report.json"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(lines),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    [request] = [json.loads(line) for line in result.stdout.splitlines()]
    assert request["body"]["elements"] == EXPECTED_ELEMENTS
    data = json.loads(report.read_text())
    assert {k: data[k] for k in EXPECTED_REPORT} == EXPECTED_REPORT
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["line"]) for d in dead] == [("no usable identity", 8)] * 2
