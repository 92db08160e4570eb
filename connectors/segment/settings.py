"""Settings of the Segment HTTP Tracking API destination (reference §4), as a typed model.

Limits come from Segment's HTTP API page: 500 KB a batch, 32 KB a message, 2,500 messages a
batch (more are answered 200 and dropped), under 1,000 requests a second per workspace.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from moerules.connectors.settings_types import HttpUrl, upper
from moerules.engine.rules.settings import ConnectorSettings
from pydantic import BeforeValidator, Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

__all__ = ["HOSTS", "SegmentSettings"]

# Reference §4 [G2]: EU workspaces must use the EU host; data sent to the US host vanishes.
HOSTS = {"US": "https://api.segment.io", "EU": "https://events.eu1.segmentapis.com"}


class SegmentSettings(ConnectorSettings):
    """``destination: {connector: segment, settings: {...}}``."""

    write_key: SecretStr = Field(
        min_length=1,
        description="the source's write key: Basic-auth user and writeKey in "
        "the body, as Segment's libraries send it (secret)",
    )
    region: Annotated[Literal["US", "EU"], BeforeValidator(upper)] = Field(
        "US",
        description="the Segment workspace's region: US (api.segment.io) or EU "
        "(events.eu1.segmentapis.com)",
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="base URL that replaces the region's host (proxies, the local "
        "emulator); never another region's Segment host",
    )
    max_events_per_request: int = Field(
        2500, ge=1, le=2500, description="messages per batch (Segment drops more than 2,500)"
    )
    max_request_bytes: int = Field(
        500_000,
        ge=1024,
        le=500_000,
        description="largest batch body, in bytes (Segment refuses more than 500 KB)",
    )
    max_message_bytes: int = Field(
        32_000,
        ge=256,
        le=32_000,
        description="largest message, in bytes (Segment refuses more than 32 KB)",
    )
    max_wait_seconds: float = Field(
        5.0, ge=0, le=3600, description="longest an event waits for its batch to fill up"
    )
    requests_per_second: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="requests sent per second at most (Segment asks for under 1,000 per workspace)",
    )

    @field_validator("endpoint")
    @classmethod
    def _same_region(cls, value: str | None, info: ValidationInfo) -> str | None:
        """An endpoint that is another region's Segment host would lose every event."""
        if value is None:
            return value
        host = urlsplit(value).hostname or ""
        configured = info.data.get("region")
        for region, url in HOSTS.items():
            if configured is not None and region != configured and host == urlsplit(url).hostname:
                raise PydanticCustomError(
                    "cross_region",
                    "{url} is Segment's {region} host but region is "
                    "{configured}: Segment drops events sent to another region than the "
                    "workspace's",
                    {"url": value, "region": region, "configured": configured},
                )
        return value

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.region]).rstrip("/")
