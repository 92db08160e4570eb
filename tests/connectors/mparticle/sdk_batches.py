"""Batches built with mParticle's official Python client (``mparticle`` 0.16.1), captured as
the client sends them: a local HTTP server on 127.0.0.1 stands in for mParticle's Events API
and records each request body, byte for byte."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mparticle
from mparticle.models.user_attribute_change_event import UserAttributeChangeEvent

__all__ = ["build_batches", "captured_uploads"]

T0 = 1_732_300_000_000  # ms
IDFA = "613ff528-afd1-4c1b-9628-e6ed25ece9c0"
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


class _Capture(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.bodies.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(202)  # the Events API's answer
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextmanager
def captured_uploads() -> Iterator[tuple[mparticle.EventsApi, list[tuple[str, bytes]]]]:
    """An ``EventsApi`` whose uploads land in the returned list as (path, body)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = mparticle.Configuration()
        config.api_key, config.api_secret = "test-key", "test-secret"
        config.host = f"http://127.0.0.1:{server.server_address[1]}/v2"
        yield mparticle.EventsApi(config), server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _identities(
    customerid: str | None = None, email: str | None = None, mobile: str | None = None
) -> mparticle.UserIdentities:
    ids = mparticle.UserIdentities()
    if customerid is not None:
        ids.customerid = customerid
    if email is not None:
        ids.email = email
    if mobile is not None:
        ids.mobile_number = mobile
    return ids


def _batch(ids: mparticle.UserIdentities, events: list[Any], **fields: Any) -> mparticle.Batch:
    batch = mparticle.Batch()
    batch.environment = "production"
    batch.user_identities = ids
    for name, value in fields.items():
        setattr(batch, name, value)
    batch.events = events  # the setter wraps each event with its event_type
    return batch


def _device(platform: str, **ids: str) -> mparticle.DeviceInformation:
    device = mparticle.DeviceInformation()
    device.platform = platform
    for name, value in ids.items():
        setattr(device, name, value)
    return device


def _app(version: str) -> mparticle.ApplicationInformation:
    app = mparticle.ApplicationInformation()
    app.application_version = version
    return app


def _app_event(name: str, kind: str = "other", ms: int = T0, **attrs: str) -> mparticle.AppEvent:
    event = mparticle.AppEvent(
        event_name=name, custom_event_type=kind, custom_attributes=attrs or None
    )
    event.timestamp_unixtime_ms = ms
    return event


def _product(sku: str, price: float, quantity: int, **extra: Any) -> mparticle.Product:
    product = mparticle.Product()
    product.id, product.price, product.quantity = sku, price, quantity
    for name, value in extra.items():
        setattr(product, name, value)
    return product


def _commerce(
    action: str,
    products: list[mparticle.Product],
    currency: str | None = None,
    ms: int = T0,
    **extra: Any,
) -> mparticle.CommerceEvent:
    product_action = mparticle.ProductAction(action)
    product_action.products = products
    for name, value in extra.items():
        setattr(product_action, name, value)
    event = mparticle.CommerceEvent(product_action)
    event.timestamp_unixtime_ms = ms
    if currency is not None:
        event.currency_code = currency
    return event


def build_batches() -> list[mparticle.Batch]:
    """Ten batches as a new user would write them, touching every decision of issue 9."""
    consent = mparticle.ConsentState()
    consent.gdpr = {
        "marketing": mparticle.GDPRConsentState(
            document="v4", consented=True, timestamp_unixtime_ms=T0
        )
    }
    consent.ccpa = {
        "data_sale_opt_out": mparticle.CCPAConsentState(
            document="v1", consented=False, timestamp_unixtime_ms=T0
        )
    }
    push = mparticle.PushRegistrationEvent(
        timestamp_unixtime_ms=T0 + 6000, register=True, registration_token="fcm-token-6"
    )
    return [
        # 1. customer ID as the client spells it, reserved/blocked names, IDFA, consent
        _batch(
            _identities("cust-1", "ada@example.com", "+15550001"),
            [_app_event("Viewed Product", "navigation", T0 + 1000, product_id="sku-1")],
            mpid=1001,
            device_info=_device("iOS", ios_advertising_id=IDFA),
            application_info=_app("4.2.0"),
            consent_state=consent,
            user_attributes={"$FirstName": "Ada", "$City": "London", "status": "gold"},
        ),
        # 2. a purchase with fields outside the MoEngage tables; GAID
        _batch(
            _identities("cust-2"),
            [
                _commerce(
                    "purchase",
                    [
                        _product(
                            "sku-1",
                            12.5,
                            2,
                            name="Trail Shoe",
                            variant="red",
                            position=1,
                            coupon_code="SHOE5",
                            total_product_amount=25.0,
                        )
                    ],
                    "USD",
                    T0 + 2000,
                    transaction_id="T-2",
                    total_amount=30.0,
                    tax_amount=2.5,
                    shipping_amount=2.5,
                    coupon_code="SPRING",
                    affiliation="app store",
                )
            ],
            mpid=1002,
            device_info=_device("Android", android_advertising_id=GAID),
        ),
        # 3. a refund keeps its amount and currency
        _batch(
            _identities("cust-3"),
            [
                _commerce(
                    "refund",
                    [_product("sku-1", 12.5, 1)],
                    "EUR",
                    T0 + 3000,
                    transaction_id="T-2",
                    total_amount=12.5,
                )
            ],
            mpid=1003,
        ),
        # 4. a checkout step
        _batch(
            _identities("cust-4"),
            [
                _commerce(
                    "checkout",
                    [_product("sku-9", 5.0, 3)],
                    None,
                    T0 + 4000,
                    checkout_step=2,
                    checkout_options="express",
                )
            ],
            mpid=1004,
        ),
        # 5. attribute changes: one set, one deleted; deleted attributes on the batch
        _batch(
            _identities("cust-5"),
            [
                UserAttributeChangeEvent(
                    timestamp_unixtime_ms=T0 + 5000,
                    user_attribute_name="tier",
                    new="gold",
                    old="silver",
                    deleted=False,
                    is_new_attribute=False,
                ),
                UserAttributeChangeEvent(
                    timestamp_unixtime_ms=T0 + 5001,
                    user_attribute_name="coupon",
                    new=None,
                    old="X",
                    deleted=True,
                    is_new_attribute=False,
                ),
            ],
            mpid=1005,
            deleted_user_attributes=["old_plan"],
        ),
        # 6. a Roku app: a push registration and a custom event
        _batch(
            _identities("cust-6"),
            [push, _app_event("Played", ms=T0 + 6001)],
            mpid=1006,
            device_info=_device("roku"),
        ),
        # 7. an attribution event and a moe_-named event are not sent; a normal one is
        _batch(
            _identities("cust-7"),
            [
                _app_event(
                    "attribution", "attribution", T0 + 7000, publisher="ads-net", campaign="spring"
                ),
                _app_event("moe_internal", ms=T0 + 7001),
                _app_event("Shared", "social", T0 + 7002),
            ],
            mpid=1007,
            device_info=_device("xbox"),
        ),
        # 8. email only: the default identity (Customer ID) is missing
        _batch(
            _identities(email="only@example.com"),
            [_app_event("Opened App", ms=T0 + 8000)],
            mpid=1008,
        ),
        # 9. session and screen events are not supported; the user attributes are sent
        _batch(
            _identities("cust-9"),
            [
                mparticle.SessionStartEvent(timestamp_unixtime_ms=T0 + 9000),
                mparticle.ScreenViewEvent(timestamp_unixtime_ms=T0 + 9001, screen_name="Home"),
            ],
            mpid=1009,
            user_attributes={"plan": "pro", "id": "internal-9"},
        ),
        # 10. a Fire TV user
        _batch(
            _identities("cust-10"),
            [_app_event("Watched", ms=T0 + 10000)],
            mpid=1010,
            device_info=_device("fire_tv"),
        ),
    ]
