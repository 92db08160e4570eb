"""Setting types the partner connectors share: an http(s) URL, and a region name matched
ignoring case (``eu`` and ``EU`` name one region)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = ["HttpUrl", "upper"]


def upper(value: object) -> object:
    """A region or residency as its table spells it: ``eu`` and `` EU `` are ``EU``."""
    return value.strip().upper() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise PydanticCustomError("endpoint", "endpoint must be an http:// or https:// URL")
    return value


HttpUrl = Annotated[
    str, AfterValidator(_http_url), WithJsonSchema({"type": "string", "pattern": "^https?://"})
]
