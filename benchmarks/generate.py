"""Seeded generator of realistic mParticle S2S batches (reference §6).

Same seed, same data, on every machine: the generator only uses its own ``random.Random``.

A batch has identities (customer ID usually; sometimes only an email, sometimes a value MoEngage
rejects such as ``guest``), user attributes in both spellings of the reserved names, consent,
device and application info as SDK-originated batches carry them (schema's DeviceInformation,
ApplicationInformation, source and data-plan context), and one to eight events of mixed types:
custom events, commerce product actions (the bulk of the mapping work), promotions,
impressions, user attribute changes, session and screen events, each with the event base's
session fields, a device state snapshot and sometimes a location. ``moe_project_name`` is
present, blank, unknown or missing.

Edge cases on purpose: prices as strings (``"8.00"``) and ints, missing quantity/category/price,
missing currency, amounts as strings, custom attribute values of null.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["PROJECTS", "batches", "commerce_pairs", "write_jsonl"]

PROJECTS = {"Brand A": "BRANDA01", "Brand B": "BRANDB01"}
BASE_MS = 1_732_300_000_000

_PROJECT_NAMES: list[str | None] = (
    ["Brand A"] * 8 + ["Brand B"] * 6 + [None] * 3 + ["", "  ", "brand a", "Brand C"]
)
_ACTIONS = (
    ["purchase"] * 4
    + ["add_to_cart"] * 4
    + ["view_detail"] * 3
    + ["checkout", "remove_from_cart", "refund", "add_to_wishlist"]
)
_CURRENCIES: list[str | None] = [*["USD"] * 6, "EUR", "eur", "GBP", "INR", "", None]
_PLATFORMS = ["iOS", "iOS", "Android", "Android", "android", "web", "Web", "tvOS", "Roku"]
_CATEGORIES = ["Footwear", "Apparel", "Outdoor", "Electronics", "Home", "Beauty"]
_BRANDS = ["Peak", "Northwind", "Contoso", "Fabrikam", "Acme"]
_NAMES = [
    "Trail Shoe",
    "Socks",
    "Rain Jacket",
    "Headlamp",
    "Kettle",
    "Lip Balm",
    "Tent",
    "Water Bottle",
    "Backpack",
    "Gloves",
]
_CUSTOM_EVENTS = [
    "Viewed Product",
    "Searched",
    "Opened App",
    "Shared",
    "Rated App",
    "Started Trial",
    "Watched Video",
]
_OTHER_TYPES = [
    "session_start",
    "session_end",
    "screen_view",
    "screen_view",
    "application_state_transition",
    "breadcrumb",
    "opt_out",
]
_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _price(rng: random.Random) -> Any:
    roll = rng.random()
    cents = rng.randrange(99, 25_000)
    if roll < 0.70:
        return cents / 100
    if roll < 0.82:
        return f"{cents / 100:.2f}"  # a string price: the cast must convert it
    if roll < 0.94:
        return cents // 100  # an int price
    return None  # no price: the key is left out


def _product(rng: random.Random) -> dict[str, Any]:
    product: dict[str, Any] = {
        "id": f"sku-{rng.randrange(1000, 9999)}",
        "name": rng.choice(_NAMES),
        "brand": rng.choice(_BRANDS),
    }
    if rng.random() < 0.85:
        product["category"] = rng.choice(_CATEGORIES)
    if rng.random() < 0.3:
        product["variant"] = rng.choice(["red", "blue", "42", "XL"])
    price = _price(rng)
    if price is not None:
        product["price"] = price
    if rng.random() < 0.8:
        product["quantity"] = rng.randrange(1, 5)
    if "price" in product and type(product["price"]) is float:
        product["total_product_amount"] = round(product["price"] * product.get("quantity", 1), 2)
    if rng.random() < 0.25:
        product["custom_attributes"] = {"size": rng.choice(["S", "M", "L", "42"])}
    return product


def _custom_attributes(rng: random.Random) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if rng.random() < 0.7:
        attrs["channel"] = rng.choice(["app", "web", "store"])
    project = rng.choice(_PROJECT_NAMES)
    if project is not None:
        attrs["moe_project_name"] = project
    if rng.random() < 0.2:
        attrs["campaign"] = rng.choice(["spring", "bf2024", None])  # null values are skipped
    if rng.random() < 0.1:
        attrs["experiment"] = {"id": rng.randrange(100), "arm": "b"}
    return attrs


def _commerce_product_action(rng: random.Random, ts: int) -> dict[str, Any]:
    products = [_product(rng) for _ in range(rng.choice((1, 1, 2, 2, 3, 4)))]
    total = round(
        sum(p["price"] * p.get("quantity", 1) for p in products if type(p.get("price")) is float), 2
    )
    action: dict[str, Any] = {"action": rng.choice(_ACTIONS), "products": products}
    if action["action"] in ("purchase", "checkout", "refund"):
        action["transaction_id"] = f"T-{rng.randrange(10_000, 99_999)}"
        action["total_amount"] = total if rng.random() < 0.85 else f"{total:.2f}"
        action["tax_amount"] = round(total * 0.08, 2)
        action["shipping_amount"] = rng.choice((0.0, 4.99, 9.99))
        if rng.random() < 0.3:
            action["coupon_code"] = rng.choice(["SAVE10", "WELCOME", "FREESHIP"])
        if rng.random() < 0.5:
            action["affiliation"] = rng.choice(["web-store", "app-store", "partner"])
    data: dict[str, Any] = {
        "timestamp_unixtime_ms": ts,
        "source_message_id": _uuid(rng),
        "custom_attributes": _custom_attributes(rng),
        "product_action": action,
    }
    currency = rng.choice(_CURRENCIES)
    if currency is not None:
        data["currency_code"] = currency
    if rng.random() < 0.05:
        del data["custom_attributes"]
    return {"event_type": "commerce_event", "data": data}


def _device_state(rng: random.Random) -> dict[str, Any]:
    return {
        "time_since_start_ms": rng.randrange(1_000, 3_600_000),
        "battery_level": round(rng.random(), 2),
        "data_connection_type": rng.choice(["wifi", "mobile", "offline"]),
        "device_orientation": rng.choice(["portrait", "landscape"]),
        "total_system_memory_usage_bytes": rng.randrange(1 << 30, 6 << 30),
        "disk_space_free_bytes": rng.randrange(1 << 30, 64 << 30),
        "cpu": f"{rng.randrange(1, 100)}",
        "system_memory_available_bytes": rng.randrange(1 << 28, 1 << 31),
        "system_memory_low": False,
        "application_memory_max_bytes": 536870912,
        "application_memory_total_bytes": rng.randrange(1 << 26, 1 << 29),
        "gps_state": rng.random() < 0.3,
    }


def _event(rng: random.Random, ts: int, session: dict[str, Any]) -> dict[str, Any]:
    event = _event_body(rng, ts)
    data = event["data"]
    data.update(session)
    data["event_id"] = rng.getrandbits(62)
    data.setdefault("source_message_id", _uuid(rng))
    data["event_start_unixtime_ms"] = ts
    if rng.random() < 0.7:
        data["device_current_state"] = _device_state(rng)
    if rng.random() < 0.3:
        data["location"] = {
            "latitude": round(rng.uniform(-60, 60), 5),
            "longitude": round(rng.uniform(-180, 180), 5),
            "accuracy": rng.choice([5, 10, 65]),
        }
    return event


def _event_body(rng: random.Random, ts: int) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.38:
        return {
            "event_type": "custom_event",
            "data": {
                "event_name": rng.choice(_CUSTOM_EVENTS),
                "custom_event_type": "navigation",
                "timestamp_unixtime_ms": ts,
                "source_message_id": _uuid(rng),
                "custom_attributes": _custom_attributes(rng),
            },
        }
    if roll < 0.66:
        return _commerce_product_action(rng, ts)
    if roll < 0.70:
        return {
            "event_type": "commerce_event",
            "data": {
                "timestamp_unixtime_ms": ts,
                "custom_attributes": _custom_attributes(rng),
                "promotion_action": {
                    "action": rng.choice(["view", "click", "Click", None]),
                    "promotions": [
                        {
                            "id": f"P{rng.randrange(99)}",
                            "name": "Spring Sale",
                            "creative": "banner",
                            "position": rng.randrange(1, 4),
                        }
                    ],
                },
            },
        }
    if roll < 0.74:
        return {
            "event_type": "commerce_event",
            "data": {
                "timestamp_unixtime_ms": ts,
                "custom_attributes": _custom_attributes(rng),
                "product_impressions": [
                    {
                        "product_impression_list": "home-carousel",
                        "products": [_product(rng) for _ in range(3)],
                    }
                ],
            },
        }
    if roll < 0.79:
        return {
            "event_type": "user_attribute_change",
            "data": {
                "user_attribute_name": rng.choice(["$FirstName", "$city", "plan", "tier"]),
                "new": rng.choice(["gold", "pro", "Lisbon", "Ada"]),
                "old": None,
                "timestamp_unixtime_ms": ts,
            },
        }
    return {"event_type": rng.choice(_OTHER_TYPES), "data": {"timestamp_unixtime_ms": ts}}


def _device_info(rng: random.Random, platform: str) -> dict[str, Any]:
    apple = platform in ("iOS", "tvOS")
    info: dict[str, Any] = {
        "platform": platform,
        "brand": "Apple" if apple else rng.choice(["samsung", "Google", "OnePlus"]),
        "product": "iPhone15,2" if apple else rng.choice(["a54x", "oriole", "OP515BL1"]),
        "device": "iPhone" if apple else rng.choice(["a54x", "oriole"]),
        "device_manufacturer": "Apple" if apple else "samsung",
        "device_model": "iPhone15,2" if apple else "SM-A546B",
        "os_version": rng.choice(["17.1", "17.4", "14", "13"]),
        "screen_height": rng.choice([2556, 2340, 1920]),
        "screen_width": rng.choice([1179, 1080]),
        "screen_dpi": rng.choice([460, 420, 401]),
        "device_country": "US",
        "locale_language": rng.choice(["en", "de", "pt"]),
        "locale_country": rng.choice(["US", "GB", "DE", "BR"]),
        "network_country": "us",
        "network_carrier": rng.choice(["Verizon", "T-Mobile", "Vodafone"]),
        "timezone_offset": rng.choice([-5, 0, 1, 5]),
        "build_identifier": f"{rng.getrandbits(32):08x}",
        "http_header_user_agent": "ShopApp/4.2.0 (mobile)",
        "cpu_architecture": "arm64",
        "is_tablet": False,
        "push_token": f"{rng.getrandbits(128):032x}",
        "limit_ad_tracking": rng.random() < 0.2,
        "is_dst": False,
    }
    if apple:
        info["ios_idfv"] = _uuid(rng)
        info["ios_advertising_id"] = _uuid(rng)
    else:
        info["android_uuid"] = f"{rng.getrandbits(64):016x}"
        info["android_advertising_id"] = _uuid(rng)
    return info


def _batch(rng: random.Random, i: int) -> dict[str, Any]:
    user = rng.randrange(1, 50_000)
    identities: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.85:
        identities["customer_id"] = f"cust-{user}"
    elif roll < 0.90:
        identities["customer_id"] = rng.choice(["guest", "null", "0", "  "])
    if rng.random() < 0.7:
        identities["email"] = f"user{user}@example.com"
    attributes: dict[str, Any] = {}
    if rng.random() < 0.6:
        attributes[rng.choice(["$FirstName", "$firstname"])] = rng.choice(_FIRST)
        attributes["$City"] = rng.choice(["London", "Lisbon", "Pune", "Austin"])
    if rng.random() < 0.4:
        attributes["tier"] = rng.choice(["gold", "silver", "bronze"])
    ts = BASE_MS + i * 1_000
    platform = rng.choice(_PLATFORMS)
    session = {
        "session_id": rng.getrandbits(62),
        "session_uuid": _uuid(rng),
        "session_start_unixtime_ms": ts - rng.randrange(1_000, 600_000),
    }
    batch: dict[str, Any] = {
        "environment": "production",
        "schema_version": 2,
        "source_request_id": _uuid(rng),
        "mpid": rng.getrandbits(62),
        "mp_deviceid": _uuid(rng),
        "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}",
        "timestamp_unixtime_ms": ts + 5_000,
        "batch_id": rng.getrandbits(62),
        "sdk_version": "8.22.0",
        "source_info": {"channel": "native", "is_historical": False},
        "context": {"data_plan": {"plan_id": "shop_app", "plan_version": 3}},
        "user_identities": identities,
        "user_attributes": attributes,
        "device_info": _device_info(rng, platform),
        "application_info": {
            "application_name": "ShopApp",
            "application_version": rng.choice(["4.2.0", "4.3.1", "5.0.0"]),
            "application_build_number": str(rng.randrange(400, 520)),
            "package": "com.shop.app",
            "os": platform,
            "install_referrer": rng.choice(["organic", "google-play", None]),
            "sideloaded_kits_count": 0,
        },
        "events": [
            _event(rng, ts + j * 50, session) for j in range(rng.choice((1, 2, 2, 3, 3, 4, 5, 8)))
        ],
    }
    if rng.random() < 0.3:
        batch["consent_state"] = {
            "gdpr": {"marketing": {"consented": rng.random() < 0.5, "document": "v4"}}
        }
    return batch


def batches(n: int, seed: int = 42) -> Iterator[dict[str, Any]]:
    """``n`` mParticle batches, the same ones for the same seed."""
    rng = random.Random(seed)
    for i in range(n):
        yield _batch(rng, i)


def commerce_pairs(n: int, seed: int = 42) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` (batch, event) pairs of commerce events, the input of the mapping benchmark.

    About one in twenty is a commerce event without a product action (no rule matches it).
    """
    rng = random.Random(seed)
    shared = [_batch(rng, i) for i in range(max(1, n // 4))]
    out = []
    for i in range(n):
        batch = shared[i % len(shared)]
        if rng.random() < 0.05:
            event: dict[str, Any] = {
                "event_type": "commerce_event",
                "data": {
                    "timestamp_unixtime_ms": BASE_MS + i,
                    "custom_attributes": {"channel": "app"},
                },
            }
        else:
            event = _commerce_product_action(rng, BASE_MS + i * 10)
        out.append((batch, event))
    return out


def write_jsonl(path: Path, n: int, seed: int = 42) -> int:
    """Write ``n`` batches as JSON Lines; return the bytes written."""
    size = 0
    with path.open("wb") as fh:
        for batch in batches(n, seed):
            line = orjson.dumps(batch) + b"\n"
            size += len(line)
            fh.write(line)
    return size
