"""The reference mapping written by hand: what a competent engineer would write in Python.

Same mapping as ``benchmarks/reference/bundle.yaml``: an mParticle commerce (product action)
event → ``(project code or None, MoEngage event action)``, or None for any other event.
Missing fields and nulls are left out; prices and amounts become floats; the currency is
lowercased (``usd`` when missing or blank); products get ``Category: uncategorised`` and
``Quantity: 1`` when theirs is missing; ``moe_project_name`` routes the event when it names a
declared project exactly and is removed from the attributes otherwise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROJECTS", "map_event"]

PROJECTS = {"Brand A": "BRANDA01", "Brand B": "BRANDB01"}


def map_event(
    batch: dict[str, Any], event: dict[str, Any]
) -> tuple[str | None, dict[str, Any]] | None:
    if event.get("event_type") != "commerce_event":
        return None
    data = event.get("data") or {}
    pa = data.get("product_action")
    if not pa:
        return None

    custom = data.get("custom_attributes")
    attrs = {k: v for k, v in custom.items() if v is not None} if custom else {}
    value = pa.get("transaction_id")
    if value is not None:
        attrs["TransactionId"] = value
    currency = data.get("currency_code")
    attrs["Currency"] = currency.lower() if currency else "usd"
    value = pa.get("total_amount")
    if value is not None:
        attrs["Total Amount"] = float(value)
    value = pa.get("tax_amount")
    if value is not None:
        attrs["Tax Amount"] = float(value)
    value = pa.get("shipping_amount")
    if value is not None:
        attrs["Shipping Amount"] = float(value)
    value = pa.get("coupon_code")
    if value is not None:
        attrs["Coupon"] = value
    value = pa.get("affiliation")
    if value is not None:
        attrs["Affiliation"] = value
    products = pa.get("products")
    if type(products) is list:
        items = []
        for product in products:
            item = {}
            value = product.get("id")
            if value is not None:
                item["Id"] = value
            value = product.get("name")
            if value is not None:
                item["Name"] = value
            value = product.get("brand")
            if value is not None:
                item["Brand"] = value
            item["Category"] = product.get("category") or "uncategorised"
            value = product.get("price")
            if value is not None:
                item["Price"] = float(value)
            value = product.get("quantity")
            item["Quantity"] = 1 if value is None else value
            items.append(item)
        attrs["Products"] = items

    project = PROJECTS.get(custom.get("moe_project_name")) if custom else None
    if project is None:
        attrs.pop("moe_project_name", None)

    action = {"action": pa.get("action"), "attributes": attrs}
    value = data.get("timestamp_unixtime_ms")
    if value is not None:
        action["current_time"] = int(value) // 1000
    value = (batch.get("device_info") or {}).get("platform")
    if value is not None:
        action["platform"] = value
    value = (batch.get("application_info") or {}).get("application_version")
    if value is not None:
        action["app_version"] = value
    return project, action
