"""Settings of the Mixpanel /import destination (reference §5.1), as a typed model.

Limits come from Mixpanel's /import page: 2,000 records and 10 MB (uncompressed) a request,
1 MB a record, 2 GB of JSON a minute per project. Authenticate with a service account
(``service_account_username``, ``service_account_secret``, ``project_id``) or the project
token: exactly one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from moerules.connectors.settings_types import HttpUrl, upper
from moerules.engine.rules.settings import ConnectorSettings
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["HOSTS", "MixpanelSettings"]

# Reference §5: events sent to another residency's host are not ingested.
HOSTS = {
    "US": "https://api.mixpanel.com",
    "EU": "https://api-eu.mixpanel.com",
    "IN": "https://api-in.mixpanel.com",
}


def _problem(setting: str, message: str) -> ValidationError:
    """A credential problem, placed at the setting it concerns (validate shows its line)."""
    return ValidationError.from_exception_data(
        "MixpanelSettings",
        [
            InitErrorDetails(
                type=PydanticCustomError("credentials", message), loc=(setting,), input=None
            )
        ],
    )


class MixpanelSettings(ConnectorSettings):
    """``destination: {connector: mixpanel, settings: {...}}``."""

    project_token: SecretStr | None = Field(
        None,
        min_length=1,
        description="project token: the Basic-auth user, with an empty password (secret)",
    )
    service_account_username: str | None = Field(
        None,
        min_length=1,
        description="service account user (with service_account_secret "
        "and project_id, instead of project_token)",
    )
    service_account_secret: SecretStr | None = Field(
        None, min_length=1, description="service account secret (secret)"
    )
    project_id: str | None = Field(
        None,
        min_length=1,
        description="the project's id; required with a service account (sent as ?project_id=)",
    )
    data_residency: Annotated[Literal["US", "EU", "IN"], BeforeValidator(upper)] = Field(
        "US",
        description="US (api.mixpanel.com), EU (api-eu.mixpanel.com) or IN (api-in.mixpanel.com)",
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="base URL that replaces the residency's host (proxies, the local emulator)",
    )
    max_events_per_request: int = Field(
        2000, ge=1, le=2000, description="records per request (Mixpanel takes 2,000)"
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        le=10 * 1024 * 1024,
        description="largest request body, in bytes (Mixpanel refuses more than 10 MB)",
    )
    max_wait_seconds: float = Field(
        5.0, ge=0, le=3600, description="longest an event waits for its request to fill up"
    )
    gzip: bool = Field(
        True,
        description="send request bodies gzip-compressed (Content-Encoding: gzip; "
        "/import accepts it); size limits count the uncompressed body",
    )
    bytes_per_minute: int = Field(
        2_000_000_000,
        ge=1,
        le=2_000_000_000,
        description="request bytes sent per minute at most (Mixpanel allows 2 GB per project)",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> MixpanelSettings:
        account = (self.service_account_username, self.service_account_secret)
        if any(account) and self.project_token is not None:
            raise _problem("project_token", "give project_token or a service account, not both")
        if self.service_account_username is not None and self.service_account_secret is None:
            raise _problem("service_account_secret", "a service account needs its secret")
        if self.service_account_secret is not None and self.service_account_username is None:
            raise _problem("service_account_username", "a service account needs its user")
        if all(account) and not self.project_id:
            raise _problem(
                "project_id",
                "a service account needs project_id (Mixpanel requires ?project_id= with it)",
            )
        if not any(account) and self.project_token is None:
            raise _problem(
                "project_token",
                "give project_token, or service_account_username, "
                "service_account_secret and project_id",
            )
        return self

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.data_residency]).rstrip("/")

    @property
    def service_account(self) -> bool:
        return self.service_account_username is not None
