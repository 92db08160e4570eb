"""Typed settings of the Amplitude HTTP V2 sink (reference §3)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

__all__ = ["HOSTS", "AmplitudeSettings"]

HOSTS = {"US": "https://api2.amplitude.com", "EU": "https://api.eu.amplitude.com"}
DEFAULT_MIN_ID_LENGTH = 5  # Amplitude's own default: shorter ids are refused


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class AmplitudeSettings(BaseModel):
    """``destination.settings`` of a bundle whose destination is ``amplitude``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: str = Field(description="Amplitude project API key, sent in the body (secret)")
    data_residency: Annotated[Literal["US", "EU"], BeforeValidator(_upper)] = Field(
        "US", description="US (api2.amplitude.com) or EU (api.eu.amplitude.com)")
    endpoint: str | None = Field(
        None, description="base URL overriding the residency host (proxies, local emulator)")
    min_id_length: int | None = Field(
        None, ge=1, description="shortest user_id/device_id Amplitude accepts; sent as "
        "options.min_id_length when set (Amplitude's default: 5)")
    max_events_per_request: int = Field(2000, ge=1, le=2000,
                                        description="events per request (at most 2,000)")
    max_request_bytes: int = Field(1_000_000, ge=1024, le=1_000_000,
                                   description="largest request body (at most 1 MB)")
    max_wait_seconds: float = Field(
        5.0, ge=0, description="longest an event waits for its request to fill up")
    events_per_second: int = Field(
        1000, ge=1, description="rate limit: Amplitude's documented 1,000 events/s (ask "
        "Amplitude to raise it)")
    requests_per_second: int = Field(
        100, ge=1, description="rate limit: Amplitude's documented 100 batches/s")
    throttle_pause_seconds: float = Field(
        30.0, ge=0, description="pause for users and devices Amplitude throttled (429)")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint must be an http:// or https:// URL")
        return value

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.data_residency]).rstrip("/")

    @property
    def id_length(self) -> int:
        """The shortest id Amplitude will accept on this run."""
        return DEFAULT_MIN_ID_LENGTH if self.min_id_length is None else self.min_id_length
