"""Amplitude cohort webhook payloads as a cohort source (reference §7, [A5]; seeds 000/001).

One input line is one payload Amplitude posted::

    {"cohort_name": "Power Users", "cohort_id": "ab12cd", "in_cohort": true,
     "computed_time": 1718000000, "message_id": "6f1c...",
     "users": [{"user_id": "u1", "moe_anonymous_id": "..."}, ...]}

``in_cohort`` true lists users entering the cohort, false users leaving it; every sync type
Amplitude offers (one-time, scheduled hourly or daily, near real time) sends these adds and
removals. ``message_id`` is the same on a repeat of a payload (Amplitude retries a slow answer
"which may produce duplicate payloads"); a payload without one is identified by its content.
``computed_time`` orders the payloads of a cohort (a later computation wins, whatever order
they arrive in); its unit is not documented: a number below 10^11 is read as seconds, above
as milliseconds, a string as ISO-8601 or such a number. Each user is an object with
``user_id`` and the user properties selected in Amplitude (``moe_anonymous_id``, seed 000:
"the secondary identifier"); the bundle's identity rules read them as ``event``.

The segment name follows Amplitude's convention for MoEngage, ``[Amplitude][Cohort Name]``
([A6], reference §1.6): the ``segment_name`` setting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import orjson
from moerules.engine.cohorts import ENTERED, LEFT, CohortMessage, CohortSource, CohortSourceSettings
from moerules.engine.connector import packaged_schema
from moerules.engine.errors import RecordError
from pydantic import Field

__all__ = ["AmplitudeCohortSettings", "AmplitudeCohortSource", "epoch_ms", "json_object"]

_SECONDS_BELOW = 10**11  # 1973 in ms, 5138 in s: a smaller number is seconds


class AmplitudeCohortSettings(CohortSourceSettings):
    """``source: {connector: amplitude-cohorts, settings: {...}}``."""

    segment_name: str = Field(
        "[Amplitude][{{ cohort_name }}]",
        description="the segment name in MoEngage: a template of cohort_name and cohort_id "
        "(Amplitude's convention: [Amplitude][Cohort Name])",
    )


def json_object(line: bytes) -> dict[str, Any]:
    """One line as a JSON object; RecordError when it is not one."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordError("malformed JSON", str(exc)) from None
    if not isinstance(record, dict):
        raise RecordError("payload is not a JSON object", f"got a JSON {type(record).__name__}")
    return record


def content_key(record: Mapping[str, Any]) -> str:
    """A key for a payload that carries none: the same content gives the same key."""
    digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "sha256:" + digest[:32]


def epoch_ms(value: Any, what: str) -> int:
    """A time as epoch milliseconds (see the module docstring); RecordError when it is not
    one."""
    if isinstance(value, bool):
        raise RecordError(f"{what} is not a time", f"got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise RecordError(f"{what} is not a time", f"got {value!r}") from None
            if parsed.tzinfo is None:
                raise RecordError(f"{what} is not a time", f"{value!r} has no time zone") from None
            return int(parsed.timestamp() * 1000)
    if not isinstance(value, int | float) or value < 0 or value != value:
        raise RecordError(f"{what} is not a time", f"got {value!r}")
    return int(value * 1000) if value < _SECONDS_BELOW else int(value)


def text_id(record: Mapping[str, Any], key: str, what: str) -> str:
    """A required id: a non-empty string, or a number (as its text)."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise RecordError(
            f"{what} is missing",
            f"`{key}` must be a non-empty string, got {orjson.dumps(value).decode()[:60]}",
        )
    return str(value).strip()


class AmplitudeCohortSource(CohortSource):
    """Decodes one Amplitude cohort webhook payload per line."""

    __slots__ = ()
    name: ClassVar[str] = "amplitude-cohorts"
    partner: ClassVar[str] = "amplitude"
    events_key: ClassVar[str | None] = "users"  # rules read each user as ``event``
    settings_model: ClassVar[type[AmplitudeCohortSettings]] = AmplitudeCohortSettings
    record_schema: ClassVar[Mapping[str, Any] | None] = packaged_schema(
        __package__ or "", "cohort-webhook.schema.json"
    )

    @classmethod
    def from_settings(cls, settings: AmplitudeCohortSettings) -> AmplitudeCohortSource:
        return cls(settings.model_dump())

    def decode(self, line: bytes) -> dict[str, Any]:
        """The payload; RecordError when it is not a cohort payload at all (checked here, so
        that ``moerules serve`` answers 400 to it before it is stored)."""
        record = json_object(line)
        self.message(record)
        return record

    def message(self, record: dict[str, Any]) -> CohortMessage:
        cohort_id = text_id(record, "cohort_id", "cohort_id")
        name = record.get("cohort_name")
        if not isinstance(name, str):
            raise RecordError("cohort_name is missing", "`cohort_name` must be a string")
        entering = record.get("in_cohort")
        if not isinstance(entering, bool):
            raise RecordError(
                "in_cohort is not true or false",
                "`in_cohort` says whether the users enter (true) or leave "
                f"(false) the cohort; got {orjson.dumps(entering).decode()[:60]}",
            )
        users = record.get("users")
        if not isinstance(users, list):
            raise RecordError("users is not a list", "`users` must be a list of objects")
        message_id = record.get("message_id")
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise RecordError("message_id is not a string", "`message_id` must be a string")
        computed = record.get("computed_time")
        at = 0 if computed is None else epoch_ms(computed, "computed_time")
        return CohortMessage(
            partner=self.partner,
            cohort_id=cohort_id,
            name=name,
            description=None,
            action=ENTERED if entering else LEFT,
            members=users,
            key=message_id or content_key(record),
            segment=self.segment_name(name, cohort_id),
            at=at,
        )
