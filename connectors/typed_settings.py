"""A sink's settings as a pydantic model: parsed once, problems as (setting, message) pairs.

``moerules validate`` reports each problem at the setting's line (the compiler places
``(key, message)`` pairs from ``Sink.check_settings``); the messages keep the wording the
engine uses for untyped sinks ("unknown setting ...", "... needs setting ...").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["parse_settings", "settings_doc"]

M = TypeVar("M", bound=BaseModel)


def settings_doc(model: type[BaseModel]) -> dict[str, str]:
    """Setting name -> its description, for ``Sink.settings_doc``."""
    return {name: info.description or "" for name, info in model.model_fields.items()}


def parse_settings(model: type[M], settings: Mapping[str, Any],
                   connector: str) -> tuple[M | None, list[tuple[str, str]]]:
    """The settings as ``model``, or None with every problem as (setting name, message)."""
    try:
        return model.model_validate(dict(settings)), []
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            if error["type"] == "extra_forbidden":
                message = f"unknown setting {key!r} for destination {connector!r}"
            elif error["type"] == "missing":
                message = f"destination {connector!r} needs setting {key!r}"
            else:
                reason = str(error["msg"]).removeprefix("Value error, ")
                message = f"setting {key!r} of destination {connector!r}: {reason}"
            problems.append((key, message))
        return None, problems
