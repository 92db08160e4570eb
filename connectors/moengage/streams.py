"""MoEngage Streams payloads as a source (reference §2, specs/moengage-streams.mdx).

One input line is one Streams request body: ``{app_name, source, moe_request_id, events: [...]}``
where each event carries ``event_code``, ``event_name``, ``event_uuid``, ``event_time`` (epoch
seconds), ``uid`` and the ``event_attributes`` / ``user_attributes`` / ``device_attributes``
maps. Rules see the payload as ``batch`` and each element of ``events`` as ``event``.

A Streams request always carries events: MoEngage sends one when it has events to export
(default batch size 100). So a payload that is not an object, or whose ``events`` is missing,
not a list or empty, is not a Streams payload; it is dead-lettered with its reason and the run
goes on. What an event must carry (``uid``, ``event_uuid``, an ``event_time`` in range) depends
on the partner, so each bundle says it in its rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.engine.connector import Source, packaged_schema
from moerules.engine.errors import RecordError
from moerules.engine.rules.settings import NoSettings

__all__ = ["MoEngageStreamsSource"]

NOT_AN_OBJECT = "payload is not a JSON object"
NO_EVENTS = "payload has no events"
EVENTS_NOT_A_LIST = "payload.events is not a list"


class MoEngageStreamsSource(Source):
    """Decodes one Streams payload per line; refuses lines that are not Streams payloads."""

    __slots__ = ()
    name: ClassVar[str] = "moengage-streams"
    events_key: ClassVar[str | None] = "events"
    # Not projected yet: a projected decode types ``events`` as optional, so a payload without
    # events would decode "successfully" into nothing and never reach ``decode`` below, which
    # is what counts it. Projection needs the engine to make a source's events key required
    # and non-empty (see the README's Streams section); until then every line is decoded whole.
    projectable: ClassVar[bool] = False
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    # the payload's documented fields (reference §2), for validate's path warnings
    record_schema: ClassVar[Mapping[str, Any] | None] = packaged_schema(
        __package__ or "", "streams.schema.json"
    )

    @classmethod
    def from_settings(cls, settings: NoSettings) -> MoEngageStreamsSource:
        """The source for checked settings (it takes none)."""
        return cls(settings.model_dump())

    def decode(self, line: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RecordError("malformed JSON", str(exc)) from None
        if not isinstance(payload, dict):
            raise RecordError(NOT_AN_OBJECT, f"got a JSON {_json_type(payload)}")
        events = payload.get("events")
        if events is None:
            raise RecordError(
                NO_EVENTS,
                "a Streams payload carries its events in `events`; "
                f"keys here: {', '.join(sorted(payload)) or 'none'}",
            )
        if not isinstance(events, list):
            raise RecordError(EVENTS_NOT_A_LIST, f"got a JSON {_json_type(events)}")
        if not events:
            raise RecordError(NO_EVENTS, "`events` is an empty list")
        return payload


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (what the input said, not Python's name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
