"""Typed settings of the Segment HTTP Tracking API sink (reference §4)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["HOSTS", "SegmentSettings"]

# Reference §4 [G2]: EU workspaces must use the EU host; data sent to the US host vanishes.
HOSTS = {"US": "https://api.segment.io", "EU": "https://events.eu1.segmentapis.com"}


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class SegmentSettings(BaseModel):
    """``destination.settings`` of a bundle whose destination is ``segment``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    write_key: str = Field(description="the source's write key (secret): Basic-auth user and "
                                       "writeKey in the body, as Segment's libraries send it")
    region: Annotated[Literal["US", "EU"], BeforeValidator(_upper)] = Field(
        "US", description="the Segment workspace's region: US (api.segment.io) or EU "
        "(events.eu1.segmentapis.com)")
    endpoint: str | None = Field(
        None, description="base URL overriding the region host (proxies, local emulator)")
    max_events_per_request: int = Field(2500, ge=1, le=2500,
                                        description="messages per batch (at most 2,500)")
    max_request_bytes: int = Field(500_000, ge=1024, le=500_000,
                                   description="largest batch body (at most 500 KB)")
    max_message_bytes: int = Field(32_000, ge=256, le=32_000,
                                   description="largest message (at most 32 KB)")
    max_wait_seconds: float = Field(
        5.0, ge=0, description="longest an event waits for its batch to fill up")
    requests_per_second: int = Field(
        1000, ge=1, description="rate limit: Segment asks for under 1,000 requests/s per "
        "workspace")

    @field_validator("endpoint")
    @classmethod
    def _same_region(cls, value: str | None, info: ValidationInfo) -> str | None:
        """An endpoint that is another region's Segment host would lose every event."""
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("endpoint must be an http:// or https:// URL")
        host = urlsplit(value).hostname or ""
        configured = info.data.get("region")
        for region, url in HOSTS.items():
            if configured is not None and region != configured and \
                    host == urlsplit(url).hostname:
                raise ValueError(
                    f"{value} is Segment's {region} host but region is {configured}: Segment "
                    "drops events sent to another region than the workspace's")
        return value

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.region]).rstrip("/")
