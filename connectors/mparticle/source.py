"""mParticle Events API batches as a source (reference §6).

One input line is one batch: ``user_identities``, top-level ``mpid``, ``user_attributes``,
``events[]`` with ``event_type`` and ``data``, ``consent_state``, ``device_info``,
``application_info``. Rules see the batch as ``batch`` and each element of ``events`` as
``event``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors.mparticle.settings import MParticleSettings
from moerules.engine.connector import Source, packaged_schema
from moerules.engine.errors import RecordError

__all__ = ["MParticleSource"]


class MParticleSource(Source):
    """Decodes one JSON batch per line; refuses lines that are not batches."""

    __slots__ = ()
    name: ClassVar[str] = "mparticle"
    events_key: ClassVar[str | None] = "events"
    projectable: ClassVar[bool] = True
    settings_model: ClassVar[type[MParticleSettings]] = MParticleSettings
    # mParticle's published batch schema, amended to the current JSON reference (its $comment)
    record_schema: ClassVar[Mapping[str, Any] | None] = packaged_schema(
        __package__ or "", "batch.schema.json"
    )

    @classmethod
    def from_settings(cls, settings: MParticleSettings) -> MParticleSource:
        """The source for checked settings (engine/rules/settings.py builds connectors so)."""
        return cls(settings.model_dump())

    def decode(self, line: bytes) -> dict[str, Any]:
        try:
            batch = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RecordError("malformed JSON", str(exc)) from None
        if not isinstance(batch, dict):
            raise RecordError("payload is not a JSON object", f"got a JSON {type(batch).__name__}")
        events = batch.get("events")
        if events is not None and not isinstance(events, list):
            raise RecordError("batch.events is not a list", f"got {type(events).__name__}")
        return batch
