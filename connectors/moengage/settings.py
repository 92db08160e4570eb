"""Settings of the MoEngage Data API destination (reference §1), as a typed model.

Limits come from the reference: a request holds at most 128 KB (100 KB is the safe figure the
sink uses by default, §1.5), and the partner feed allows 500 requests a second and 15,000 a
minute (§1.5, "Partner ingestion limits"). The rate settings may only lower what is paced
by default or raise it for a proxy or an emulator; absurd values are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from moerules.engine.rules.settings import ConnectorSettings
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = ["DATA_CENTERS", "DEFAULT_MAX_BYTES", "MAX_REQUEST_BYTES", "MoEngageDataSettings"]

DATA_CENTERS = {
    "01": "https://api-01.moengage.com",
    "02": "https://api-02.moengage.com",
    "03": "https://api-03.moengage.com",
    "04": "https://api-04.moengage.com",
    "05": "https://api-05.moengage.com",
    "06": "https://api-06.moengage.com",
    "101": "https://api-101.moengage.com",
}
DEFAULT_MAX_BYTES = 100 * 1024
MAX_REQUEST_BYTES = 128 * 1024


def _data_center(value: Any) -> str:
    """``"02"``, ``2`` and ``"DC-02"`` all name data center 02 (YAML reads 02 as a number)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("data_center", 'a data center is text such as "01"')
    text = str(value).strip().upper().removeprefix("DC-").removeprefix("DC")
    dc = text.zfill(2) if text.isdigit() and len(text) < 2 else text
    if dc not in DATA_CENTERS:
        raise PydanticCustomError(
            "data_center",
            "unknown data center {dc}; use one of {all}",
            {"dc": repr(dc), "all": ", ".join(DATA_CENTERS)},
        )
    return dc


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise PydanticCustomError("endpoint", "endpoint must be an http:// or https:// URL")
    return value


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise PydanticCustomError("empty", "the key is empty")
    return value


DataCenter = Annotated[
    str,
    BeforeValidator(_data_center),
    WithJsonSchema({"enum": [*DATA_CENTERS, *sorted({int(dc) for dc in DATA_CENTERS})]}),
]
Secret = Annotated[
    SecretStr,
    AfterValidator(_not_empty),
    WithJsonSchema({"type": "string", "minLength": 1, "format": "password", "writeOnly": True}),
]
HttpUrl = Annotated[
    str, AfterValidator(_http_url), WithJsonSchema({"type": "string", "pattern": "^https?://"})
]


class MoEngageDataSettings(ConnectorSettings):
    """``destination: {connector: moengage, settings: {...}}``."""

    workspace_id: str = Field(
        min_length=1,
        description="Workspace ID (formerly App ID): the Basic-auth user and MOE-APPKEY",
    )
    data_api_key: Secret = Field(
        description="Data API key: the Basic-auth password (secret; use ${ENV_VAR})"
    )
    data_center: DataCenter = Field(
        "01",
        description="01-06 or 101, from dashboard-0X.moengage.com: picks "
        "https://api-{dc}.moengage.com",
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="base URL that replaces the data center's host (proxies, the local emulator)",
    )
    mode: Literal["bulk", "single"] = Field(
        "bulk", description="bulk: transition requests; single: the event and customer endpoints"
    )
    max_request_bytes: int = Field(
        DEFAULT_MAX_BYTES,
        ge=1024,
        le=MAX_REQUEST_BYTES,
        description="largest request body, in bytes (the API refuses more than 128 KB)",
    )
    requests_per_second: int = Field(
        500,
        ge=1,
        le=100_000,
        description="requests sent per second at most (the partner feed allows 500)",
    )
    requests_per_minute: int = Field(
        15_000,
        ge=1,
        le=6_000_000,
        description="requests sent per minute at most (the partner feed allows 15,000)",
    )
