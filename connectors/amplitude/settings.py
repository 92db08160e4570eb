"""Settings of the Amplitude HTTP V2 destination (reference §3), as a typed model.

Limits come from Amplitude's HTTP V2 page: at most 2,000 events and 1 MB a request; 1,000
events a second and 100 requests a second unless Amplitude raised them for the project;
users and devices over their rate are throttled (429) and should pause 30 s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from moerules.connectors.settings_types import HttpUrl, upper
from moerules.engine.rules.settings import ConnectorSettings
from pydantic import BeforeValidator, Field, SecretStr

__all__ = ["DEFAULT_MIN_ID_LENGTH", "HOSTS", "AmplitudeSettings"]

HOSTS = {"US": "https://api2.amplitude.com", "EU": "https://api.eu.amplitude.com"}
DEFAULT_MIN_ID_LENGTH = 5  # Amplitude's own default: shorter ids are refused


class AmplitudeSettings(ConnectorSettings):
    """``destination: {connector: amplitude, settings: {...}}``."""

    api_key: SecretStr = Field(
        min_length=1,
        description="Amplitude project API key, sent in the request body (secret; use ${ENV_VAR})",
    )
    data_residency: Annotated[Literal["US", "EU"], BeforeValidator(upper)] = Field(
        "US", description="US (api2.amplitude.com) or EU (api.eu.amplitude.com)"
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="base URL that replaces the residency's host (proxies, the local emulator)",
    )
    min_id_length: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="shortest user_id/device_id Amplitude accepts; sent "
        "as options.min_id_length when set (Amplitude's default: 5)",
    )
    max_events_per_request: int = Field(
        2000, ge=1, le=2000, description="events per request (Amplitude takes 2,000)"
    )
    max_request_bytes: int = Field(
        1_000_000,
        ge=1024,
        le=1_000_000,
        description="largest request body, in bytes (Amplitude refuses more than 1 MB)",
    )
    max_wait_seconds: float = Field(
        5.0, ge=0, le=3600, description="longest an event waits for its request to fill up"
    )
    events_per_second: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="events sent per second at most (Amplitude's default: 1,000)",
    )
    requests_per_second: int = Field(
        100,
        ge=1,
        le=100_000,
        description="requests sent per second at most (Amplitude's default: 100)",
    )
    throttle_pause_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="how long throttled users and devices pause after "
        "a 429 (Amplitude advises 30 s)",
    )

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.data_residency]).rstrip("/")

    @property
    def id_length(self) -> int:
        """The shortest id Amplitude will accept on this run."""
        return DEFAULT_MIN_ID_LENGTH if self.min_id_length is None else self.min_id_length
