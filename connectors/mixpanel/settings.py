"""Typed settings of the Mixpanel /import sink (reference §5.1)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = ["HOSTS", "MixpanelSettings"]

# Reference §5: events sent to another residency's host are not ingested.
HOSTS = {"US": "https://api.mixpanel.com", "EU": "https://api-eu.mixpanel.com",
         "IN": "https://api-in.mixpanel.com"}


def _text(value: object) -> object:
    """A project id YAML read as a number (``project_id: 1234567``) is still an id."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class MixpanelSettings(BaseModel):
    """``destination.settings`` of a bundle whose destination is ``mixpanel``.

    Authenticate with a service account (``service_account_username``,
    ``service_account_secret`` and ``project_id``) or a project token: exactly one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_token: str | None = Field(
        None, description="project token: Basic-auth user with an empty password (secret)")
    service_account_username: str | None = Field(
        None, description="service account user (with service_account_secret, project_id)")
    service_account_secret: str | None = Field(None,
                                               description="service account secret (secret)")
    project_id: Annotated[str | None, BeforeValidator(_text)] = Field(
        None, description="the project's id; required with a service account")
    data_residency: Annotated[Literal["US", "EU", "IN"], BeforeValidator(_upper)] = Field(
        "US", description="US (api.mixpanel.com), EU (api-eu) or IN (api-in)")
    endpoint: str | None = Field(
        None, description="base URL overriding the residency host (proxies, local emulator)")
    max_events_per_request: int = Field(2000, ge=1, le=2000,
                                        description="records per request (at most 2,000)")
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=10 * 1024 * 1024,
                                   description="largest request body (at most 10 MB)")
    max_wait_seconds: float = Field(
        5.0, ge=0, description="longest an event waits for its request to fill up")
    bytes_per_minute: int = Field(
        2_000_000_000, ge=1, description="rate limit: Mixpanel's 2 GB of JSON per minute per "
        "project")

    @model_validator(mode="after")
    def _one_credential(self) -> MixpanelSettings:
        account = (self.service_account_username, self.service_account_secret)
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint must be an http:// or https:// URL")
        if any(account) and self.project_token:
            raise ValueError("give a project_token or a service account, not both")
        if any(account) and not all(account):
            raise ValueError("a service account needs service_account_username and "
                             "service_account_secret")
        if all(account) and not self.project_id:
            raise ValueError("a service account needs project_id (Mixpanel requires "
                             "?project_id= with it)")
        if not any(account) and not self.project_token:
            raise ValueError("give project_token, or service_account_username, "
                             "service_account_secret and project_id")
        return self

    @property
    def base_url(self) -> str:
        return (self.endpoint or HOSTS[self.data_residency]).rstrip("/")

    @property
    def service_account(self) -> bool:
        return self.service_account_username is not None
